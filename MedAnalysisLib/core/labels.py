"""Segment descriptions: label value, name, colour and coded terminology (SNOMED CT where known)."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

Code = Tuple[str, str, str]  # (coding scheme designator, code value, code meaning)

TISSUE: Code = ("SCT", "85756007", "Tissue")
BODY_SUBSTANCE: Code = ("SCT", "91720002", "Body Substance")
ABNORMAL: Code = ("SCT", "49755003", "Morphologically Abnormal Structure")
ANATOMICAL_STRUCTURE: Code = ("SCT", "91723000", "Anatomical Structure")

SLICER_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMY_CONTEXT = "Anatomic codes - DICOM master list"


@dataclasses.dataclass(frozen=True)
class SegmentSpec:
    """One label of a labelmap: value, display name, RGB colour in 0..1, terminology codes."""

    label: int
    name: str
    color: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    category: Optional[Code] = None
    type: Optional[Code] = None

    def terminology_entry(self) -> str:
        """Slicer's terminology tag string (context~category~type~modifier~anatomy context~region~modifier)."""
        if self.category is None or self.type is None:
            return ""
        category = "^".join(self.category)
        type_ = "^".join(self.type)
        return f"{SLICER_CONTEXT}~{category}~{type_}~^^~{ANATOMY_CONTEXT}~^^~^^"

    @staticmethod
    def from_dict(entry: dict) -> "SegmentSpec":
        def code(value):
            return tuple(value) if value else None
        return SegmentSpec(
            label=int(entry["label"]), name=str(entry["name"]),
            color=tuple(float(c) for c in entry.get("color", (0.5, 0.5, 0.5))),
            category=code(entry.get("category")), type=code(entry.get("type")),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


BRAIN_TISSUE_SEGMENTS: Sequence[SegmentSpec] = (
    SegmentSpec(1, "Cerebrospinal fluid", (0.35, 0.65, 0.95), BODY_SUBSTANCE, ("SCT", "65216001", "Cerebrospinal fluid")),
    SegmentSpec(2, "Gray matter", (0.55, 0.55, 0.55), TISSUE, ("SCT", "389081007", "Gray matter")),
    SegmentSpec(3, "White matter", (0.95, 0.95, 0.85), TISSUE, ("SCT", "389080008", "White matter")),
    SegmentSpec(4, "Lesion", (0.90, 0.20, 0.15), ABNORMAL, ("SCT", "52988006", "Lesion")),
)


BRAIN_SEGMENT = SegmentSpec(1, "Brain", (0.87, 0.68, 0.55), ANATOMICAL_STRUCTURE, ("SCT", "12738006", "Brain"))


def parse_terminology_entry(entry: str) -> dict:
    """Category and type codes from a Slicer terminology tag string (empty dict when absent)."""
    parts = entry.split("~") if entry else []
    if len(parts) < 3:
        return {}

    def code(text):
        fields = text.split("^")
        return tuple(fields) if len(fields) == 3 and fields[1] else None

    return {"context": parts[0], "category": code(parts[1]), "type": code(parts[2])}


def generic_segments(labels: Sequence[int]) -> list[SegmentSpec]:
    """Specs for unnamed labels: 'Segment_<value>' with distinct colours."""
    palette = [(0.9, 0.3, 0.2), (0.3, 0.7, 0.3), (0.2, 0.4, 0.9), (0.9, 0.8, 0.2), (0.7, 0.3, 0.8),
               (0.2, 0.8, 0.8), (0.9, 0.5, 0.1), (0.5, 0.3, 0.1)]
    return [SegmentSpec(int(v), f"Segment_{int(v)}", palette[i % len(palette)]) for i, v in enumerate(labels)]
