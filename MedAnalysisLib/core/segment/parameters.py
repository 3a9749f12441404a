"""What a segmentation run takes, declared once (``core/parameters.option``): the model, where and
how it runs, the lesion rules and the per-image refinement. The panel, the logic, the engine, the
CLI options and the batch columns all read this one class. A light module (no torch, no image
libraries), so that the command-line parser can be built from it for every command.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from ..errors import InputError
from ..monitoring_parameters import BRAIN_MASK_CHOICES
from ..parameters import non_negative, option, positive_int

DEFAULT_MODEL = "brain-tissue-lesion"
DEVICES = ("auto", "cpu", "cuda")


def probability(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"must be in (0, 1], got {text}")
    return value


@dataclasses.dataclass
class SegmentationParameters:
    """Everything a segmentation run takes (what to run, where, the lesion rules, refinement)."""

    model: str = option(DEFAULT_MODEL, "catalog name (see `medanalysis models list`) or a model path")
    device: str = option("auto", "where the network runs", choices=DEVICES)
    tta: bool = option(False, "test-time flip augmentation (left-right)")
    trusted: bool = option(False, "allow TorchScript files and MONAI bundle configs (they can run arbitrary code); "
                                  "only from the operator, never from a manifest cell", batch=False)
    threads: Optional[int] = option(None, "CPU threads (default: all cores)", parse=positive_int, batch=False)
    lesionMinMl: float = option(0.02, "lesion components smaller than this are removed", unit="mL",
                                parse=non_negative, flag="--lesion-min-ml")
    lesionThreshold: Optional[float] = option(None, "lesion probability a voxel needs to be labelled lesion "
                                                    "(default: the model's; argmax when it has none)",
                                              parse=probability, flag="--lesion-threshold", metavar="P")
    lesionPeak: Optional[float] = option(None, "a lesion component is kept only when its highest lesion probability "
                                               "reaches this (default: the model's, chosen on validation data; "
                                               "none: no such rule)", parse=probability, flag="--lesion-peak",
                                         metavar="P")
    lesionIslands: bool = option(False, "also report grey matter enclosed by white matter as lesion (T1 white-matter "
                                        "hypointensities that the network calls grey matter)",
                                 flag="--lesion-islands")
    refine: bool = option(True, "fit the tissue intensities of this image (EM, the network's probabilities as "
                                "priors); --no-refine: the network alone")
    brainMask: str = option("auto", "auto: extract the brain first (deepbet) and segment inside it (brain models); "
                                    "off: the model alone", choices=BRAIN_MASK_CHOICES, cli=False, batch=False)
    probabilities: bool = option(False, "also return per-class probability maps", cli=False, batch=False)
    # engine tuning: not offered on the command line or in manifests
    overlap: Optional[float] = option(None, "sliding-window overlap (default: the model config's)", cli=False,
                                      batch=False)
    swBatchSize: Optional[int] = option(None, "windows per forward pass (default 4: about 2x CPU throughput)",
                                        cli=False, batch=False)
    slabVoxels: int = option(256, "volumes deeper than this (slowest axis) run slab by slab", cli=False, batch=False)
    amp: bool = option(True, "mixed precision on GPU", cli=False, batch=False)

    def validate(self) -> "SegmentationParameters":
        """Refuse values that make no sense, before any work (messages name the parameter)."""
        if self.device not in DEVICES:
            raise InputError("device", f"unknown device '{self.device}' (use {'|'.join(DEVICES)})")
        if self.brainMask not in BRAIN_MASK_CHOICES:
            raise InputError("brainMask", f"unknown choice '{self.brainMask}' (use {' or '.join(BRAIN_MASK_CHOICES)})")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise InputError("threads", f"must be at least 1, got {self.threads}")
        if not (isinstance(self.lesionMinMl, (int, float)) and math.isfinite(self.lesionMinMl)
                and self.lesionMinMl >= 0):
            raise InputError("lesionMinMl", f"must be a number >= 0, got {self.lesionMinMl}")
        if self.lesionThreshold is not None and not (isinstance(self.lesionThreshold, (int, float))
                                                     and 0 < self.lesionThreshold <= 1):
            raise InputError("lesionThreshold", f"must be in (0, 1], got {self.lesionThreshold}")
        if self.lesionPeak is not None and not (isinstance(self.lesionPeak, (int, float))
                                                and 0 < self.lesionPeak <= 1):
            raise InputError("lesionPeak", f"must be in (0, 1], got {self.lesionPeak}")
        if self.overlap is not None and not 0 <= self.overlap < 1:
            raise InputError("overlap", f"must be in [0, 1), got {self.overlap}")
        return self
