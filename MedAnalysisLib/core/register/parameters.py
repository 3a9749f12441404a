"""Registration parameters: presets in use, the parameter dataclass, stage validation, input checks.

Presets themselves are data in :mod:`MedAnalysisLib.core.register_presets`; this module turns a
preset name (or JSON file), a metric choice and per-stage overrides into validated stages, and
refuses image pairs that cannot be registered before any work starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import numpy as np
import SimpleITK as sitk

from .. import geometry
from ..errors import InputError
from ..register_presets import METRICS, PRESETS, STAGE_DEFAULTS, merge_optimizer, stage_with_defaults

from ..registration_parameters import INITIALIZATIONS, TRANSFORMS, RegistrationParameters  # noqa: F401
_STAGE_KEYS = set(STAGE_DEFAULTS) | {"grid_spacing_mm", "grid_schedule", "description"}


class RegistrationFailed(InputError):
    """The optimization did not improve the alignment (diverged or moved the images apart)."""


# --- presets -----------------------------------------------------------------------------------

def load_preset(name_or_path: str) -> dict:
    """A preset by name, or from a JSON file ``{"description": ..., "stages": [...]}``."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    path = Path(str(name_or_path))
    if path.suffix.lower() == ".json":
        if not path.is_file():
            raise InputError(path, "preset file does not exist")
        try:
            preset = json.loads(path.read_text())
        except ValueError as error:
            raise InputError(path, f"preset file is not valid JSON ({error})") from None
        if not isinstance(preset, dict) or not isinstance(preset.get("stages"), list) or not preset["stages"]:
            raise InputError(path, "preset file needs a non-empty 'stages' list")
        return preset
    raise InputError("preset", f"unknown preset '{name_or_path}' (use one of {', '.join(PRESETS)} "
                                 "or a .json preset file)")


def resolve_stages(parameters: RegistrationParameters) -> List[dict]:
    """Stages of the preset with defaults, the metric choice and overrides applied, validated."""
    preset = load_preset(parameters.preset)
    if parameters.metric is not None and parameters.metric not in METRICS:
        raise InputError("metric", f"unknown metric '{parameters.metric}' (use {', '.join(METRICS)})")
    unknown = set(parameters.overrides) - set(TRANSFORMS) - {"all"}
    if unknown:
        raise InputError("overrides", f"unknown stage type(s) {sorted(unknown)} (use {', '.join(TRANSFORMS)} or 'all')")
    stages = []
    for raw in preset["stages"]:
        if not isinstance(raw, dict):
            raise InputError(parameters.preset, "each stage must be an object")
        merged = dict(raw)
        for key in ("all", raw.get("transform", "rigid")):
            for name, value in parameters.overrides.get(key, {}).items():
                if name == "optimizer" and isinstance(value, (dict, list)):
                    default = stage_with_defaults({"transform": merged.get("transform", "rigid")})["optimizer"]
                    base = merged.get("optimizer", default)
                    merged["optimizer"] = merge_optimizer(base, value)
                else:
                    merged[name] = value
        if parameters.metric is not None:
            merged["metric"] = parameters.metric
        stage = stage_with_defaults(merged)
        _validate_stage(stage, parameters.preset)
        stages.append(stage)
    return stages


def _validate_stage(stage: dict, subject: str) -> None:
    unknown = set(stage) - _STAGE_KEYS
    if unknown:
        raise InputError(subject, f"unknown stage key(s) {sorted(unknown)}")
    if stage["transform"] not in TRANSFORMS:
        raise InputError(subject, f"unknown transform '{stage['transform']}' (use {', '.join(TRANSFORMS)})")
    if stage["metric"] not in METRICS:
        raise InputError(subject, f"unknown metric '{stage['metric']}' (use {', '.join(METRICS)})")
    if stage["sampling"] not in ("random", "regular", "all"):
        raise InputError(subject, f"unknown sampling '{stage['sampling']}' (use random, regular or all)")
    levels = len(stage["shrink_factors"])
    if levels == 0:
        raise InputError(subject, "a stage needs at least one pyramid level")
    per_level = ("smoothing_sigmas_mm", "samples", "iterations")
    for key in per_level + (("grid_schedule",) if stage["transform"] == "bspline" else ()):
        value = stage[key]
        if isinstance(value, (int, float)):
            stage[key] = [value] * levels
        elif len(value) != levels:
            raise InputError(subject, f"'{key}' has {len(value)} values for {levels} pyramid levels")
    if any(int(f) < 1 for f in stage["shrink_factors"]) or any(float(s) < 0 for s in stage["smoothing_sigmas_mm"]):
        raise InputError(subject, "shrink factors must be >= 1 and smoothing sigmas >= 0")
    if any(int(n) < 1 for n in stage["iterations"]) or any(int(n) < 10 for n in stage["samples"]):
        raise InputError(subject, "iterations must be >= 1 and samples >= 10")
    if int(stage["histogram_bins"]) < 8:
        raise InputError(subject, "histogram_bins must be >= 8")
    if stage["transform"] == "bspline":
        schedule = [int(v) for v in stage["grid_schedule"]]
        for coarse, fine in zip(schedule, schedule[1:]):
            if coarse % fine or (coarse // fine) & (coarse // fine - 1):
                raise InputError(subject, f"grid_schedule {schedule}: each level must divide the previous one "
                                          "by a power of two")
        if float(stage["grid_spacing_mm"]) <= 0:
            raise InputError(subject, "grid_spacing_mm must be positive")
    optimizers = stage["optimizer"]
    if isinstance(optimizers, dict):
        optimizers = [optimizers] * levels
    if not isinstance(optimizers, list) or not optimizers or not all(isinstance(o, dict) for o in optimizers):
        raise InputError(subject, "'optimizer' must be one object or a list of objects (one per pyramid level)")
    if len(optimizers) != levels:  # e.g. levels overridden: first entry for the first level, last for the rest
        optimizers = [optimizers[0]] + [optimizers[-1]] * (levels - 1)
        stage["optimizer"] = optimizers
    allowed = ("lbfgs",) if stage["transform"] == "bspline" else \
        ("conjugate_gradient", "regular_step", "gradient_descent", "lbfgs")
    for optimizer in optimizers:
        if optimizer.get("name") not in allowed:
            raise InputError(subject, f"optimizer '{optimizer.get('name')}' cannot run a {stage['transform']} stage "
                                      f"(use {', '.join(allowed)})")


# --- input checks ------------------------------------------------------------------------------

def _subject(subjects: Optional[dict], key: str) -> str:
    return (subjects or {}).get(key) or key


def check_inputs(fixed: sitk.Image, moving: sitk.Image, fixed_mask: Optional[sitk.Image] = None,
                 moving_mask: Optional[sitk.Image] = None, subjects: Optional[dict] = None) -> None:
    """Refuse pairs that cannot be registered: dimension mismatch, constant images, empty masks.

    ``subjects`` names the inputs in messages (``{"fixed": path, "moving": path, "fixed_mask": ...}``).
    """
    for key, image in (("fixed", fixed), ("moving", moving)):
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(_subject(subjects, key), f"{image.GetNumberOfComponentsPerPixel()}-component image: "
                                                      "registration needs a scalar image")
    for key, image in (("fixed", fixed), ("moving", moving)):
        if image.GetDimension() != 3:
            raise InputError(_subject(subjects, key), f"{image.GetDimension()}-D image: registration needs 3-D images")
    for key, image in (("fixed", fixed), ("moving", moving)):
        if min(image.GetSize()) == 1:
            raise InputError(_subject(subjects, key), f"single-slice (2-D) image of size {list(image.GetSize())}: "
                                                      "registration needs 3-D volumes")
        if min(image.GetSize()) < 4:
            raise InputError(_subject(subjects, key), f"image of size {list(image.GetSize())} is too small to register "
                                                      "(needs at least 4 voxels along each axis)")
    for key, image, mask_key, mask in (("fixed", fixed, "fixed_mask", fixed_mask),
                                       ("moving", moving, "moving_mask", moving_mask)):
        array = geometry.array_view(image)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InputError(_subject(subjects, key), "image has NaN or infinite voxels")
        if mask is not None:
            if mask.GetDimension() != 3:
                raise InputError(_subject(subjects, mask_key), f"{mask.GetDimension()}-D mask: needs a 3-D mask")
            mask_values = geometry.array_view(mask)
            if mask_values.dtype.kind == "f" and not np.isfinite(mask_values).all():
                raise InputError(_subject(subjects, mask_key), "mask has NaN or infinite voxels")
            on_grid = mask_on_grid(mask, image)
            inside = geometry.array_view(on_grid) > 0
            if not np.any(geometry.array_view(mask)):
                raise InputError(_subject(subjects, mask_key), "mask is empty (no non-zero voxel)")
            if inside.sum() < 64:
                raise InputError(_subject(subjects, mask_key), f"mask covers only {int(inside.sum())} voxels of the "
                                                               f"{key} image (needs at least 64)")
            values = array[inside]
        else:
            values = array
        low, high = float(values.min()), float(values.max())
        if not high > low:
            where = " inside the mask" if mask is not None else ""
            raise InputError(_subject(subjects, key), f"image is constant{where} (every voxel is {low:g}): "
                                                      "nothing to register")


def check_file_dimensions(fixed_path: "str | os.PathLike", moving_path: "str | os.PathLike") -> None:
    """Compare the dimensions stored in two image files (before they become 3-D volume nodes)."""
    from ..imageio import read_image_header

    for path in (fixed_path, moving_path):
        dimension = read_image_header(path).GetDimension()
        if dimension != 3:
            raise InputError(path, f"{dimension}-D image: registration needs 3-D images")


def mask_on_grid(mask: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Binary uint8 mask on ``reference``'s grid (nearest neighbour; outside the mask grid is 0)."""
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if geometry.same_grid(binary, reference):
        binary.CopyInformation(reference)
        return binary
    return sitk.Resample(binary, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
