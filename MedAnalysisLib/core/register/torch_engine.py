"""The PyTorch engine: B-spline stages and L-BFGS levels of linear stages.

ITKv4 evaluates a B-spline metric derivative in O(samples x control points) (a dense Jacobian
per sample: about 1 s per evaluation for 20,000 samples and 4,000 parameters here; a
full-resolution run did not finish in minutes), so the B-spline stage evaluates the same
metrics (Mattes MI as ITK defines it, MSE, correlation) in PyTorch on a regular sample
lattice, where the cubic B-spline is separable (three small matrix products), optimizes with
L-BFGS, and refines the control-point grid exactly between levels. Its parameters are those
of an ITK ``BSplineTransform`` (same grid, same coefficient order). PyTorch is imported only
when a level runs here.
"""

from __future__ import annotations

import math
import os
import time
from typing import List, Tuple

import numpy as np
import SimpleITK as sitk

from .. import geometry
from ..errors import InputError
from ..progress import ProgressReporter
from .context import _Context, _level_optimizer, _pyramid_levels
from .parameters import RegistrationFailed
from .transforms import _as_affine, bspline_grid, refine_bspline_coefficients


# --- B-spline stage ---------------------------------------------------------------------------------

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


# --- PyTorch levels (linear refinement and B-spline) ------------------------------------------------

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

        fixed_index = geometry.world_to_index(fixed_level, points_lps)
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
        self.to_moving_index = geometry.lps_to_ijk(moving_level)
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
            raise RegistrationFailed(self.context.subject("pair"),
                                     f"registration failed at {self.where}: every sample maps outside the moving "
                                     "image (diverged)") from None
        if not torch.isfinite(parameters).all() or not math.isfinite(final):
            raise RegistrationFailed(self.context.subject("pair"), f"registration failed at {self.where}: the "
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
    index = np.rint(geometry.world_to_index(mask, points_lps)).astype(int)
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
    kept = []
    total = 0
    for _ in range(50):
        draw = max(count, int(1.5 * (count - total) / max(context.mask_fraction, 1e-3)))
        index = rng.uniform(0.0, 1.0, size=(draw, 3)) * (size - 1)
        points = geometry.index_to_world(fixed_level, index)
        if context.fixed_mask is not None:
            points = points[_inside_mask(context.fixed_mask, points)]
        kept.append(points)
        total += len(points)
        if total >= count:
            break
    points = np.concatenate(kept)[:count]
    # memory order (k, j, i) keeps the interpolation's reads local: several times faster at 1 mm
    index = np.rint(geometry.world_to_index(fixed_level, points)).astype(np.int64)
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
    grid_i, grid_j, grid_k = np.meshgrid(axes[0], axes[1], axes[2], indexing="ij")
    lattice = np.stack([grid_i, grid_j, grid_k], axis=-1).reshape(-1, 3)
    points = geometry.index_to_world(fixed_level, lattice)
    level = _TorchLevel(context, stage, level_index, fixed_level, moving_level, points, where)
    torch = level.torch

    # continuous control-point index along each axis (the level's axes are the grid's axes)
    control_grid = {"origin": grid_origin, "spacing": grid_spacing, "direction": grid_direction}
    start_index = geometry.world_to_index(control_grid, [fixed_level.GetOrigin()])[0]
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
