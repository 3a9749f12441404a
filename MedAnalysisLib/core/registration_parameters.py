"""What a registration takes, declared once (``core/parameters.option``); the panel, the logic,
the CLI options and the batch columns read this class. A light module (no image libraries), so
that the command-line parser can be built from it for every command. Stage resolution and input
checks live in :mod:`MedAnalysisLib.core.register.parameters`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

from .parameters import non_negative, option, positive, positive_int
from .register_presets import METRICS, PRESETS

TRANSFORMS = ("rigid", "affine", "bspline")
INITIALIZATIONS = ("geometry", "moments", "identity")


@dataclasses.dataclass
class RegistrationParameters:
    """Everything one registration needs; shared by the panel, logic, CLI and batch.

    Attributes:
        preset: preset name (``rigid``, ``affine``, ``bspline``, ``rigid+affine+bspline``) or the
            path of a JSON preset file with the same shape.
        metric: ``mi`` | ``mse`` | ``ncc`` for every stage; None keeps the preset's (Mattes MI).
        init: ``moments`` (centres of mass above the background, default), ``geometry`` (image
            centres), ``identity``, or the path of an ITK transform file (fixed -> moving, LPS).
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

    preset: str = option("rigid", "stages to run (or a .json preset file)", metavar="|".join(PRESETS),
                         column="registration_preset")
    metric: Optional[str] = option(None, "mi (Mattes mutual information, the presets' default), mse or ncc",
                                   choices=METRICS)
    init: str = option("moments", "initialization: image centres, centres of mass, or a transform file; append "
                                  "+search (e.g. moments+search) to also search large rotations",
                       metavar="geometry|moments|FILE", batch=False)
    rotation_search_deg: float = option(0.0, "rotation search range about each axis (0: off)", unit="deg",
                                        parse=non_negative, cli=False, batch=False)
    rotation_search_step_deg: float = option(15.0, "rotation search step", unit="deg", parse=positive, cli=False,
                                             batch=False)
    fixed_landmarks_lps: Optional[List[List[float]]] = option(None, "fixed landmarks (LPS, mm)", cli=False,
                                                              batch=False)
    moving_landmarks_lps: Optional[List[List[float]]] = option(None, "moving landmarks (LPS, mm)", cli=False,
                                                               batch=False)
    threads: Optional[int] = option(None, "worker threads (default: all cores)", parse=positive_int, metavar="N",
                                    batch=False)
    overrides: Dict[str, Dict[str, Any]] = option({}, "per-stage changes", cli=False, batch=False)
    seed: int = option(20261125, "seed of the metric's sample points", cli=False, batch=False)
    interpolation: str = option("linear", "interpolation of the resampled output",
                                choices=("linear", "bspline", "nearest"), cli=False, batch=False)
    checkerboard: bool = option(False, "also return a checkerboard QA image", cli=False, batch=False)
    difference: bool = option(False, "also return a difference QA image", cli=False, batch=False)

    def stages(self) -> List[dict]:
        """The preset's stages with defaults, ``metric`` and ``overrides`` applied."""
        from .register.parameters import resolve_stages

        return resolve_stages(self)
