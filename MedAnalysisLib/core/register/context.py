"""State shared by the registration engines: image pyramids and the per-run context.

Each stage runs on a shared image pyramid (block averaging + Gaussian smoothing in mm,
float32) whose levels are computed once and reused by the ITK and PyTorch engines.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .. import geometry
from ..progress import ProgressReporter


# --- pyramid -----------------------------------------------------------------------------------

class _Pyramid:
    """Levels of one float32 image, computed once per (shrink, sigma) and shared by the stages."""

    def __init__(self, image: sitk.Image):
        self.image = sitk.Cast(image, sitk.sitkFloat32)
        self._levels: Dict[Tuple[Tuple[int, ...], float], sitk.Image] = {}

    def factors(self, shrink: int) -> Tuple[int, ...]:
        """Per-axis shrink factors: anisotropic axes shrink less, no axis below 4 voxels."""
        spacing = np.array(self.image.GetSpacing())
        size = np.array(self.image.GetSize())
        factors = np.maximum(1, np.round(shrink * spacing.min() / spacing)).astype(int)
        factors = np.minimum(factors, np.maximum(1, size // 4))
        return tuple(int(f) for f in factors)

    def shrink_for(self, max_voxels: float) -> int:
        """The smallest power-of-two shrink factor giving a level of at most ``max_voxels`` voxels."""
        shrink = 1
        while np.prod(self.level(shrink, 0.0).GetSize()) > max_voxels and shrink < 64:
            shrink *= 2
        return shrink

    def level(self, shrink: int, sigma_mm: float) -> sitk.Image:
        key = (self.factors(int(shrink)), round(float(sigma_mm), 6))
        if key not in self._levels:
            image = sitk.BinShrink(self.image, list(key[0])) if max(key[0]) > 1 else self.image
            if sigma_mm > 0:
                image = sitk.SmoothingRecursiveGaussian(image, float(sigma_mm))
            self._levels[key] = image
        return self._levels[key]


# --- context -------------------------------------------------------------------------------------

class _Context:
    """Inputs shared by the stages (pyramids, masks, subjects, progress)."""

    def __init__(self, fixed, moving, fixed_mask, moving_mask, parameters, subjects, report):
        self.fixed = _Pyramid(fixed)
        self.moving = _Pyramid(moving)
        self.fixed_mask = fixed_mask
        self.moving_mask = moving_mask
        self.mask_fraction = float(geometry.array_view(fixed_mask).mean()) if fixed_mask is not None else 1.0
        self.parameters = parameters
        self.subjects = subjects or {}
        self.report: ProgressReporter = report
        self.center = self._center()
        self.torch_threads: Optional[int] = None

    def _center(self) -> Tuple[float, ...]:
        """Centre of rotation: the fixed mask's centroid, else the fixed image's centre (LPS mm)."""
        if self.fixed_mask is not None:
            stats = sitk.LabelShapeStatisticsImageFilter()
            stats.Execute(self.fixed_mask)
            if stats.HasLabel(1):
                return stats.GetCentroid(1)
        image = self.fixed.image
        return image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])

    def subject(self, key: str) -> str:
        """How messages name an input; "pair" names the fixed and moving images (and masks given)
        together, for failures that belong to the pair rather than to one file."""
        if key == "pair":
            names = [self.subjects.get(k) or k for k in ("fixed", "moving")]
            masks = [self.subjects[k] for k in ("fixed_mask", "moving_mask") if self.subjects.get(k)]
            return " -> ".join(names) + (f" (masks {', '.join(masks)})" if masks else "")
        return self.subjects.get(key) or key


# --- stage helpers -------------------------------------------------------------------------------

def _level_optimizer(stage: dict, level_index: int) -> dict:
    optimizer = stage["optimizer"]
    return optimizer[level_index] if isinstance(optimizer, list) else optimizer


def _pyramid_levels(context: _Context, stage: dict):
    """(level index, shrink factor, fixed image, moving image) of each pyramid level, coarse to fine."""
    for level_index, (shrink, sigma) in enumerate(zip(stage["shrink_factors"], stage["smoothing_sigmas_mm"])):
        shrink, sigma = int(shrink), float(sigma)
        yield level_index, shrink, context.fixed.level(shrink, sigma), context.moving.level(shrink, sigma)
