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
    refined = refine_probabilities(image, prior, lesion_label=3)
    after = (refined[1:3].argmax(0) == truth).float().mean().item()
    assert before < 0.9 and after > 0.98
    assert torch.allclose(refined[3], prior[3])  # lesions are left to the network
    assert torch.allclose(refined.sum(0), torch.ones(shape), atol=1e-5)


def test_nothing_to_refine_outside_the_brain():
    prior = torch.zeros((3, 4, 4, 4))
    prior[0] = 1.0
    image = torch.rand(4, 4, 4)
    assert refine_probabilities(image, prior) is prior
