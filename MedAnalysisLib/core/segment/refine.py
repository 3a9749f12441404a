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
                         tissue: Optional[dict] = None, outlier_z: float = 3.0):
    """Refined class probabilities of one volume (torch tensors, same device).

    Args:
        image: (z, y, x) normalized intensities.
        probabilities: (C, z, y, x) softmax output of the network (class 0 background).
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
        (C, z, y, x) probabilities (a new tensor; outside the region equal to the input).
    """
    import torch

    classes = probabilities.shape[0]
    region = probabilities[0] < region_threshold
    if int(region.sum()) < min_voxels:
        return probabilities
    x = image[region].float()
    prior = probabilities[:, region].float()
    refined_classes = [c for c in range(classes) if c != lesion_label]
    keep = prior[lesion_label] if lesion_label is not None and lesion_label < classes else None
    tissue_prior = prior[refined_classes]
    tissue_prior = tissue_prior / tissue_prior.sum(0, keepdim=True).clamp_min(EPS)
    log_prior = torch.log(tissue_prior.clamp_min(EPS)) * prior_power
    weights = tissue_prior.sum(1)
    active = weights >= min_voxels
    if not bool(active.any()):
        return probabilities
    shared = 1.0 - tissue_prior[~active].sum(0)
    posterior = tissue_prior
    floor = float(x.var()) * 1e-3 + 1e-8
    for _ in range(iterations):
        weights = posterior.sum(1).clamp_min(EPS)
        mean = (posterior @ x) / weights
        variance = ((posterior @ (x * x)) / weights - mean * mean).clamp_min(floor)
        log_likelihood = -0.5 * (x[None] - mean[:, None]) ** 2 / variance[:, None] - 0.5 * torch.log(variance)[:, None]
        # classes with too few voxels to learn a Gaussian keep their prior; the others share the rest
        posterior = tissue_prior.clone()
        posterior[active] = torch.softmax(log_prior[active] + log_likelihood[active], dim=0) * shared
    out = probabilities.clone()
    scale = (1.0 - keep) if keep is not None else 1.0
    values = out[:, region]
    values[refined_classes] = (posterior * scale).to(values.dtype)
    if tissue and keep is not None and all(k in tissue for k in ("csf", "gm", "wm")):
        index = {name: refined_classes.index(tissue[name]) for name in ("csf", "gm", "wm")}
        if all(bool(active[i]) for i in index.values()):
            candidates = hyperintense_outliers(x, posterior, mean, variance, index, keep, outlier_z)
            if candidates is not None and bool(candidates.any()):
                # a candidate becomes lesion: the tissue classes give way (labels follow the argmax/threshold)
                values[:, candidates] = 0.0
                values[lesion_label, candidates] = 1.0
    out[:, region] = values
    return out


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
