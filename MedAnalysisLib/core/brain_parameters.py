"""What a brain extraction takes, declared once (``core/parameters.option``); the panel, the logic,
the CLI options and the batch columns read this class. A light module (no torch, no images)."""

from __future__ import annotations

import dataclasses
import math

from .errors import InputError
from .parameters import option

DEVICES = ("auto", "cpu", "cuda")


def open_probability(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise ValueError(f"must be in (0, 1), got {text}")
    return value


@dataclasses.dataclass
class BrainExtractionParameters:
    """Brain extraction settings (shared by panel, logic, CLI and batch)."""

    device: str = option("auto", "where the network runs", choices=DEVICES)
    threshold: float = option(0.5, "brain probability a voxel needs to be in the mask", parse=open_probability,
                              metavar="P", batch=False)
    maskedVolume: bool = option(False, "also output the input with everything outside the brain set to its minimum",
                                cli=False, batch=False)

    def validate(self) -> "BrainExtractionParameters":
        if not (isinstance(self.threshold, (int, float)) and 0.0 < self.threshold < 1.0):
            raise InputError("threshold", f"must be in (0, 1), got {self.threshold}")
        if self.device not in DEVICES:
            raise InputError("device", f"unknown device '{self.device}' (use auto, cpu or cuda)")
        return self
