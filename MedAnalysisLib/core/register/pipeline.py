"""``register_images``: checks, initialization, the stages in order, then QA."""

from __future__ import annotations

import os
import time
from typing import Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..progress import ProgressReporter
from .context import _Context
from .itk_engine import _evaluate_metric, _initialize, _run_linear_stage
from .parameters import RegistrationFailed, RegistrationParameters, check_inputs, mask_on_grid, resolve_stages
from .qa import RegistrationResult, _check_overlap, checkerboard_image, difference_image, mask_dice, resample_moving
from .torch_engine import _run_bspline_stage


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
        raise InputError("threads", f"must be at least 1, got {threads}")
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
            raise RegistrationFailed(context.subject("pair"),
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
