"""Per-image refinement of tissue probabilities: EM on a Gaussian mixture with the network's
probabilities as spatial priors (the approach of the Bayesian segmenters SPM and SAMSEG).

The network says where each tissue is likely; the mixture learns what each tissue looks like
in *this* image (one Gaussian per class: mean and variance of the normalized intensity), and
the posterior ``prior * likelihood`` replaces the network's probabilities. Lesions are left to
the network: their probability is kept as it is and the tissue posteriors share the rest, so a
class with few voxels cannot capture intensity outliers.
"""

from __future__ import annotations

from typing import Optional

EPS = 1e-6


def refine_probabilities(image, probabilities, lesion_label: Optional[int] = None, iterations: int = 8,
                         prior_power: float = 1.0, region_threshold: float = 0.98, min_voxels: int = 50):
    """Refined class probabilities of one volume (torch tensors, same device).

    Args:
        image: (z, y, x) normalized intensities.
        probabilities: (C, z, y, x) softmax output of the network (class 0 background).
        lesion_label: class kept as the network gives it (None: every class is refined).
        iterations: EM iterations.
        prior_power: exponent of the network prior (< 1 trusts the intensities more).
        region_threshold: voxels whose background probability reaches this are left alone.
        min_voxels: classes with less expected voxels keep their network probabilities.
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
    posterior = tissue_prior
    floor = float(x.var()) * 1e-3 + 1e-8
    for _ in range(iterations):
        weights = posterior.sum(1).clamp_min(EPS)
        mean = (posterior @ x) / weights
        variance = ((posterior @ (x * x)) / weights - mean * mean).clamp_min(floor)
        log_likelihood = -0.5 * (x[None] - mean[:, None]) ** 2 / variance[:, None] - 0.5 * torch.log(variance)[:, None]
        log_likelihood[~active] = 0.0  # too few voxels to learn a Gaussian: the prior decides
        posterior = torch.softmax(log_prior + log_likelihood, dim=0)
    out = probabilities.clone()
    scale = (1.0 - keep) if keep is not None else 1.0
    values = out[:, region]
    values[refined_classes] = (posterior * scale).to(values.dtype)
    out[:, region] = values
    return out
