"""Registration presets, as data.

A preset is a list of **stages** run in order; each stage refines the transform the
previous stages found (fixed -> moving, LPS). ``RegistrationParameters.overrides`` and
``--metric`` change any key without editing this file, and ``--preset FILE.json`` reads a
preset of the same shape (``{"description": ..., "stages": [...]}``) from disk.

Stage keys (every key has the default in :data:`STAGE_DEFAULTS`; lists have one entry per
pyramid level, coarse to fine):

``transform``
    ``"rigid"`` (ITK Euler3DTransform), ``"affine"`` (AffineTransform) or ``"bspline"``
    (cubic BSplineTransform on the fixed image's domain, composed after the linear result).
``metric``
    ``"mi"`` Mattes mutual information (default: works within and across modalities),
    ``"mse"`` mean squares (same modality, same intensity scale), ``"ncc"`` normalized
    correlation (same modality, linear intensity change).
``histogram_bins``
    Mattes MI histogram bins.
``shrink_factors``
    Pyramid: each level is the image block-averaged by this factor (in voxels of the finest
    spacing; anisotropic axes shrink less so levels become near-isotropic).
``smoothing_sigmas_mm``
    Gaussian smoothing (sigma, mm) applied to each level after shrinking.
``sampling``
    ``"random"`` (random voxel positions, jittered), ``"regular"`` (a lattice with a random
    offset) or ``"all"`` (every voxel). The point set is drawn once per level.
``samples``
    Number of metric samples per level (inside the fixed mask when one is given).
``iterations``
    Maximum optimizer iterations per level.
``optimizer``
    One object for every level, or a list with one per level (a list of another length gives
    its first entry to the first level and its last entry to the others); missing settings come
    from :data:`OPTIMIZER_DEFAULTS`. Linear stages (SimpleITK, parameter scales from physical shifts):
    ``conjugate_gradient`` (line search; robust far from the optimum: first level),
    ``regular_step`` (one metric evaluation per iteration; fast near the optimum: finer levels;
    ``learning_rate`` is the first step in voxels of the level), ``gradient_descent``, or
    ``lbfgs``: the level runs in PyTorch on random continuous sample positions (cheaper per
    sample, so more samples for the same time, but the first use imports PyTorch, ~1.5 s).
    B-spline stage: ``lbfgs`` (PyTorch L-BFGS with a strong-Wolfe line search).
``grid_spacing_mm`` (bspline)
    Control-point spacing at the finest level (mm).
``grid_schedule`` (bspline)
    Control-point spacing per level as multiples of ``grid_spacing_mm`` (powers of two,
    e.g. ``[4, 2, 1]``); the mesh is refined exactly (knot insertion) between levels.

Initialization is not part of a preset: see ``RegistrationParameters.init``.
"""

from __future__ import annotations

import copy

OPTIMIZER_DEFAULTS = {
    "conjugate_gradient": {"name": "conjugate_gradient", "max_step_voxels": 0.75, "convergence_minimum": 1e-6,
                           "convergence_window": 10, "line_search_iterations": 20},
    "regular_step": {"name": "regular_step", "learning_rate": 0.25, "min_step": 1e-3, "relaxation": 0.5,
                     "gradient_tolerance": 1e-8},
    "gradient_descent": {"name": "gradient_descent", "learning_rate": 1.0, "estimate_learning_rate": "once",
                         "max_step_voxels": 1.0, "convergence_minimum": 1e-6, "convergence_window": 10},
    "lbfgs": {"name": "lbfgs", "history": 10, "tolerance_change": 1e-7},
}

# Conjugate gradient where the images may still be far apart, one-evaluation steps once close.
_LINEAR_OPTIMIZERS = [{"name": "conjugate_gradient"}, {"name": "regular_step"}, {"name": "regular_step"}]

STAGE_DEFAULTS = {
    "transform": "rigid",
    "metric": "mi",
    "histogram_bins": 32,
    "shrink_factors": [4, 2, 1],
    "smoothing_sigmas_mm": [1.0, 0.5, 0.0],
    "sampling": "random",
    "samples": [5000, 10000, 20000],
    "iterations": [100, 100, 50],
    "optimizer": _LINEAR_OPTIMIZERS,
}

BSPLINE_DEFAULTS = {
    "transform": "bspline",
    "sampling": "regular",
    "samples": [20000, 40000, 80000],
    "iterations": [50, 50, 30],
    "optimizer": {"name": "lbfgs"},
    "grid_spacing_mm": 20.0,
    "grid_schedule": [4, 2, 1],
}

_RIGID = {"transform": "rigid"}
_AFFINE = {"transform": "affine"}
# The linear stage in front of a B-spline only has to bring the images close: two levels.
_AFFINE_COARSE = {"transform": "affine", "shrink_factors": [4, 2], "smoothing_sigmas_mm": [1.0, 0.5],
                  "samples": [5000, 10000], "iterations": [100, 100], "optimizer": _LINEAR_OPTIMIZERS[:2]}
_RIGID_COARSE = {"transform": "rigid", "shrink_factors": [4, 2], "smoothing_sigmas_mm": [1.0, 0.5],
                 "samples": [5000, 10000], "iterations": [100, 100], "optimizer": _LINEAR_OPTIMIZERS[:2]}
_BSPLINE = {"transform": "bspline"}

METRICS = ("mi", "mse", "ncc")

PRESETS = {
    "rigid": {
        "description": "Rigid (6 degrees of freedom): same subject, any modality. 3-level pyramid, Mattes MI.",
        "stages": [_RIGID],
    },
    "affine": {
        "description": "Affine (12 degrees of freedom): scaling and shear, e.g. subject to template.",
        "stages": [_AFFINE],
    },
    "bspline": {
        "description": "Deformable: a coarse affine stage, then a cubic B-spline refined from 80 to 20 mm "
                       "control-point spacing.",
        "stages": [_AFFINE_COARSE, _BSPLINE],
    },
    "rigid+affine+bspline": {
        "description": "Chain for large differences: rigid, then affine, then B-spline.",
        "stages": [_RIGID_COARSE, _AFFINE_COARSE, _BSPLINE],
    },
}


def preset_names() -> list:
    return list(PRESETS)


def optimizer_with_defaults(optimizer: dict) -> dict:
    """An optimizer setting completed from :data:`OPTIMIZER_DEFAULTS` (unknown names kept as given)."""
    return {**copy.deepcopy(OPTIMIZER_DEFAULTS.get(optimizer.get("name"), {})), **copy.deepcopy(optimizer)}


def merge_optimizer(base, change):
    """Apply an override (object for every level, or list per level) to a stage's optimizer setting."""
    if isinstance(change, list):
        return copy.deepcopy(change)
    if isinstance(base, list):
        return [merge_optimizer(level, change) for level in base]
    if "name" in change and change["name"] != base.get("name"):
        return copy.deepcopy(change)
    return {**base, **change}


def stage_with_defaults(stage: dict) -> dict:
    """A stage with every key filled in from the defaults of its transform type."""
    base = copy.deepcopy(STAGE_DEFAULTS)
    if stage.get("transform") == "bspline":
        base.update(copy.deepcopy(BSPLINE_DEFAULTS))
    for key, value in stage.items():
        base[key] = copy.deepcopy(value)
    optimizer = base["optimizer"]
    if isinstance(optimizer, list):
        base["optimizer"] = [optimizer_with_defaults(o) for o in optimizer]
    elif isinstance(optimizer, dict):
        base["optimizer"] = optimizer_with_defaults(optimizer)
    return base
