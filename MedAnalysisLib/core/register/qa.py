"""Registration QA: the result and its summary, overlap checks, mask Dice, resampling, QA images."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional

import numpy as np
import SimpleITK as sitk

from .. import geometry
from ..errors import InputError
from .context import _Context
from .parameters import mask_on_grid
from .transforms import transform_points

_MIN_OVERLAP_FRACTION = 0.05


@dataclasses.dataclass
class RegistrationResult:
    transform: sitk.Transform  # fixed -> moving, LPS
    initial_transform: sitk.Transform
    initial_metric: float
    final_metric: float
    metric: str
    stages: List[dict]
    seconds: float
    mask_dice_initial: Optional[float] = None
    mask_dice: Optional[float] = None
    checkerboard: Optional[sitk.Image] = None
    difference: Optional[sitk.Image] = None

    @property
    def is_linear(self) -> bool:
        return bool(self.transform.IsLinear())

    def summary(self) -> dict:
        """JSON-able QA summary: metric before/after, iterations and time per level, Dice."""
        return {
            "metric": self.metric,
            "initial_metric": round(self.initial_metric, 6),
            "final_metric": round(self.final_metric, 6),
            "iterations": int(sum(level["iterations"] for stage in self.stages for level in stage["levels"])),
            "seconds": round(self.seconds, 3),
            "stages": self.stages,
            "mask_dice_initial": None if self.mask_dice_initial is None else round(self.mask_dice_initial, 4),
            "mask_dice": None if self.mask_dice is None else round(self.mask_dice, 4),
            "transform_type": "linear" if self.is_linear else "deformable",
        }


# --- overlap -------------------------------------------------------------------------------------

def _background(image: sitk.Image) -> float:
    """A threshold just above the background (min + 5 % of the robust range)."""
    values = geometry.array_view(image).ravel()
    low, high = np.percentile(values[:: max(1, values.size // 200000)], [1, 99])
    return float(low + 0.05 * (high - low))


def _foreground_points(image: sitk.Image, mask: Optional[sitk.Image], count: int, seed: int) -> np.ndarray:
    """Up to ``count`` random voxel centres (LPS) inside the mask, else above the background."""
    array = geometry.array_view(image)
    mask_image = mask_on_grid(mask, image) if mask is not None else None  # must outlive its view
    selected = geometry.array_view(mask_image) > 0 if mask_image is not None else array > _background(image)
    indices = np.argwhere(selected)
    if len(indices) == 0:
        indices = np.argwhere(np.ones(array.shape, dtype=bool))
    rng = np.random.default_rng(seed)
    chosen = indices[rng.choice(len(indices), size=min(count, len(indices)), replace=False)]
    return geometry.physical_points_lps(image, chosen[:, ::-1].astype(float))


def overlap_fraction(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                     fixed_mask: Optional[sitk.Image] = None, seed: int = 0) -> float:
    """Fraction of the fixed foreground that the transform maps inside the moving image (0..1)."""
    points = _foreground_points(fixed, fixed_mask, 1000, seed)
    index = geometry.world_to_index(moving, transform_points(transform, points))
    size = np.array(moving.GetSize())
    inside = np.all((index >= -0.5) & (index <= size - 0.5), axis=1)
    return float(inside.mean()) if len(inside) else 0.0


def _check_overlap(context: _Context, transform: sitk.Transform) -> None:
    fixed_level = context.fixed.level(context.fixed.shrink_for(5e5), 0.0)
    fraction = overlap_fraction(fixed_level, context.moving.image, transform, context.fixed_mask,
                                context.parameters.seed)
    if fraction < _MIN_OVERLAP_FRACTION:
        how = context.parameters.init if isinstance(context.parameters.init, str) else "initial"
        suggestion = ("--init geometry or --init moments" if how not in ("geometry", "moments")
                      else "--init moments, landmarks, or an initial transform file" if how == "geometry"
                      else "landmarks or an initial transform file")
        raise InputError(context.subject("moving"), f"does not overlap the fixed image after '{Path(str(how)).name}' "
                                                    f"initialization ({100 * fraction:.0f} % of the fixed foreground "
                                                    f"maps into it); try {suggestion}")


# --- QA --------------------------------------------------------------------------------------------

def mask_dice(fixed_mask: sitk.Image, moving_mask: sitk.Image, transform: sitk.Transform) -> float:
    """Dice of the fixed mask and the moving mask mapped onto the fixed grid by ``transform``."""
    fixed_binary = geometry.array_view(fixed_mask) > 0
    mapped = sitk.Resample(sitk.Cast(moving_mask > 0, sitk.sitkUInt8), fixed_mask, transform,
                           sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    moving_binary = geometry.array_view(mapped) > 0
    total = fixed_binary.sum() + moving_binary.sum()
    return float(2.0 * np.logical_and(fixed_binary, moving_binary).sum() / total) if total else 0.0


def _normalized(image: sitk.Image) -> sitk.Image:
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    low, high = np.percentile(array, [1, 99.5])
    scaled = np.clip((array - low) / max(high - low, 1e-12), 0.0, 1.0).astype(np.float32)
    return geometry.image_from_array(scaled, reference=image)


def checkerboard_image(fixed: sitk.Image, resampled: sitk.Image, squares: int = 8) -> sitk.Image:
    """Checkerboard of the fixed and the resampled moving image (each scaled to 0..1), float32."""
    return sitk.CheckerBoard(_normalized(fixed), _normalized(resampled), [squares] * 3)


def difference_image(fixed: sitk.Image, resampled: sitk.Image) -> sitk.Image:
    """Fixed minus resampled moving, each scaled to 0..1 (same modality QA), float32."""
    return sitk.Subtract(_normalized(fixed), _normalized(resampled))


INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}


def resample_moving(moving: sitk.Image, fixed: sitk.Image, transform: sitk.Transform,
                    interpolation: str = "linear", pixel_type: Optional[int] = None,
                    default_value: Optional[float] = None) -> sitk.Image:
    """The moving image on the fixed grid through ``transform`` (fixed -> moving, LPS).

    Integer images are interpolated in float and rounded back to their pixel type (or
    ``pixel_type``); voxels mapping outside the moving image get ``default_value`` (the
    moving image's minimum by default).
    """
    if interpolation not in INTERPOLATORS:
        raise InputError("interpolation", f"unknown interpolation '{interpolation}' (use {', '.join(INTERPOLATORS)})")
    array = geometry.array_view(moving)
    if default_value is None:
        default_value = float(array.min()) if array.size else 0.0
    target = moving.GetPixelID() if pixel_type is None else pixel_type
    resampled = sitk.Resample(moving, fixed, transform, INTERPOLATORS[interpolation], float(default_value),
                              sitk.sitkFloat32 if interpolation != "nearest" else moving.GetPixelID())
    if resampled.GetPixelID() != target:
        if target in (sitk.sitkFloat32, sitk.sitkFloat64):
            resampled = sitk.Cast(resampled, target)
        else:
            values = sitk.GetArrayViewFromImage(resampled)
            dtype = sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], target)).dtype
            info = np.iinfo(dtype)
            rounded = np.clip(np.rint(values), info.min, info.max).astype(dtype)
            resampled = geometry.image_from_array(rounded, reference=resampled)
    return resampled
