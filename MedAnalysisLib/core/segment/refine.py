"""Per-image refinement of tissue probabilities: EM on a Gaussian mixture with the network's
probabilities as spatial priors (the approach of the Bayesian segmenters SPM and SAMSEG).

The network says where each tissue is likely; the mixture learns what each tissue looks like
in *this* image (one Gaussian per class: mean and variance of the normalized intensity), and
the posterior ``prior * likelihood`` replaces the network's probabilities. Lesions are left to
the network: their probability is kept as it is and the tissue posteriors share the rest, so a
class with few voxels cannot capture intensity outliers.

:func:`hyperintense_outliers` then adds lesion candidates the way the Bayesian segmenters treat
lesions, as outliers of white matter: where the fitted means say the image is FLAIR-like (CSF
darkest, grey matter brighter than white matter), voxels of the white-matter region brighter than
grey matter by ``z`` standard deviations become lesion candidates. On T1-like images lesions are
dark and look like grey matter, and on T2/PD-like images the partial volume of bright CSF would
pass for lesions, so nothing is added there: the network decides alone. The usual lesion filters (size,
location) apply to every candidate afterwards.
"""

from __future__ import annotations

from typing import Optional

EPS = 1e-6


def refine_probabilities(image, probabilities, lesion_label: Optional[int] = None, iterations: int = 8,
                         prior_power: float = 1.0, region_threshold: float = 0.98, min_voxels: int = 50,
                         tissue: Optional[dict] = None, outlier_z: float = 3.0, fit_voxels: int = 1_000_000,
                         chunk_voxels: int = 2_000_000):
    """Refine the class probabilities of one volume **in place** (torch tensors, same device).

    The mixture is fitted on at most ``fit_voxels`` voxels drawn from the region (fixed seed), then
    applied chunk by chunk, so memory stays bounded on large volumes.

    Args:
        image: (z, y, x) normalized intensities.
        probabilities: (C, z, y, x) softmax output of the network (class 0 background); modified.
        lesion_label: class kept as the network gives it (None: every class is refined).
        iterations: EM iterations.
        prior_power: exponent of the network prior (< 1 trusts the intensities more).
        region_threshold: voxels whose background probability reaches this are left alone.
        min_voxels: classes with less expected voxels keep their network probabilities.
        tissue: class index of "csf", "gm" and "wm"; with ``lesion_label`` it enables the
            white-matter outlier candidates (:func:`hyperintense_outliers`).
        outlier_z: how many grey-matter standard deviations above the grey-matter mean a
            candidate must be.
    Returns:
        the refined probabilities (``probabilities`` itself when it was contiguous).
    """
    import torch

    classes = probabilities.shape[0]
    probabilities = probabilities.contiguous()  # a view below must write through
    flat = probabilities.view(classes, -1)
    values_x = image.reshape(-1)
    region = torch.nonzero(flat[0] < region_threshold).squeeze(1)
    if region.numel() < min_voxels:
        return probabilities
    refined = [c for c in range(classes) if c != lesion_label]
    has_lesion = lesion_label is not None and lesion_label < classes

    def tissue_prior_of(index):
        prior = flat[refined][:, index].float()
        return prior / prior.sum(0, keepdim=True).clamp_min(EPS)

    generator = torch.Generator(device="cpu").manual_seed(0)
    sample = region
    if region.numel() > fit_voxels:
        sample = region[torch.randint(region.numel(), (fit_voxels,), generator=generator).to(region.device)]
    x = values_x[sample].float()
    tissue_prior = tissue_prior_of(sample)
    active = tissue_prior.sum(1) * (region.numel() / sample.numel()) >= min_voxels
    if not bool(active.any()):
        return probabilities
    floor = float(x.var()) * 1e-3 + 1e-8

    def posterior_of(x_part, prior_part, mean=None, variance=None):
        if mean is None:
            return prior_part
        log_likelihood = -0.5 * (x_part[None] - mean[:, None]) ** 2 / variance[:, None] - 0.5 * torch.log(variance)[:, None]
        # classes with too few voxels to learn a Gaussian keep their prior; the others share the rest
        posterior = prior_part.clone()
        shared = 1.0 - prior_part[~active].sum(0)
        posterior[active] = torch.softmax(torch.log(prior_part[active].clamp_min(EPS)) * prior_power
                                          + log_likelihood[active], dim=0) * shared
        return posterior

    mean = variance = None
    posterior = tissue_prior
    for _ in range(iterations):
        weights = posterior.sum(1).clamp_min(EPS)
        mean = (posterior @ x) / weights
        variance = ((posterior @ (x * x)) / weights - mean * mean).clamp_min(floor)
        posterior = posterior_of(x, tissue_prior, mean, variance)
    del x, tissue_prior, posterior
    outliers_possible = bool(tissue) and has_lesion and all(k in tissue for k in ("csf", "gm", "wm"))
    if outliers_possible:
        index = {name: refined.index(tissue[name]) for name in ("csf", "gm", "wm")}
        outliers_possible = all(bool(active[i]) for i in index.values())
    for first in range(0, region.numel(), chunk_voxels):
        part = region[first:first + chunk_voxels]
        posterior = posterior_of(values_x[part].float(), tissue_prior_of(part), mean, variance)
        keep = flat[lesion_label, part].float() if has_lesion else None
        values = flat[:, part]
        values[refined] = (posterior * ((1.0 - keep) if keep is not None else 1.0)).to(values.dtype)
        if outliers_possible:
            candidates = hyperintense_outliers(values_x[part].float(), posterior, mean, variance, index, keep, outlier_z)
            if candidates is not None and bool(candidates.any()):
                # a candidate becomes lesion: the tissue classes give way (labels follow the argmax/threshold)
                values[:, candidates] = 0.0
                values[lesion_label, candidates] = 1.0
        flat[:, part] = values
    return probabilities


def hyperintense_outliers(x, posterior, mean, variance, index: dict, lesion_probability, z: float):
    """Boolean candidates (over the region's voxels) for hyperintense white-matter lesions, or None
    when the fitted means do not say the image is FLAIR-like."""
    csf, gm, wm = (float(mean[index[k]]) for k in ("csf", "gm", "wm"))
    if not csf < wm < gm:  # FLAIR-like only: on T2/PD bright CSF partial volume would pass for lesions
        return None
    gm_sd = float(variance[index["gm"]].sqrt())
    threshold = gm + z * gm_sd
    white = posterior[index["wm"]] + lesion_probability  # white-matter region, lesions included
    not_csf = posterior[index["csf"]] < 0.5
    return (x > threshold) & (white + posterior[index["gm"]] > 0.5) & not_csf
