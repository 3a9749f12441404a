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
