"""Image registration: rigid, affine and B-spline stages, fixed -> moving transforms in LPS.

The result is an ITK transform that maps points of the **fixed** image to the **moving**
image (LPS, mm): resampling the moving image through it onto the fixed grid aligns the two,
and SimpleITK / Slicer read it from ``.tfm`` / ``.h5`` files. Chains of linear stages are
collapsed into one ``AffineTransform``; a deformable result is a ``CompositeTransform``
``[affine, bspline]`` (the B-spline applies first, in fixed space).

Stages come from presets (data, :mod:`register_presets`). Each stage runs on a shared image
pyramid (block averaging + Gaussian smoothing in mm, float32), with a fixed random or regular
point set per level so that the metric is deterministic and the optimizer can use line searches.

Engines (chosen by measurement, see Testing/Benchmarks/bench_register.py):

* linear stages: SimpleITK's ``ImageRegistrationMethod`` (ITKv4) with the metric's gradient
  computed at the sample points (no gradient images) and physical-shift parameter scales;
  conjugate gradient with line search on the coarsest level (robust far from the optimum),
  regular-step gradient descent (one evaluation per iteration) on the finer ones, whose
  points are drawn on a coarser virtual grid (ITKv4 prepares every virtual voxel per run);
  optionally L-BFGS in PyTorch (``lbfgs``), not the default because importing PyTorch costs
  more than a whole rigid registration;
* B-spline stage: ITKv4 evaluates a B-spline metric derivative in O(samples x control points)
  (a dense Jacobian per sample: about 1 s per evaluation for 20,000 samples and 4,000
  parameters here; a full-resolution run did not finish in minutes), so the B-spline stage
  evaluates the same metrics (Mattes MI as ITK defines it, MSE, correlation) in PyTorch on a
  regular sample lattice, where the cubic B-spline is separable (three small matrix products),
  optimizes with L-BFGS, and refines the control-point grid exactly between levels. Its
  parameters are those of an ITK ``BSplineTransform`` (same grid, same coefficient order);
  the tests check the result through SimpleITK and Slicer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from . import geometry
from .errors import InputError, OperationCancelled
from .progress import ProgressReporter, atomic_output, output_suffix
from .provenance import sidecar_path
from .register_presets import METRICS, PRESETS, STAGE_DEFAULTS, merge_optimizer, stage_with_defaults

TRANSFORMS = ("rigid", "affine", "bspline")
INITIALIZATIONS = ("geometry", "moments", "identity")
TRANSFORM_SUFFIXES = (".tfm", ".txt", ".h5", ".hdf5")
_STAGE_KEYS = set(STAGE_DEFAULTS) | {"grid_spacing_mm", "grid_schedule", "description"}
_MIN_OVERLAP_FRACTION = 0.05
_MAX_VIRTUAL_VOXELS = 1.5e6


class RegistrationFailed(InputError):
    """The optimization did not improve the alignment (diverged or moved the images apart)."""


@dataclasses.dataclass
class RegistrationParameters:
    """Everything one registration needs; shared by the panel, logic, CLI and batch.

    Attributes:
        preset: preset name (``rigid``, ``affine``, ``bspline``, ``rigid+affine+bspline``) or the
            path of a JSON preset file with the same shape.
        metric: ``mi`` | ``mse`` | ``ncc`` for every stage; None keeps the preset's (Mattes MI).
        init: ``moments`` (centres of mass above the background, default), ``geometry`` (image
            centres), ``identity``, or the path
            of an ITK transform file (fixed -> moving, LPS) to start from.
        rotation_search_deg: coarse exhaustive search over rotations of up to this many degrees
            about each axis before the first stage (0: off); use for large rotations.
        rotation_search_step_deg: step of that search (degrees).
        fixed_landmarks_lps / moving_landmarks_lps: corresponding points (mm, LPS), at least 3;
            when given they initialize the transform (rigid fit), replacing ``init``.
        threads: worker threads (None: all cores).
        overrides: per-stage changes, e.g. ``{"bspline": {"grid_spacing_mm": 15}, "all": {"histogram_bins": 50}}``.
        seed: seed of the metric's sample points (results are reproducible).
        interpolation: ``linear`` | ``bspline`` | ``nearest`` for the resampled output.
        checkerboard / difference: also return a checkerboard / difference image for QA.
    """

    preset: str = "rigid"
    metric: Optional[str] = None
    init: str = "moments"
    rotation_search_deg: float = 0.0
    rotation_search_step_deg: float = 15.0
    fixed_landmarks_lps: Optional[List[List[float]]] = None
    moving_landmarks_lps: Optional[List[List[float]]] = None
    threads: Optional[int] = None
    overrides: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
    seed: int = 20261125
    interpolation: str = "linear"
    checkerboard: bool = False
    difference: bool = False

    def stages(self) -> List[dict]:
        """The preset's stages with defaults, ``metric`` and ``overrides`` applied."""
        return resolve_stages(self)


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
    raise InputError("--preset", f"unknown preset '{name_or_path}' (use one of {', '.join(PRESETS)} "
                                 "or a .json preset file)")


def resolve_stages(parameters: RegistrationParameters) -> List[dict]:
    """Stages of the preset with defaults, the metric choice and overrides applied, validated."""
    preset = load_preset(parameters.preset)
    if parameters.metric is not None and parameters.metric not in METRICS:
        raise InputError("--metric", f"unknown metric '{parameters.metric}' (use {', '.join(METRICS)})")
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
    if fixed.GetDimension() != moving.GetDimension():
        raise InputError(_subject(subjects, "moving"), f"{moving.GetDimension()}-D image but the fixed image is "
                                                       f"{fixed.GetDimension()}-D: both must be 3-D")
    for key, image in (("fixed", fixed), ("moving", moving)):
        if image.GetDimension() != 3:
            raise InputError(_subject(subjects, key), f"{image.GetDimension()}-D image: registration needs 3-D images")
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
    from .imageio import read_image_header

    fixed_dimension = read_image_header(fixed_path).GetDimension()
    moving_dimension = read_image_header(moving_path).GetDimension()
    if fixed_dimension != moving_dimension:
        raise InputError(moving_path, f"{moving_dimension}-D image but the fixed image is {fixed_dimension}-D: "
                                      "both must be 3-D")
    if fixed_dimension != 3:
        raise InputError(fixed_path, f"{fixed_dimension}-D images: registration needs 3-D images")


def mask_on_grid(mask: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Binary uint8 mask on ``reference``'s grid (nearest neighbour; outside the mask grid is 0)."""
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if geometry.same_grid(binary, reference):
        binary.CopyInformation(reference)
        return binary
    return sitk.Resample(binary, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


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


# --- transforms --------------------------------------------------------------------------------

def _as_affine(transform: sitk.Transform, center: Sequence[float]) -> sitk.AffineTransform:
    """The linear ``transform`` as an AffineTransform with the given centre of rotation."""
    matrix = geometry.linear_matrix_lps(transform)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(tuple(float(c) for c in center))
    affine.SetMatrix(tuple(matrix[:3, :3].ravel()))
    center = np.asarray(center, dtype=float)
    affine.SetTranslation(tuple(matrix[:3, :3] @ center + matrix[:3, 3] - center))
    return affine


def _as_rigid(transform: sitk.Transform, center: Sequence[float]) -> Optional[sitk.Euler3DTransform]:
    """The linear ``transform`` as an Euler3DTransform if it is a rotation + translation, else None."""
    matrix = geometry.linear_matrix_lps(transform)
    rotation = matrix[:3, :3]
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-6) or np.linalg.det(rotation) < 0:
        return None
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(tuple(float(c) for c in center))
    rigid.SetMatrix(tuple(rotation.ravel()))
    center = np.asarray(center, dtype=float)
    rigid.SetTranslation(tuple(rotation @ center + matrix[:3, 3] - center))
    return rigid


def compose(outer: sitk.Transform, inner: sitk.Transform) -> sitk.Transform:
    """``outer(inner(x))``: one AffineTransform when both are linear, else a CompositeTransform."""
    if outer.IsLinear() and inner.IsLinear():
        matrix = geometry.linear_matrix_lps(outer) @ geometry.linear_matrix_lps(inner)
        return geometry.affine_from_matrix_lps(matrix)
    return sitk.CompositeTransform([outer, inner])


def _identity() -> sitk.Transform:
    return sitk.AffineTransform(3)


# --- metrics (SimpleITK) -------------------------------------------------------------------------

def _set_metric(method: sitk.ImageRegistrationMethod, metric: str, bins: int) -> None:
    if metric == "mi":
        method.SetMetricAsMattesMutualInformation(int(bins))
    elif metric == "mse":
        method.SetMetricAsMeanSquares()
    else:
        method.SetMetricAsCorrelation()
    # the gradient at the sample points only: no full-size gradient images per level
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetInterpolator(sitk.sitkLinear)


def _set_sampling(method: sitk.ImageRegistrationMethod, strategy: str, samples: int, image: sitk.Image,
                  mask_fraction: float, seed: int) -> None:
    voxels = float(np.prod(image.GetSize())) * max(mask_fraction, 1e-6)
    if strategy == "all" or samples >= voxels:
        method.SetMetricSamplingStrategy(method.NONE)
        return
    method.SetMetricSamplingStrategy(method.RANDOM if strategy == "random" else method.REGULAR)
    method.SetMetricSamplingPercentage(min(1.0, samples / voxels), int(seed))


def _outside_error(error: Exception) -> bool:
    text = str(error)
    return "samples map outside" in text or "All samples map outside" in text or "valid points" in text.lower() \
        or "joint PDF summed to zero" in text


# --- the registration ----------------------------------------------------------------------------

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
        return self.subjects.get(key) or key


def register_images(fixed: sitk.Image, moving: sitk.Image, parameters: Optional[RegistrationParameters] = None,
                    fixed_mask: Optional[sitk.Image] = None, moving_mask: Optional[sitk.Image] = None,
                    initial_transform: Optional[sitk.Transform] = None,
                    report: Optional[ProgressReporter] = None, subjects: Optional[dict] = None) -> RegistrationResult:
    """Register ``moving`` to ``fixed``; returns the fixed -> moving transform (LPS) and QA.

    Args:
        fixed, moving: 3-D scalar images (any pixel type; registered as float32).
        parameters: preset, metric, initialization, threads... (defaults: rigid, Mattes MI).
        fixed_mask, moving_mask: optional binary images (any grid); the metric only uses points
            inside them.
        initial_transform: fixed -> moving transform to start from (overrides ``parameters.init``).
        report: progress and cancellation (per level and iteration).
        subjects: names of the inputs for error messages (file paths or node names).

    Raises:
        InputError: bad inputs (dimension mismatch, constant image, empty mask, no overlap after
            initialization); RegistrationFailed: the optimization made the alignment worse.
    """
    parameters = parameters or RegistrationParameters()
    report = report or ProgressReporter()
    stages = resolve_stages(parameters)
    check_inputs(fixed, moving, fixed_mask, moving_mask, subjects)
    started = time.perf_counter()
    threads = int(parameters.threads or os.cpu_count() or 1)
    if threads < 1:
        raise InputError("--threads", f"must be at least 1, got {threads}")
    previous_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    context = None
    try:
        fixed_mask_grid = mask_on_grid(fixed_mask, fixed) if fixed_mask is not None else None
        moving_mask_grid = mask_on_grid(moving_mask, moving) if moving_mask is not None else None
        context = _Context(fixed, moving, fixed_mask_grid, moving_mask_grid, parameters, subjects, report)
        initial = _initialize(context, stages, initial_transform)
        _check_overlap(context, initial)
        report(0.01, "initialized")
        qa_metric = stages[-1]["metric"]
        initial_metric = _evaluate_metric(context, initial, qa_metric, stages[-1]["histogram_bins"])

        weights = np.array([3.0 if s["transform"] == "bspline" else 1.0 for s in stages])
        bounds = [float(b) for b in np.concatenate([[0.0], np.cumsum(weights) / weights.sum()]) * 0.95 + 0.02]
        current = initial
        stage_reports = []
        for index, stage in enumerate(stages):
            stage_report = report.sub(bounds[index], bounds[index + 1])
            label = f"stage {index + 1}/{len(stages)} {stage['transform']}"
            if stage["transform"] == "bspline":
                current, levels = _run_bspline_stage(context, stage, current, stage_report, label)
            else:
                current, levels = _run_linear_stage(context, stage, current, stage_report, label)
            stage_reports.append({"transform": stage["transform"], "metric": stage["metric"], "levels": levels})
        report(0.97, "quality checks")
        final_metric = _evaluate_metric(context, current, qa_metric, stages[-1]["histogram_bins"])
        if not np.isfinite(final_metric) or final_metric > initial_metric + 1e-3 * abs(initial_metric) + 1e-9:
            raise RegistrationFailed(context.subject("moving"),
                                     f"registration failed: the final {qa_metric} metric {final_metric:.6g} is worse "
                                     f"than the initial {initial_metric:.6g} (diverged); try another --init, "
                                     "masks, or a simpler preset")
        result = RegistrationResult(current, initial, float(initial_metric), float(final_metric), qa_metric,
                                    stage_reports, 0.0)
        if fixed_mask_grid is not None and moving_mask_grid is not None:
            result.mask_dice_initial = mask_dice(fixed_mask_grid, moving_mask_grid, initial)
            result.mask_dice = mask_dice(fixed_mask_grid, moving_mask_grid, current)
        if parameters.checkerboard or parameters.difference:
            resampled = resample_moving(moving, fixed, current, "linear", pixel_type=sitk.sitkFloat32)
            if parameters.checkerboard:
                result.checkerboard = checkerboard_image(fixed, resampled)
            if parameters.difference:
                result.difference = difference_image(fixed, resampled)
        result.seconds = time.perf_counter() - started
        report(1.0, f"registration done in {result.seconds:.1f} s")
        return result
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous_threads)
        if context is not None and context.torch_threads is not None:
            import torch

            torch.set_num_threads(context.torch_threads)


# --- initialization -------------------------------------------------------------------------------

def _initialize(context: _Context, stages: List[dict], initial_transform: Optional[sitk.Transform]) -> sitk.Transform:
    parameters = context.parameters
    fixed, moving = context.fixed.image, context.moving.image
    if initial_transform is not None:
        transform = initial_transform
    elif parameters.fixed_landmarks_lps is not None or parameters.moving_landmarks_lps is not None:
        transform = landmark_transform(parameters.fixed_landmarks_lps, parameters.moving_landmarks_lps)
    elif parameters.init in ("geometry", "moments"):
        # centres of mass need no fine detail: a level of <= 0.5 M voxels is enough
        fixed_image = context.fixed.level(context.fixed.shrink_for(5e5), 0.0)
        moving_image = context.moving.level(context.moving.shrink_for(5e5), 0.0)
        if parameters.init == "geometry":
            fixed_image, moving_image = fixed, moving
        if context.fixed_mask is not None:
            fixed_image = sitk.Mask(fixed_image, mask_on_grid(context.fixed_mask, fixed_image))
        if context.moving_mask is not None:
            moving_image = sitk.Mask(moving_image, mask_on_grid(context.moving_mask, moving_image))
        if parameters.init == "moments":
            # centres of mass of the intensities above the background
            fixed_image = sitk.Threshold(fixed_image, _background(fixed_image), 1e30, 0.0)
            moving_image = sitk.Threshold(moving_image, _background(moving_image), 1e30, 0.0)
        mode = (sitk.CenteredTransformInitializerFilter.MOMENTS if parameters.init == "moments"
                else sitk.CenteredTransformInitializerFilter.GEOMETRY)
        try:
            transform = sitk.CenteredTransformInitializer(fixed_image, moving_image, sitk.Euler3DTransform(), mode)
        except RuntimeError as error:
            raise InputError(context.subject("moving"), f"'{parameters.init}' initialization failed "
                                                        f"({' '.join(str(error).split())[-120:]})") from None
    elif parameters.init in ("identity", "none"):
        transform = _identity()
    else:
        transform = read_transform(parameters.init)
    if parameters.rotation_search_deg and parameters.rotation_search_deg > 0:
        transform = _rotation_search(context, stages[0], transform)
    return transform


def _background(image: sitk.Image) -> float:
    """A threshold just above the background (min + 5 % of the robust range)."""
    values = geometry.array_view(image).ravel()
    low, high = np.percentile(values[:: max(1, values.size // 200000)], [1, 99])
    return float(low + 0.05 * (high - low))


def landmark_transform(fixed_points_lps, moving_points_lps) -> sitk.Transform:
    """Rigid transform fixed -> moving (LPS) fitted to corresponding landmarks (least squares)."""
    fixed_points = np.asarray(fixed_points_lps if fixed_points_lps is not None else [], dtype=float).reshape(-1, 3)
    moving_points = np.asarray(moving_points_lps if moving_points_lps is not None else [], dtype=float).reshape(-1, 3)
    if len(fixed_points) != len(moving_points):
        raise InputError("landmarks", f"{len(fixed_points)} fixed and {len(moving_points)} moving landmarks: "
                                      "they must correspond one to one")
    if len(fixed_points) < 3:
        raise InputError("landmarks", f"{len(fixed_points)} landmark pairs: at least 3 are needed")
    centered = fixed_points - fixed_points.mean(axis=0)
    if np.linalg.matrix_rank(centered, tol=1e-3) < 2:
        raise InputError("landmarks", "the fixed landmarks are collinear: place at least 3 points not on one line")
    transform = sitk.LandmarkBasedTransformInitializer(sitk.VersorRigid3DTransform(),
                                                       fixed_points.ravel().tolist(), moving_points.ravel().tolist())
    return sitk.Euler3DTransform(transform.GetCenter(), *_euler_angles(transform), transform.GetTranslation())


def _euler_angles(transform: sitk.Transform) -> Tuple[float, float, float]:
    euler = sitk.Euler3DTransform()
    euler.SetCenter(transform.GetCenter())
    euler.SetMatrix(transform.GetMatrix())
    return euler.GetAngleX(), euler.GetAngleY(), euler.GetAngleZ()


def read_transform(path: "str | os.PathLike") -> sitk.Transform:
    """An ITK transform file (fixed -> moving, LPS), with InputError on failure."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "initial transform file does not exist (use --init geometry, moments or a "
                               "transform file)")
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError:
        raise InputError(path, "not a readable ITK transform file (.tfm, .txt, .h5)") from None
    if transform.GetDimension() != 3:
        raise InputError(path, f"{transform.GetDimension()}-D transform: a 3-D transform is needed")
    return transform


def _rotation_search(context: _Context, stage: dict, transform: sitk.Transform) -> sitk.Transform:
    """Exhaustive search over rotations about the centre at the coarsest level (large rotations)."""
    parameters = context.parameters
    if not transform.IsLinear():
        return transform
    rigid = _as_rigid(transform, context.center)
    if rigid is None:
        return transform
    step = math.radians(max(1.0, float(parameters.rotation_search_step_deg)))
    steps = int(max(1, round(math.radians(float(parameters.rotation_search_deg)) / step)))
    shrink = max(int(stage["shrink_factors"][0]), 4)
    fixed_level = context.fixed.level(shrink, 2.0)
    moving_level = context.moving.level(shrink, 2.0)
    method = sitk.ImageRegistrationMethod()
    _set_metric(method, stage["metric"], stage["histogram_bins"])
    _set_sampling(method, "random", 3000, fixed_level, context.mask_fraction, parameters.seed)
    _set_masks(method, context)
    method.SetOptimizerAsExhaustive([steps, steps, steps, 0, 0, 0], step)
    method.SetOptimizerScales([1.0] * 6)
    method.SetInitialTransform(rigid, inPlace=True)
    context.report(0.01, f"coarse rotation search: {(2 * steps + 1) ** 3} rotations up to "
                         f"{parameters.rotation_search_deg:g} deg")
    try:
        method.Execute(fixed_level, moving_level)
    except RuntimeError as error:
        if _outside_error(error):
            raise InputError(context.subject("moving"), "does not overlap the fixed image during the rotation "
                                                        "search; try --init moments or an initial transform") from None
        raise
    return rigid


def _set_masks(method: sitk.ImageRegistrationMethod, context: _Context) -> None:
    if context.fixed_mask is not None:
        method.SetMetricFixedMask(context.fixed_mask)
    if context.moving_mask is not None:
        method.SetMetricMovingMask(context.moving_mask)


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


def transform_points(transform: sitk.Transform, points_lps: np.ndarray) -> np.ndarray:
    """(N, 3) LPS points through an ITK transform (vectorized for linear transforms)."""
    points_lps = np.asarray(points_lps, dtype=float)
    if transform.IsLinear():
        matrix = geometry.linear_matrix_lps(transform)
        return points_lps @ matrix[:3, :3].T + matrix[:3, 3]
    return np.array([transform.TransformPoint(tuple(float(v) for v in p)) for p in points_lps]).reshape(-1, 3)


def overlap_fraction(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                     fixed_mask: Optional[sitk.Image] = None, seed: int = 0) -> float:
    """Fraction of the fixed foreground that the transform maps inside the moving image (0..1)."""
    points = _foreground_points(fixed, fixed_mask, 1000, seed)
    inverse = np.linalg.inv(geometry.ijk_to_lps(moving))
    index = transform_points(transform, points) @ inverse[:3, :3].T + inverse[:3, 3]
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

def _evaluate_metric(context: _Context, transform: sitk.Transform, metric: str, bins: int) -> float:
    """The metric (lower is better) on every voxel of the finest pyramid level with at most 0.5 M voxels
    (SimpleITK's MetricEvaluate samples densely), to compare the alignment before and after."""
    shrink = context.fixed.shrink_for(5e5)
    method = sitk.ImageRegistrationMethod()
    _set_metric(method, metric, bins)
    _set_masks(method, context)
    method.SetMovingInitialTransform(transform)
    method.SetInitialTransform(sitk.TranslationTransform(3), inPlace=True)
    try:
        return float(method.MetricEvaluate(context.fixed.level(shrink, 0.0), context.moving.level(shrink, 0.0)))
    except RuntimeError as error:
        if _outside_error(error):
            return float("inf")
        raise


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


# --- linear stages (SimpleITK) --------------------------------------------------------------------------

def _linear_start(stage: dict, current: sitk.Transform, center) -> Tuple[sitk.Transform, Optional[sitk.Transform]]:
    """(transform to optimize, fixed moving-initial transform applied after it)."""
    if current.IsLinear():
        if stage["transform"] == "rigid":
            rigid = _as_rigid(current, center)
            if rigid is not None:
                return rigid, None
            start = sitk.Euler3DTransform()
            start.SetCenter(tuple(center))
            return start, current
        return _as_affine(current, center), None
    start = sitk.Euler3DTransform() if stage["transform"] == "rigid" else sitk.AffineTransform(3)
    start.SetCenter(tuple(center))
    return start, current


def _level_optimizer(stage: dict, level_index: int) -> dict:
    optimizer = stage["optimizer"]
    return optimizer[level_index] if isinstance(optimizer, list) else optimizer


def _set_linear_optimizer(method: sitk.ImageRegistrationMethod, optimizer: dict, iterations: int,
                          spacing_mm: float) -> None:
    name = optimizer["name"]
    if name == "conjugate_gradient":
        method.SetOptimizerAsConjugateGradientLineSearch(
            learningRate=float(optimizer.get("learning_rate", 1.0)), numberOfIterations=int(iterations),
            convergenceMinimumValue=float(optimizer.get("convergence_minimum", 1e-6)),
            convergenceWindowSize=int(optimizer.get("convergence_window", 10)),
            lineSearchMaximumIterations=int(optimizer.get("line_search_iterations", 20)),
            estimateLearningRate=method.Once,
            maximumStepSizeInPhysicalUnits=float(optimizer.get("max_step_voxels", 0.75)) * spacing_mm)
    elif name == "regular_step":
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=float(optimizer.get("learning_rate", 1.0)) * spacing_mm,
            minStep=float(optimizer.get("min_step", 1e-3)), numberOfIterations=int(iterations),
            relaxationFactor=float(optimizer.get("relaxation", 0.5)),
            gradientMagnitudeTolerance=float(optimizer.get("gradient_tolerance", 1e-8)))
    else:  # gradient_descent
        estimate = optimizer.get("estimate_learning_rate", "once")
        method.SetOptimizerAsGradientDescent(
            learningRate=float(optimizer.get("learning_rate", 1.0)), numberOfIterations=int(iterations),
            convergenceMinimumValue=float(optimizer.get("convergence_minimum", 1e-6)),
            convergenceWindowSize=int(optimizer.get("convergence_window", 10)),
            estimateLearningRate={"once": method.Once,
                                  "each_iteration": method.EachIteration}.get(estimate, method.Never),
            maximumStepSizeInPhysicalUnits=float(optimizer.get("max_step_voxels", 1.0)) * spacing_mm)
    method.SetOptimizerScalesFromPhysicalShift()


def _pyramid_levels(context: _Context, stage: dict):
    """(level index, shrink factor, fixed image, moving image) of each pyramid level, coarse to fine."""
    for level_index, (shrink, sigma) in enumerate(zip(stage["shrink_factors"], stage["smoothing_sigmas_mm"])):
        shrink, sigma = int(shrink), float(sigma)
        yield level_index, shrink, context.fixed.level(shrink, sigma), context.moving.level(shrink, sigma)


def _run_linear_stage(context: _Context, stage: dict, current: sitk.Transform, report: ProgressReporter,
                      label: str) -> Tuple[sitk.Transform, List[dict]]:
    transform, after = _linear_start(stage, current, context.center)
    levels = []
    count = len(stage["shrink_factors"])
    for level_index, shrink, fixed_level, moving_level in _pyramid_levels(context, stage):
        level_started = time.perf_counter()
        spacing = float(min(fixed_level.GetSpacing()))
        level_report = report.sub(level_index / count, (level_index + 1) / count)
        where = f"{label} level {level_index + 1}/{count} ({spacing:.3g} mm)"
        optimizer = _level_optimizer(stage, level_index)
        if optimizer["name"] == "lbfgs" and (after is None or after.IsLinear()):
            start = transform if after is None else compose(after, transform)
            matrix, info = _torch_linear_level(context, stage, level_index, fixed_level, moving_level,
                                               geometry.linear_matrix_lps(start), level_report, where)
            start = geometry.affine_from_matrix_lps(matrix)
            transform = (_as_rigid(start, context.center) if stage["transform"] == "rigid" else None) \
                or _as_affine(start, context.center)
            after = None
        else:
            if optimizer["name"] == "lbfgs":  # a deformable initial transform: ITK handles the composition
                optimizer = stage_with_defaults({"optimizer": {"name": "regular_step"}})["optimizer"]
            info = _itk_linear_level(context, stage, level_index, fixed_level, moving_level, optimizer, transform,
                                     after, level_report, where)
        info.update({"shrink": shrink, "spacing_mm": round(spacing, 4),
                     "seconds": round(time.perf_counter() - level_started, 3)})
        levels.append(info)
    result = transform if after is None else compose(after, transform)
    if result.IsLinear():
        result = _as_affine(result, context.center)
    return result, levels


def _itk_linear_level(context: _Context, stage: dict, level_index: int, fixed_level: sitk.Image,
                      moving_level: sitk.Image, optimizer: dict, transform: sitk.Transform,
                      after: Optional[sitk.Transform], report: ProgressReporter, where: str) -> dict:
    """One pyramid level with SimpleITK's ImageRegistrationMethod; ``transform`` is updated in place."""
    iterations = int(stage["iterations"][level_index])
    shrink = int(stage["shrink_factors"][level_index])
    method = sitk.ImageRegistrationMethod()
    _set_metric(method, stage["metric"], stage["histogram_bins"])
    # ITKv4 prepares every voxel of the virtual domain at each Execute (0.25 s at 8.7 M voxels): sample
    # fine levels on a coarser virtual grid; the points are jittered and the images interpolated there,
    # so the metric still sees the level's full resolution.
    virtual = context.fixed.level(max(shrink, context.fixed.shrink_for(_MAX_VIRTUAL_VOXELS)), 0.0)
    if virtual is not fixed_level:
        method.SetVirtualDomainFromImage(virtual)
    sampling = "random" if virtual is not fixed_level and stage["sampling"] == "all" else stage["sampling"]
    _set_sampling(method, sampling, int(stage["samples"][level_index]), virtual, context.mask_fraction,
                  context.parameters.seed + level_index)
    _set_masks(method, context)
    _set_linear_optimizer(method, optimizer, iterations, float(min(fixed_level.GetSpacing())))
    method.SetInitialTransform(transform, inPlace=True)
    if after is not None:
        method.SetMovingInitialTransform(after)
    cancelled = []

    def on_iteration():
        try:
            iteration = method.GetOptimizerIteration()
            report(min(1.0, (iteration + 1) / iterations),
                   f"{where}: iteration {iteration + 1}, metric {method.GetMetricValue():.5g}")
        except OperationCancelled:
            cancelled.append(True)
            method.StopRegistration()

    method.AddCommand(sitk.sitkIterationEvent, on_iteration)
    report(0.0, f"{where}: start")
    try:
        method.Execute(fixed_level, moving_level)
    except RuntimeError as error:
        if _outside_error(error):
            raise RegistrationFailed(context.subject("moving"),
                                     f"registration failed at {where}: the optimization moved the images apart "
                                     "(diverged); try another --init or a smaller step") from None
        raise
    if cancelled:
        raise OperationCancelled("registration cancelled by the user")
    return {"engine": "simpleitk", "optimizer": optimizer["name"], "iterations": int(method.GetOptimizerIteration()),
            "metric": round(float(method.GetMetricValue()), 6),
            "stop": method.GetOptimizerStopConditionDescription()[:160]}


# --- PyTorch levels (linear refinement and B-spline) ------------------------------------------------

def bspline_grid(image: sitk.Image, mesh: Sequence[int]) -> sitk.BSplineTransform:
    """Cubic B-spline transform (zero displacement) whose domain is the image's voxel extent.

    The control-point grid has the image's direction, ``mesh[a]`` intervals along each image
    axis a, and one extra control point before and two after (ITK's layout for order 3), so
    the mesh can be refined exactly by doubling ``mesh``.
    """
    mesh = np.asarray(mesh, dtype=int)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    extent = np.array(image.GetSize()) * spacing
    grid_spacing = extent / mesh
    corner = np.array(image.GetOrigin()) - direction @ (spacing / 2.0)
    origin = corner - direction @ grid_spacing
    transform = sitk.BSplineTransform(3, 3)
    transform.SetFixedParameters([*(mesh + 3).astype(float), *origin, *grid_spacing, *direction.ravel()])
    return transform


def refine_bspline_coefficients(coefficients: np.ndarray) -> np.ndarray:
    """Exact refinement (knot insertion) of cubic B-spline coefficients: each mesh interval is halved.

    ``coefficients`` has shape (3, Sz, Sy, Sx) with S = mesh + 3 per axis (ITK layout); the result
    has S' = 2 * mesh + 3 and describes the same displacement field on the domain.
    """
    result = np.asarray(coefficients, dtype=float)
    for axis in (1, 2, 3):
        moved = np.moveaxis(result, axis, 0)
        mesh = moved.shape[0] - 3
        fine = np.zeros((2 * mesh + 3,) + moved.shape[1:])
        # fine point 2j-1 coincides with coarse point j; even fine points sit half-way
        fine[1:2 * mesh + 2:2] = (moved[0:mesh + 1] + 6.0 * moved[1:mesh + 2] + moved[2:mesh + 3]) / 8.0
        fine[0:2 * mesh + 3:2] = (moved[0:mesh + 2] + moved[1:mesh + 3]) / 2.0
        result = np.moveaxis(fine, 0, axis)
    return np.ascontiguousarray(result)


def _cubic_bspline(distance: np.ndarray) -> np.ndarray:
    d = np.abs(distance)
    return np.where(d < 1.0, (4.0 - 6.0 * d ** 2 + 3.0 * d ** 3) / 6.0, np.where(d < 2.0, (2.0 - d) ** 3 / 6.0, 0.0))


def _mesh_per_level(image: sitk.Image, stage: dict) -> List[np.ndarray]:
    extent = np.array(image.GetSize()) * np.array(image.GetSpacing())
    schedule = [int(v) for v in stage["grid_schedule"]]
    coarse = np.maximum(1, np.round(extent / (float(stage["grid_spacing_mm"]) * schedule[0]))).astype(int)
    return [coarse * (schedule[0] // s) for s in schedule]


def _run_bspline_stage(context: _Context, stage: dict, current: sitk.Transform, report: ProgressReporter,
                       label: str) -> Tuple[sitk.Transform, List[dict]]:
    if not current.IsLinear():
        raise InputError(context.subject("moving"), "a B-spline stage needs a linear transform before it "
                                                    "(the initial transform is deformable)")
    linear = geometry.linear_matrix_lps(current)
    fixed_full = context.fixed.image
    meshes = _mesh_per_level(fixed_full, stage)
    coefficients = None
    bspline = None
    levels = []
    count = len(stage["shrink_factors"])
    for level_index, shrink, fixed_level, moving_level in _pyramid_levels(context, stage):
        level_started = time.perf_counter()
        mesh = meshes[level_index]
        bspline = bspline_grid(fixed_full, mesh)
        shape = (3,) + tuple(int(v) for v in (mesh + 3)[::-1])
        if coefficients is None:
            coefficients = np.zeros(shape)
        while coefficients.shape != shape:
            coefficients = refine_bspline_coefficients(coefficients)
        level_report = report.sub(level_index / count, (level_index + 1) / count)
        where = f"{label} level {level_index + 1}/{count} ({min(fixed_level.GetSpacing()):.3g} mm, " \
                f"grid {'x'.join(str(int(m)) for m in mesh)})"
        coefficients, info = _torch_bspline_level(context, stage, level_index, fixed_level, moving_level, bspline,
                                                  coefficients, linear, level_report, where)
        info.update({"shrink": shrink, "spacing_mm": round(float(min(fixed_level.GetSpacing())), 4),
                     "grid": [int(m) for m in mesh], "seconds": round(time.perf_counter() - level_started, 3)})
        levels.append(info)
    bspline.SetParameters(coefficients.ravel().astype(float).tolist())
    affine = _as_affine(current, context.center)
    return sitk.CompositeTransform([affine, bspline]), levels


class _TorchMetric:
    """Mattes MI / mean squares / correlation on sample values, weighted by validity (PyTorch).

    Mattes MI as in ITK: a zero-order (box) Parzen window for the fixed intensities and a cubic
    B-spline window for the moving ones, two padding bins on each side.
    """

    def __init__(self, torch, metric: str, bins: int, fixed_values, moving_range: Tuple[float, float], weights):
        self.torch = torch
        self.metric = metric
        self.bins = int(bins)
        self.weights = weights
        self.fixed = fixed_values
        if metric == "mi":
            valid = fixed_values[weights > 0]
            low, high = float(valid.min()), float(valid.max())
            size = max(high - low, 1e-12) / (self.bins - 4)
            self.fixed_bin = torch.clamp(torch.floor((fixed_values - low) / size + 2.0), 2, self.bins - 3).long()
            self.moving_low = float(moving_range[0])
            self.moving_size = max(float(moving_range[1]) - self.moving_low, 1e-12) / (self.bins - 4)
            self.offsets = torch.arange(4, dtype=fixed_values.dtype)
            self.offsets_long = torch.arange(4)

    def __call__(self, moving_values, valid):
        torch = self.torch
        weights = self.weights * valid
        total = weights.sum()
        if float(total) <= 0:
            raise _AllOutside()
        if self.metric == "mse":
            return (weights * (moving_values - self.fixed) ** 2).sum() / total
        if self.metric == "ncc":
            mean_f = (weights * self.fixed).sum() / total
            mean_m = (weights * moving_values).sum() / total
            df, dm = self.fixed - mean_f, moving_values - mean_m
            covariance = (weights * df * dm).sum()
            return -covariance / torch.sqrt((weights * df * df).sum() * (weights * dm * dm).sum() + 1e-12)
        position = torch.clamp((moving_values - self.moving_low) / self.moving_size + 2.0, 2.0, self.bins - 2 - 1e-4)
        start = torch.floor(position).detach() - 1.0
        distance = (position[:, None] - (start[:, None] + self.offsets)).abs()
        kernel = torch.where(distance < 1.0, (4.0 - 6.0 * distance ** 2 + 3.0 * distance ** 3) / 6.0,
                             torch.clamp(2.0 - distance, min=0.0) ** 3 / 6.0)
        index = (self.fixed_bin[:, None] * self.bins + start.long()[:, None] + self.offsets_long).reshape(-1)
        joint = torch.zeros(self.bins * self.bins, dtype=kernel.dtype).index_add(
            0, index, (kernel * weights[:, None]).reshape(-1)).reshape(self.bins, self.bins) / total
        fixed_marginal = joint.sum(dim=1, keepdim=True)
        moving_marginal = joint.sum(dim=0, keepdim=True)
        return -(joint * torch.log((joint + 1e-12) / (fixed_marginal * moving_marginal + 1e-12))).sum()


class _AllOutside(Exception):
    pass


class _TorchLevel:
    """Sample points of the fixed level, their fixed values and the moving level as tensors, and an
    L-BFGS loop over any differentiable map from the points to moving-space LPS points."""

    def __init__(self, context: _Context, stage: dict, level_index: int, fixed_level: sitk.Image,
                 moving_level: sitk.Image, points_lps: np.ndarray, where: str):
        import torch

        self.torch = torch
        self.context, self.stage, self.level_index, self.where = context, stage, level_index, where
        functional = torch.nn.functional
        self.points = points_lps
        count = len(points_lps)
        threads = int(context.parameters.threads or os.cpu_count() or 1)
        if context.torch_threads is None:  # restored when the registration ends
            context.torch_threads = torch.get_num_threads()
        # below ~100k samples the per-operation thread synchronisation costs more than it saves
        torch.set_num_threads(max(1, min(threads, count // 100000)))

        to_fixed_index = np.linalg.inv(geometry.ijk_to_lps(fixed_level))
        fixed_index = points_lps @ to_fixed_index[:3, :3].T + to_fixed_index[:3, 3]
        fixed_volume = torch.from_numpy(np.array(geometry.array_view(fixed_level), dtype=np.float32))[None, None]
        fixed_size = np.array(fixed_level.GetSize(), dtype=float)
        normalized = torch.from_numpy((fixed_index / np.maximum(fixed_size - 1, 1) * 2.0 - 1.0).astype(np.float32))
        fixed_values = functional.grid_sample(fixed_volume, normalized.view(1, -1, 1, 1, 3), mode="bilinear",
                                              align_corners=True).view(-1)
        weights = torch.ones(count)
        if context.fixed_mask is not None:
            weights = torch.from_numpy(_inside_mask(context.fixed_mask, points_lps).astype(np.float32))
        if float(weights.sum()) < 10:
            raise InputError(context.subject("fixed_mask"),
                             f"{where}: fewer than 10 sample points inside the fixed mask")

        moving_array = geometry.array_view(moving_level)
        self.moving_volume = torch.from_numpy(np.array(moving_array, dtype=np.float32))[None, None]
        moving_size = np.array(moving_level.GetSize(), dtype=float)
        self.to_moving_index = np.linalg.inv(geometry.ijk_to_lps(moving_level))
        self.upper = torch.from_numpy(moving_size - 1.0).float()
        self.scale = torch.from_numpy(2.0 / np.maximum(moving_size - 1.0, 1.0)).float()
        self.moving_mask_volume = None
        if context.moving_mask is not None:
            mask_level = sitk.Resample(context.moving_mask, moving_level, sitk.Transform(), sitk.sitkNearestNeighbor,
                                       0, sitk.sitkUInt8)
            self.moving_mask_volume = torch.from_numpy(geometry.array_view(mask_level).astype(np.float32))[None, None]
        self.metric = _TorchMetric(torch, stage["metric"], stage["histogram_bins"], fixed_values,
                                   (float(moving_array.min()), float(moving_array.max())), weights)

    def evaluate(self, moving_index):
        """Metric of the moving image at (N, 3) continuous moving-level indices (differentiable)."""
        functional = self.torch.nn.functional
        valid = ((moving_index >= 0) & (moving_index <= self.upper)).all(dim=1).float().detach()
        grid = (moving_index * self.scale - 1.0).view(1, -1, 1, 1, 3)
        values = functional.grid_sample(self.moving_volume, grid, mode="bilinear", align_corners=True).view(-1)
        if self.moving_mask_volume is not None:
            inside = functional.grid_sample(self.moving_mask_volume, grid.detach(), mode="nearest", align_corners=True)
            valid = valid * inside.view(-1)
        return self.metric(values, valid)

    def optimize(self, parameters, moving_index_of, report: ProgressReporter) -> Tuple[float, float, dict]:
        """L-BFGS on ``parameters`` (a tensor); ``moving_index_of()`` maps the points with them.

        Returns (initial metric, final metric, info); ``parameters`` holds the result.
        """
        torch = self.torch
        settings = _level_optimizer(self.stage, self.level_index)
        iterations = int(self.stage["iterations"][self.level_index])
        optimizer = torch.optim.LBFGS([parameters], lr=1.0, max_iter=iterations, max_eval=int(iterations * 1.25) + 1,
                                      history_size=int(settings.get("history", 10)), tolerance_grad=1e-9,
                                      tolerance_change=float(settings.get("tolerance_change", 1e-7)),
                                      line_search_fn="strong_wolfe")
        state = {"evaluations": 0, "value": float("nan")}

        def closure():
            report(min(1.0, state["evaluations"] / (iterations * 1.25 + 1)),
                   f"{self.where}: evaluation {state['evaluations'] + 1}, metric {state['value']:.5g}")
            optimizer.zero_grad()
            value = self.evaluate(moving_index_of())
            value.backward()
            state["evaluations"] += 1
            state["value"] = float(value.detach())
            return value

        report(0.0, f"{self.where}: start ({len(self.points)} samples)")
        start = parameters.detach().clone()
        try:
            with torch.no_grad():
                initial = float(self.evaluate(moving_index_of()))
            optimizer.step(closure)
            with torch.no_grad():
                final = float(self.evaluate(moving_index_of()))
        except _AllOutside:
            raise RegistrationFailed(self.context.subject("moving"),
                                     f"registration failed at {self.where}: every sample maps outside the moving "
                                     "image (diverged)") from None
        if not torch.isfinite(parameters).all() or not math.isfinite(final):
            raise RegistrationFailed(self.context.subject("moving"), f"registration failed at {self.where}: the "
                                                                     "optimization diverged (non-finite parameters)")
        if final > initial:  # L-BFGS made it worse: keep the level's start
            with torch.no_grad():
                parameters.copy_(start)
            final = initial
        info = {"engine": "pytorch", "optimizer": "lbfgs",
                "iterations": int(optimizer.state[parameters].get("n_iter", 0)),
                "evaluations": state["evaluations"], "metric": round(final, 6), "samples": len(self.points)}
        return initial, final, info


def _inside_mask(mask: sitk.Image, points_lps: np.ndarray) -> np.ndarray:
    """Boolean (N,) of points whose nearest mask voxel is non-zero (outside the grid: False)."""
    to_index = np.linalg.inv(geometry.ijk_to_lps(mask))
    index = np.rint(points_lps @ to_index[:3, :3].T + to_index[:3, 3]).astype(int)
    size = np.array(mask.GetSize())
    inside = np.all((index >= 0) & (index < size), axis=1)
    result = np.zeros(len(points_lps), dtype=bool)
    array = geometry.array_view(mask)
    kept = index[inside]
    result[inside] = array[kept[:, 2], kept[:, 1], kept[:, 0]] > 0
    return result


def _random_points(context: _Context, fixed_level: sitk.Image, count: int, seed: int) -> np.ndarray:
    """``count`` points (LPS) at uniformly random positions of the fixed level (inside the fixed mask)."""
    rng = np.random.default_rng(seed)
    size = np.array(fixed_level.GetSize(), dtype=float)
    matrix = geometry.ijk_to_lps(fixed_level)
    kept = []
    total = 0
    for _ in range(50):
        draw = max(count, int(1.5 * (count - total) / max(context.mask_fraction, 1e-3)))
        index = rng.uniform(0.0, 1.0, size=(draw, 3)) * (size - 1)
        points = index @ matrix[:3, :3].T + matrix[:3, 3]
        if context.fixed_mask is not None:
            points = points[_inside_mask(context.fixed_mask, points)]
        kept.append(points)
        total += len(points)
        if total >= count:
            break
    points = np.concatenate(kept)[:count]
    # memory order (k, j, i) keeps the interpolation's reads local: several times faster at 1 mm
    index = np.rint((points - matrix[:3, 3]) @ np.linalg.inv(matrix[:3, :3]).T).astype(np.int64)
    return points[np.lexsort((index[:, 0], index[:, 1], index[:, 2]))]


def _rotation_matrix(torch, rotation_vector):
    """Rodrigues' formula, differentiable at zero."""
    angle_squared = (rotation_vector * rotation_vector).sum()
    zero = rotation_vector.new_zeros(())
    x, y, z = rotation_vector
    cross = torch.stack([torch.stack([zero, -z, y]), torch.stack([z, zero, -x]), torch.stack([-y, x, zero])])
    angle = torch.sqrt(angle_squared + 1e-30)
    sine = torch.where(angle_squared > 1e-12, torch.sin(angle) / angle, 1.0 - angle_squared / 6.0)
    cosine = torch.where(angle_squared > 1e-12, (1.0 - torch.cos(angle)) / (angle_squared + 1e-30),
                         0.5 - angle_squared / 24.0)
    return torch.eye(3, dtype=rotation_vector.dtype) + sine * cross + cosine * (cross @ cross)


def _torch_linear_level(context: _Context, stage: dict, level_index: int, fixed_level: sitk.Image,
                        moving_level: sitk.Image, matrix: np.ndarray, report: ProgressReporter,
                        where: str) -> Tuple[np.ndarray, dict]:
    """Refine a linear fixed -> moving matrix (4x4, LPS) at one level with L-BFGS in PyTorch.

    Random continuous sample positions (the fixed image is interpolated too), like elastix's
    random-coordinate sampler. Parameters are scaled so that one unit moves points about 1 mm.
    """
    points = _random_points(context, fixed_level, int(stage["samples"][level_index]),
                            context.parameters.seed + 10 + level_index)
    level = _TorchLevel(context, stage, level_index, fixed_level, moving_level, points, where)
    torch = level.torch
    center = np.asarray(context.center, dtype=float)
    radius = float(max(np.sqrt(((points - center) ** 2).sum(axis=1).mean()), 1.0))
    centered = torch.from_numpy(points - center).float()
    # moving index = N (M0 (x - c) + M0 c + t0 + dt) + n  with N, n: LPS -> moving level index
    to_index = level.to_moving_index
    linear0 = torch.from_numpy(matrix[:3, :3]).float()
    offset0 = torch.from_numpy(matrix[:3, :3] @ center + matrix[:3, 3]).float()
    to_index_linear = torch.from_numpy(to_index[:3, :3]).float()
    to_index_offset = torch.from_numpy(to_index[:3, 3]).float()
    rigid = stage["transform"] == "rigid"
    parameters = torch.zeros(6 if rigid else 12, dtype=torch.float32, requires_grad=True)

    def linear_part():
        if rigid:
            return _rotation_matrix(torch, parameters[:3] / radius) @ linear0, parameters[3:]
        return linear0 + parameters[:9].reshape(3, 3) / radius, parameters[9:]

    def moving_index_of():
        linear, translation = linear_part()
        mapped = centered @ linear.T + offset0 + translation
        return mapped @ to_index_linear.T + to_index_offset

    initial, final, info = level.optimize(parameters, moving_index_of, report)
    with torch.no_grad():
        linear, translation = linear_part()
    linear = linear.detach().double().numpy()
    result = np.eye(4)
    result[:3, :3] = linear
    result[:3, 3] = matrix[:3, :3] @ center + matrix[:3, 3] + translation.detach().double().numpy() - linear @ center
    if rigid:  # float32 rotation: re-orthonormalize
        u, _, vt = np.linalg.svd(result[:3, :3])
        rotation = u @ vt
        result[:3, 3] += (result[:3, :3] - rotation) @ center
        result[:3, :3] = rotation
    return result, info


def _lattice(image: sitk.Image, samples: int, strategy: str, rng: np.random.Generator) -> List[np.ndarray]:
    """Continuous voxel indices along each axis of a regular lattice with ~``samples`` points."""
    size = np.array(image.GetSize())
    total = float(np.prod(size))
    step = 1.0 if strategy == "all" else max(1.0, (total / max(samples, 1)) ** (1.0 / 3.0))
    offsets = rng.uniform(0.0, step, size=3) if step > 1.0 else np.zeros(3)
    return [np.arange(offset, n - 1 + 1e-9, step) for offset, n in zip(offsets, size)]


def _torch_bspline_level(context: _Context, stage: dict, level_index: int, fixed_level: sitk.Image,
                         moving_level: sitk.Image, bspline: sitk.BSplineTransform, coefficients: np.ndarray,
                         linear: np.ndarray, report: ProgressReporter, where: str) -> Tuple[np.ndarray, dict]:
    """Optimize B-spline coefficients (3, Sz, Sy, Sx) at one level on a regular sample lattice.

    On a lattice aligned with the control-point grid the cubic B-spline is separable: the
    displacement of every lattice point is three small matrix products.
    """
    rng = np.random.default_rng(context.parameters.seed + 100 + level_index)
    axes = _lattice(fixed_level, int(stage["samples"][level_index]), stage["sampling"], rng)
    fixed_params = np.array(bspline.GetFixedParameters())
    grid_size = fixed_params[0:3].astype(int)
    grid_origin, grid_spacing = fixed_params[3:6], fixed_params[6:9]
    grid_direction = fixed_params[9:18].reshape(3, 3)
    level_matrix = geometry.ijk_to_lps(fixed_level)
    grid_i, grid_j, grid_k = np.meshgrid(axes[0], axes[1], axes[2], indexing="ij")
    lattice = np.stack([grid_i, grid_j, grid_k], axis=-1).reshape(-1, 3)
    points = lattice @ level_matrix[:3, :3].T + level_matrix[:3, 3]
    level = _TorchLevel(context, stage, level_index, fixed_level, moving_level, points, where)
    torch = level.torch

    # continuous control-point index along each axis (the level's axes are the grid's axes)
    start_index = grid_direction.T @ (level_matrix[:3, 3] - grid_origin) / grid_spacing
    basis = []
    for axis in range(3):
        u = start_index[axis] + axes[axis] * fixed_level.GetSpacing()[axis] / grid_spacing[axis]
        weights = _cubic_bspline(u[:, None] - np.arange(grid_size[axis])[None, :]).T  # (S_a, G_a)
        basis.append(torch.from_numpy(np.ascontiguousarray(weights)).float())
    basis_x, basis_y, basis_z = basis
    to_moving_index = level.to_moving_index @ linear  # LPS after the B-spline -> moving level index
    linear_part = torch.from_numpy(to_moving_index[:3, :3].T.copy()).float()
    base = torch.from_numpy(points @ to_moving_index[:3, :3].T + to_moving_index[:3, 3]).float()
    parameters = torch.tensor(coefficients, dtype=torch.float32, requires_grad=True)  # (3, Sz, Sy, Sx)

    def moving_index_of():
        # separable cubic B-spline: (3, Sz, Sy, Sx) -> (3, Gi, Gj, Gk) -> (N, 3) in lattice order (i slowest)
        d = parameters @ basis_x  # (3, Sz, Sy, Gi)
        d = d.transpose(2, 3) @ basis_y  # (3, Sz, Gi, Gj)
        d = d.permute(0, 2, 3, 1) @ basis_z  # (3, Gi, Gj, Gk)
        return base + d.permute(1, 2, 3, 0).reshape(-1, 3) @ linear_part

    initial, final, info = level.optimize(parameters, moving_index_of, report)
    return parameters.detach().double().numpy(), info


# --- files ---------------------------------------------------------------------------------------------

def check_transform_path(path: "str | os.PathLike") -> Path:
    """An output transform path with a suffix ITK writes (.tfm/.txt text, .h5/.hdf5 binary)."""
    path = Path(path)
    suffix = output_suffix(path)
    if suffix not in TRANSFORM_SUFFIXES:
        raise InputError(path, f"unsupported transform extension '{suffix}' (use .tfm or .h5)")
    return path


def write_transform(transform: sitk.Transform, path: "str | os.PathLike", provenance: Optional[dict] = None) -> Path:
    """Write an ITK transform file (fixed -> moving, LPS) atomically, with an optional provenance sidecar."""
    path = check_transform_path(path)
    with atomic_output(path) as tmp:
        sitk.WriteTransform(transform, str(tmp))
        if provenance is not None:
            with atomic_output(sidecar_path(path)) as tmp_sidecar:
                tmp_sidecar.write_text(json.dumps(provenance, indent=2, sort_keys=True, default=str))
    return path


__all__ = [
    "RegistrationParameters", "RegistrationResult", "RegistrationFailed", "register_images", "resolve_stages",
    "load_preset", "check_inputs", "check_file_dimensions", "resample_moving", "write_transform", "read_transform",
    "mask_dice",
    "checkerboard_image", "difference_image", "landmark_transform", "overlap_fraction", "bspline_grid",
    "refine_bspline_coefficients", "compose", "PRESETS", "METRICS",
]
