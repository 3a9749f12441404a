"""Shared fixtures: a real headless MRML scene (slicer-core) and synthetic test images."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture
def scene():
    from MedAnalysisLib import mrml

    scene = mrml.newScene()
    yield scene
    scene.Clear(1)


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


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)


@pytest.fixture
def repo_root() -> Path:
    return REPO
