"""The SimpleITK engine: initialization, rotation search, linear stages, metric evaluation.

Linear stages run SimpleITK's ``ImageRegistrationMethod`` (ITKv4) with the metric's gradient
computed at the sample points (no gradient images) and physical-shift parameter scales;
conjugate gradient with line search on the coarsest level (robust far from the optimum),
regular-step gradient descent (one evaluation per iteration) on the finer ones, whose
points are drawn on a coarser virtual grid (ITKv4 prepares every virtual voxel per run).
A level whose optimizer is ``lbfgs`` runs in PyTorch instead (:mod:`.torch_engine`), not the
default because importing PyTorch costs more than a whole rigid registration.
"""

from __future__ import annotations

import math
import time
from typing import List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .. import geometry
from ..errors import InputError, OperationCancelled
from ..progress import ProgressReporter
from ..register_presets import stage_with_defaults
from .context import _Context, _level_optimizer, _pyramid_levels
from .parameters import RegistrationFailed, mask_on_grid
from .qa import _background
from .torch_engine import _torch_linear_level
from .transforms import _as_affine, _as_rigid, _identity, compose, landmark_transform, read_transform

_MAX_VIRTUAL_VOXELS = 1.5e6


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
            raise RegistrationFailed(context.subject("pair"),
                                     f"registration failed at {where}: the optimization moved the images apart "
                                     "(diverged); try another --init or a smaller step") from None
        reason = " ".join(str(error).split("ERROR:")[-1].split())[:200]
        raise RegistrationFailed(context.subject("pair"), f"registration failed at {where}: ITK refused the "
                                                         f"inputs ({reason}); check the images and masks") from None
    if cancelled:
        raise OperationCancelled("registration cancelled by the user")
    return {"engine": "simpleitk", "optimizer": optimizer["name"], "iterations": int(method.GetOptimizerIteration()),
            "metric": round(float(method.GetMetricValue()), 6),
            "stop": method.GetOptimizerStopConditionDescription()[:160]}
