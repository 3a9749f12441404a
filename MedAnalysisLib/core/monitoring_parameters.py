"""What a monitoring run takes, declared once (``core/parameters.option``): the thresholds that
decide when a lesion and its change count, and the workflow settings. A light module (no image
libraries), so that the command-line parser can be built from it for every command.
"""

from __future__ import annotations

import dataclasses
import math

from .errors import InputError
from .parameters import non_negative, option, positive

BRAIN_MASK_CHOICES = ("off", "auto")  # brain extraction before segmenting: off, or auto (brain models)


@dataclasses.dataclass
class MonitoringThresholds:
    """When a lesion counts and when its change counts, declared once (panel, CLI, batch).

    A change counts only when it exceeds both the relative and the absolute threshold, so that
    noise-level change of small lesions stays 'stable'."""

    relative_change: float = option(0.25, "relative volume change that counts, as a fraction of the baseline volume",
                                    parse=non_negative)
    absolute_change_ml: float = option(0.05, "absolute volume change that counts", unit="mL", parse=non_negative)
    match_distance_mm: float = option(5.0, "centroid distance that matches lesions which do not overlap",
                                      unit="mm", parse=positive)
    min_lesion_ml: float = option(0.01, "smaller lesion components are ignored", unit="mL", parse=non_negative)

    def validate(self) -> "MonitoringThresholds":
        """Refuse thresholds that are negative, not numbers or meaningless, before any work."""
        for name in ("relative_change", "absolute_change_ml", "match_distance_mm", "min_lesion_ml"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InputError(name, f"must be a finite number >= 0, got {value}")
        if self.match_distance_mm == 0:
            raise InputError("match_distance_mm", "must be greater than 0")
        return self


@dataclasses.dataclass
class MonitoringParameters(MonitoringThresholds):
    """Everything a monitoring run takes, declared once: the thresholds (inherited) and the
    workflow settings below. The panel, the logic, the CLI options and the batch columns come
    from these fields (``core/parameters.py``); the logic layer re-exports it."""

    lesionSegmentName: str = option("Lesion", "segment name to use as lesions", flag="--lesion-segment")
    registrationPreset: str = option("rigid", "registration preset (follow-up to baseline)", flag="--registration",
                                     column="registration_preset")
    model: str = option("brain-tissue-lesion", "segmentation model (catalog name or file)")
    device: str = option("auto", "where the network runs", choices=("auto", "cpu", "cuda"))
    brainMask: str = option("auto", "auto: brain extraction before segmenting each time point, lesions only "
                                    "inside it", choices=BRAIN_MASK_CHOICES, flag="--brain-mask")

    def validate(self) -> "MonitoringParameters":
        super().validate()
        if self.brainMask not in BRAIN_MASK_CHOICES:
            raise InputError("brainMask", f"unknown choice '{self.brainMask}' (use {' or '.join(BRAIN_MASK_CHOICES)})")
        return self
