"""Image registration: rigid, affine and B-spline stages, fixed -> moving transforms in LPS.

The result is an ITK transform that maps points of the **fixed** image to the **moving**
image (LPS, mm): resampling the moving image through it onto the fixed grid aligns the two,
and SimpleITK / Slicer read it from ``.tfm`` / ``.h5`` files. Chains of linear stages are
collapsed into one ``AffineTransform``; a deformable result is a ``CompositeTransform``
``[affine, bspline]`` (the B-spline applies first, in fixed space).

Stages come from presets (data, :mod:`MedAnalysisLib.core.register_presets`). Each stage runs
on a shared image pyramid, with a fixed random or regular point set per level so that the
metric is deterministic and the optimizer can use line searches. Engines were chosen by
measurement (Testing/Benchmarks/bench_register.py).

Modules, by responsibility:

* :mod:`.parameters`: :class:`RegistrationParameters`, presets in use, stage validation, input checks;
* :mod:`.pipeline`: :func:`register_images` (checks, initialization, stages, QA);
* :mod:`.itk_engine`: SimpleITK initialization, rotation search and linear stages;
* :mod:`.torch_engine`: B-spline stages and L-BFGS levels in PyTorch;
* :mod:`.context`: image pyramids and the state shared by the engines;
* :mod:`.qa`: :class:`RegistrationResult`, overlap, mask Dice, resampling, QA images;
* :mod:`.transforms`: transform conversion and composition, landmarks, B-spline grids, files.

World <-> voxel index conversions go through :mod:`MedAnalysisLib.core.geometry`.
Every name is re-exported here: ``from MedAnalysisLib.core.register import ...`` keeps working.
"""

from __future__ import annotations

from .. import geometry  # noqa: F401
from ..errors import InputError, OperationCancelled  # noqa: F401
from ..progress import ProgressReporter, atomic_output, output_suffix  # noqa: F401
from ..provenance import sidecar_path  # noqa: F401
from ..register_presets import METRICS, PRESETS, STAGE_DEFAULTS, merge_optimizer, stage_with_defaults  # noqa: F401
from .context import _Context, _level_optimizer, _Pyramid, _pyramid_levels  # noqa: F401
from .itk_engine import (  # noqa: F401
    _MAX_VIRTUAL_VOXELS, _evaluate_metric, _initialize, _itk_linear_level, _linear_start, _outside_error,
    _rotation_search, _run_linear_stage, _set_linear_optimizer, _set_masks, _set_metric, _set_sampling)
from .parameters import (  # noqa: F401
    _STAGE_KEYS, INITIALIZATIONS, TRANSFORMS, RegistrationFailed, RegistrationParameters, _subject, _validate_stage,
    check_file_dimensions, check_inputs, load_preset, mask_on_grid, resolve_stages)
from .pipeline import register_images  # noqa: F401
from .qa import (  # noqa: F401
    _MIN_OVERLAP_FRACTION, INTERPOLATORS, RegistrationResult, _background, _check_overlap, _foreground_points,
    _normalized, checkerboard_image, difference_image, mask_dice, overlap_fraction, resample_moving)
from .torch_engine import (  # noqa: F401
    _AllOutside, _cubic_bspline, _inside_mask, _lattice, _mesh_per_level, _random_points, _rotation_matrix,
    _run_bspline_stage, _torch_bspline_level, _torch_linear_level, _TorchLevel, _TorchMetric)
from .transforms import (  # noqa: F401
    TRANSFORM_SUFFIXES, _as_affine, _as_rigid, _euler_angles, _identity, bspline_grid, check_transform_path, compose,
    landmark_transform, read_transform, refine_bspline_coefficients, transform_points, write_transform)

__all__ = [
    "RegistrationParameters", "RegistrationResult", "RegistrationFailed", "register_images", "resolve_stages",
    "load_preset", "check_inputs", "check_file_dimensions", "resample_moving", "write_transform", "read_transform",
    "mask_dice",
    "checkerboard_image", "difference_image", "landmark_transform", "overlap_fraction", "bspline_grid",
    "refine_bspline_coefficients", "compose", "PRESETS", "METRICS",
]
