"""Geometry of a stack of parallel slices: axes, slice spacing and its variation, gantry tilt,
in-plane shifts, missing slices, and the regular grid an irregular stack is resampled onto.

Only measuring happens here; :func:`.pixels.regularize` does the resampling at load time.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..geometry import orientation_code_from_direction
from .records import ORIENTATION_TOLERANCE, POSITION_TOLERANCE_MM, DicomFrame, VolumeGeometry


def _orthonormal_axes(orientation: Sequence[float]) -> tuple:
    """Row, column and normal unit vectors (LPS) from ImageOrientationPatient."""
    row = np.asarray(orientation[:3], dtype=float)
    column = np.asarray(orientation[3:], dtype=float)
    row = row / np.linalg.norm(row)
    column = column - np.dot(column, row) * row
    column = column / np.linalg.norm(column)
    return row, column, np.cross(row, column)


# This package's name for core.geometry's code of a direction matrix (core.geometry.orientation_code takes an image).
orientation_code = orientation_code_from_direction


def volume_geometry(frames: Sequence[DicomFrame], relative=lambda p: Path(p).name) -> VolumeGeometry:
    """Measure a stack's geometry; irregular stacks get a regular output grid covering all slices.

    ``frames`` must be sorted along the normal (as :func:`plan_series` leaves them).
    """
    first = frames[0]
    pixel_spacing = first.pixel_spacing
    warnings_: list = []
    if pixel_spacing is None or min(pixel_spacing) <= 0:
        pixel_spacing = (1.0, 1.0)
        warnings_.append("no PixelSpacing: 1 mm pixels assumed")
    spacing_i, spacing_j = float(pixel_spacing[1]), float(pixel_spacing[0])
    rows, columns = first.file.rows, first.file.columns
    count = len(frames)
    declared = first.spacing_between or first.thickness
    if first.position is None or first.orientation is None:
        spacing_k = float(declared) if declared and declared > 0 else 1.0
        warnings_.append("no patient position/orientation: identity orientation and origin assumed, frames stacked "
                         f"{spacing_k:g} mm apart in instance order")
        qa = {"slices": count, "patient_geometry": False, "regularized": False,
              "orientation": "LPS", "slice_spacing_mm": spacing_k}
        return VolumeGeometry(np.zeros(3), np.array([spacing_i, spacing_j, spacing_k]), np.eye(3),
                              (columns, rows, count), np.arange(count) * spacing_k, np.zeros((count, 2)), True,
                              has_patient_geometry=False, qa=qa, warnings=warnings_)
    row, column, normal = _orthonormal_axes(first.orientation)
    raw = np.asarray(first.orientation, dtype=float)
    if abs(np.dot(raw[:3], raw[3:])) > ORIENTATION_TOLERANCE:
        warnings_.append(f"row and column directions are not orthogonal (cosine {np.dot(raw[:3], raw[3:]):.4f}): "
                         "column direction orthogonalized")
    positions = np.array([f.position for f in frames], dtype=float)
    coordinates = positions @ normal
    offsets = (positions - positions[0]) @ np.stack([row, column], axis=1)
    qa: dict = {"slices": count, "patient_geometry": True}
    origin = positions[0].copy()
    size = (columns, rows, count)
    regular = True
    if count == 1:
        spacing_k = float(declared) if declared and declared > 0 else 1.0
        qa["slice_spacing_mm"] = spacing_k
    else:
        gaps = np.diff(coordinates)
        median = float(np.median(gaps))
        shift = float(np.max(np.abs(offsets))) if count else 0.0
        uniform = float(np.max(gaps) - np.min(gaps)) <= POSITION_TOLERANCE_MM
        spacing_k = float((coordinates[-1] - coordinates[0]) / (count - 1))
        relative_s = coordinates - coordinates[0]
        denominator = float(np.dot(relative_s, relative_s))
        slopes = (relative_s @ offsets) / denominator if denominator > 0 else np.zeros(2)
        tilt = math.degrees(math.atan(float(np.hypot(*slopes))))
        qa.update({
            "acquired_spacing_mm": {"min": float(np.min(gaps)), "median": median, "max": float(np.max(gaps))},
            "uniform_spacing": bool(uniform),
            "gantry_tilt_deg": round(tilt, 4),
            "max_in_plane_shift_mm": round(shift, 4),
        })
        missing = []
        for index, gap in enumerate(gaps):
            multiple = int(round(gap / median)) if median > 0 else 0
            if multiple >= 2 and abs(gap - multiple * median) <= max(POSITION_TOLERANCE_MM, 0.1 * median):
                missing.append({"after_slice": index, "gap_mm": round(float(gap), 4), "missing": multiple - 1,
                                "between_files": [relative(frames[index].file.path),
                                                  relative(frames[index + 1].file.path)]})
        if missing:
            qa["missing_slices"] = missing
            for item in missing:
                warnings_.append(f"{item['missing']} missing slice(s) between slice {item['after_slice']} and "
                                 f"{item['after_slice'] + 1} ({item['between_files'][0]}, "
                                 f"{item['between_files'][1]}; gap {item['gap_mm']:g} mm vs {median:g} mm)")
        if not uniform or shift > POSITION_TOLERANCE_MM:
            regular = False
            if missing and all(int(round(g / median)) * median - g <= max(POSITION_TOLERANCE_MM, 0.1 * median)
                               for g in gaps):
                target = median
            else:
                smallest = float(np.min(gaps))
                target = smallest if smallest >= 0.5 * median else median
            extent = float(coordinates[-1] - coordinates[0])
            output_slices = int(round(extent / target)) + 1
            spacing_k = extent / (output_slices - 1)
            low, high = offsets.min(axis=0), offsets.max(axis=0)
            extra_i = int(math.ceil((high[0] - low[0]) / spacing_i - 1e-3))
            extra_j = int(math.ceil((high[1] - low[1]) / spacing_j - 1e-3))
            origin = positions[0] + low[0] * row + low[1] * column
            size = (columns + extra_i, rows + extra_j, output_slices)
            reasons = []
            if tilt > 0.01:
                reasons.append(f"gantry tilt of {tilt:.2f} degrees")
            elif shift > POSITION_TOLERANCE_MM:
                reasons.append(f"in-plane shifts of up to {shift:.3g} mm between slices")
            if not uniform:
                reasons.append(f"non-uniform slice spacing ({np.min(gaps):.4g} to {np.max(gaps):.4g} mm)")
            warnings_.append(f"{' and '.join(reasons)}: resampled onto a regular grid of {size[0]}x{size[1]}x{size[2]} "
                             f"voxels with {spacing_k:.4g} mm slice spacing (acquisition geometry regularized, "
                             "linear interpolation)")
        qa["slice_spacing_mm"] = spacing_k
    direction = np.stack([row, column, normal], axis=1)
    qa["regularized"] = not regular
    qa["orientation"] = orientation_code_from_direction(direction)
    if not regular:
        qa["regularized_size"] = list(size)
    return VolumeGeometry(origin, np.array([spacing_i, spacing_j, spacing_k]), direction, size, coordinates,
                          offsets, regular, qa=qa, warnings=warnings_)
