"""Per-image EM refinement of tissue probabilities (core/segment/refine.py)."""

from __future__ import annotations

import numpy as np
import torch

from MedAnalysisLib.core.segment.refine import refine_probabilities


def soft_prior(shape, boundary: float, confidence: float = 0.75):
    """Background 0, GM (1) left of ``boundary`` along x, WM (2) right of it, lesion (3) small."""
    x = torch.arange(shape[2], dtype=torch.float32)
    wm = torch.sigmoid((x - boundary) / 2.0) * confidence + (1 - confidence) / 2
    probabilities = torch.zeros((4, *shape))
    probabilities[2] = wm.expand(shape)
    probabilities[1] = 1 - probabilities[2]
    probabilities[3] = 0.02
    probabilities[1:3] *= 0.98 / probabilities[1:3].sum(0, keepdim=True)
    return probabilities


def test_em_moves_a_misplaced_boundary_to_the_intensities():
    generator = torch.Generator().manual_seed(0)
    shape = (8, 8, 40)
    truth = torch.zeros(shape, dtype=torch.long)
    truth[..., 20:] = 1  # WM from x = 20 on
    image = torch.where(truth == 1, 0.8, 0.4) + 0.03 * torch.randn(shape, generator=generator)
    prior = soft_prior(shape, boundary=25.0)  # the network is 5 voxels off
    before = (prior[1:3].argmax(0) == truth).float().mean().item()
    refined = refine_probabilities(image, prior.clone(), lesion_label=3)
    after = (refined[1:3].argmax(0) == truth).float().mean().item()
    assert before < 0.9 and after > 0.98
    assert torch.allclose(refined[3], prior[3])  # lesions are left to the network
    assert torch.allclose(refined.sum(0), torch.ones(shape), atol=1e-5)


def test_nothing_to_refine_outside_the_brain():
    prior = torch.zeros((3, 4, 4, 4))
    prior[0] = 1.0
    image = torch.rand(4, 4, 4)
    assert refine_probabilities(image, prior) is prior


def tissue_volume(means, lesion_value, generator):
    """(image, prior) of a slab: CSF | GM | WM with a bright blob in WM that the network calls WM."""
    shape = (12, 12, 60)
    labels = torch.zeros(shape, dtype=torch.long)
    labels[..., :10], labels[..., 10:25], labels[..., 25:] = 1, 2, 3
    lesion = torch.zeros(shape, dtype=torch.bool)
    lesion[3:8, 3:8, 40:45] = True
    values = torch.tensor([0.0, *means])
    image = values[labels] + 0.02 * torch.randn(shape, generator=generator)
    image[lesion] = lesion_value
    prior = torch.zeros((5, *shape))
    prior[0] = 0.001
    prior[4] = 0.001
    for cls in (1, 2, 3):
        prior[cls] = torch.where(labels == cls, 0.9, 0.049)
    return image, prior / prior.sum(0, keepdim=True), lesion


def test_bright_white_matter_outliers_become_lesions_on_flair_like_images():
    generator = torch.Generator().manual_seed(1)
    image, prior, lesion = tissue_volume((0.05, 0.55, 0.35), 0.9, generator)  # FLAIR: CSF dark, GM > WM
    refined = refine_probabilities(image, prior, lesion_label=4, tissue={"csf": 1, "gm": 2, "wm": 3})
    found = refined.argmax(0) == 4
    assert found[lesion].float().mean() > 0.95
    assert found[~lesion].float().mean() < 0.001


def test_no_outlier_lesions_on_t1_like_images():
    generator = torch.Generator().manual_seed(2)
    image, prior, lesion = tissue_volume((0.15, 0.45, 0.75), 0.99, generator)  # T1: WM brightest
    refined = refine_probabilities(image, prior, lesion_label=4, tissue={"csf": 1, "gm": 2, "wm": 3})
    assert not (refined.argmax(0) == 4).any()


def test_lesions_mostly_outside_white_matter_are_relabelled():
    from MedAnalysisLib.core.segment.engine import remove_poorly_hosted_components

    labels = np.full((30, 30, 30), 3, np.uint8)
    labels[:, :, :12] = 2                     # cortex
    labels[10:14, 10:14, 4:8] = 4             # inside grey matter (touches no WM)
    labels[10:14, 10:14, 9:13] = 4            # at the GM/WM border: shell mostly GM
    labels[10:14, 10:14, 20:24] = 4           # inside white matter
    out = remove_poorly_hosted_components(labels, 4, 3, min_fraction=0.4)
    assert not (out[10:14, 10:14, 4:13] == 4).any()
    assert (out[10:14, 10:14, 20:24] == 4).all()


def test_no_outlier_lesions_on_t2_like_images():
    generator = torch.Generator().manual_seed(3)
    image, prior, lesion = tissue_volume((0.9, 0.5, 0.3), 0.75, generator)  # T2: CSF brightest
    refined = refine_probabilities(image, prior, lesion_label=4, tissue={"csf": 1, "gm": 2, "wm": 3})
    assert not (refined.argmax(0) == 4).any()
