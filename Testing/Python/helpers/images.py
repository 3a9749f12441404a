"""Synthetic SimpleITK test images."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def make_oblique_image(array_kji: np.ndarray, spacing=(0.7, 0.9, 2.5), origin=(12.5, -31.25, 47.0),
                       angles_rad=(0.349, 0.349, 0.0)) -> sitk.Image:
    """Image rotated about two axes (~20 deg each), anisotropic, shifted origin."""
    image = sitk.GetImageFromArray(array_kji)
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(*angles_rad)
    image.SetDirection(rotation.GetMatrix())
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def smooth_log_field(shape, seed, amplitude=0.25, mask=None):
    """Random smooth log bias field (sum of low-frequency plane waves), max |field| = amplitude in the mask."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    field = np.zeros(shape)
    for _ in range(4):
        k = rng.normal(0, 1.2, 3)
        field += np.sin(sum(k[d] * grids[d] * np.pi / 2 for d in range(3)) + rng.uniform(0, 2 * np.pi))
    inside = mask if mask is not None else np.ones(shape, bool)
    field -= field[inside].mean()
    return field * amplitude / np.abs(field[inside]).max()
