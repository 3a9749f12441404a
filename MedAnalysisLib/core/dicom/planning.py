"""Series planning: group frames by study and series, and split a series into loadable volumes.

A series is split when it mixes sizes, orientations, pixel spacings, echoes, stacks or
acquisitions, or repeats positions (multi-volume / 4-D series: one volume per time point).
Slices are ordered by ImagePositionPatient projected on the slice normal, never by file name
or InstanceNumber.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..progress import ProgressReporter
from .header import read_header
from .records import (DUPLICATE_TOLERANCE_MM, ORIENTATION_TOLERANCE, SLAB_GAP_FACTOR, DicomFile, DicomFrame,
                      DicomSeries, DicomVolume, FileProblem, ScanResult)
from .stack import _orthonormal_axes, volume_geometry
from .values import _text


def scan_files(paths: Sequence["str | os.PathLike"], relative: Callable[[Any], str] = lambda p: Path(p).name,
               report: Optional[ProgressReporter] = None) -> ScanResult:
    """Read every file's header and group the DICOM images into series and volumes."""
    report = report or ProgressReporter()
    files, skipped, damaged = [], [], []
    non_dicom = non_image = 0
    total = len(paths)
    for number, path in enumerate(paths):
        if number % 64 == 0:
            report(number / max(total, 1), f"reading headers {number}/{total}")
        try:
            record = read_header(path)
        except FileProblem as problem:
            skipped.append((relative(path), problem.reason))
            continue
        if record is None:
            non_dicom += 1
            continue
        if not record.has_pixels:
            non_image += 1
            continue
        if record.problem:
            skipped.append((relative(path), record.problem))
            damaged.append(record)
            record.header = None
            continue
        files.append(record)
    report(1.0, f"read {total} headers")
    series = plan_series(files, relative)
    by_uid = {(s.study_uid, s.series_uid): s for s in series}
    for record in damaged:
        owner = by_uid.get((record.study_uid, record.series_uid))
        if owner is not None:
            owner.warnings.append(f"left out {relative(record.path)}: {record.problem}")
    return ScanResult(series, dicom_files=len(files) + non_image + len(skipped), non_dicom_files=non_dicom,
                      non_image_objects=non_image, skipped=skipped)


def plan_series(files: Sequence[DicomFile], relative: Callable[[Any], str] = lambda p: Path(p).name) -> list:
    """Group files by study and series and plan each series' loadable volumes."""
    grouped: dict = defaultdict(list)
    for record in files:
        grouped[(record.study_uid, record.series_uid)].append(record)
    result = []
    for (study_uid, series_uid), members in grouped.items():
        first = members[0]
        series = DicomSeries(study_uid, series_uid, first.modality, first.series_number, members)
        unique, seen = [], {}
        for record in sorted(members, key=lambda r: str(r.path)):
            if record.sop_instance_uid in seen:
                series.warnings.append(f"{relative(record.path)} is a copy of {relative(seen[record.sop_instance_uid])} "
                                       "(same SOP Instance UID): ignored")
                continue
            seen[record.sop_instance_uid] = record.path
            unique.append(record)
        series.files = unique
        frames = [frame for record in unique for frame in record.frames]
        series.volumes = _plan_volumes(series, frames, relative)
        for number, volume in enumerate(series.volumes, start=1):
            volume.series = series
            volume.volume_id = series_uid if len(series.volumes) == 1 else f"{series_uid}#{number}"
        keep = {id(volume.frames[0].file) for volume in series.volumes}
        for record in unique:
            if id(record) not in keep and record is not unique[0]:
                record.header = None  # only one header per volume is needed for metadata
        result.append(series)
    result.sort(key=lambda s: (_text(s.header, "StudyDate"), _text(s.header, "StudyTime"), s.study_uid,
                               s.series_number if s.series_number is not None else 1 << 30, s.series_uid))
    return result


def _orientation_clusters(frames: Sequence[DicomFrame]) -> list:
    representatives: list = []
    labels = []
    for frame in frames:
        if frame.orientation is None or frame.position is None:
            labels.append(-1)
            continue
        value = np.asarray(frame.orientation)
        for number, representative in enumerate(representatives):
            if np.max(np.abs(representative - value)) <= ORIENTATION_TOLERANCE:
                labels.append(number)
                break
        else:
            representatives.append(value)
            labels.append(len(representatives) - 1)
    return labels


def _split(frames: Sequence[DicomFrame], key: Callable[[DicomFrame], Any]) -> list:
    groups: dict = {}
    for frame in frames:
        groups.setdefault(key(frame), []).append(frame)
    return list(groups.items())


def _sort_value(value) -> tuple:
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, (int, float)):
        return (1, float(value), "")
    return (2, 0.0, str(value))


def _describe_value(name: str, value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, tuple):
        value = "\\".join(value)
    return f"{name} {value}"


def _plan_volumes(series: DicomSeries, frames: list, relative) -> list:
    """Split a series' frames into stacks that each form one regular-or-regularizable volume."""
    orientation_labels = _orientation_clusters(frames)
    hard_groups: dict = {}
    for frame, orientation_label in zip(frames, orientation_labels):
        spacing = tuple(round(v, 4) for v in frame.pixel_spacing) if frame.pixel_spacing else None
        key = (frame.file.rows, frame.file.columns, frame.file.is_colour, orientation_label, spacing)
        hard_groups.setdefault(key, []).append(frame)
    if len(hard_groups) > 1:
        keys = list(hard_groups)
        reasons = [name for position, name in ((0, "size"), (1, "size"), (2, "colour"), (3, "orientation"),
                                               (4, "pixel spacing"))
                   if len({k[position] for k in keys}) > 1]
        series.warnings.append(f"series mixes {', '.join(dict.fromkeys(reasons))}: split into {len(keys)} "
                               "groups of consistent slices")
        series.qa["split_by"] = list(dict.fromkeys(reasons))
    plans: list = []  # (label, frames, notes)
    for key, group in hard_groups.items():
        label = ""
        if len(hard_groups) > 1:
            label = f"{key[1]}x{key[0]}" if key[3] == -1 else f"{key[1]}x{key[0]} orientation {key[3] + 1}"
        if key[3] == -1:  # no patient geometry: one stack in instance order
            plans.append((label, sorted(group, key=DicomFrame.order_key), []))
            continue
        sub = [(label, group)]
        for name, attribute in (("echo", "echo"), ("stack", "stack")):
            expanded = []
            for sub_label, sub_frames in sub:
                parts = _split(sub_frames, lambda f: getattr(f, attribute))
                repeated = len(parts) > 1 and max(len(g) for g in _position_groups(sub_frames)) > 1
                if repeated:  # several echoes / stacks covering the same positions
                    parts.sort(key=lambda item: _sort_value(item[0]))
                    if name not in series.qa.setdefault("split_by", []):
                        series.qa["split_by"].append(name)
                    for value, part in parts:
                        expanded.append((" ".join(filter(None, [sub_label, _describe_value(name, value)])), part))
                else:
                    expanded.append((sub_label, sub_frames))
            sub = expanded
        for sub_label, sub_frames in sub:
            plans.extend(_resolve_repeats(series, sub_label, sub_frames, relative))
    volumes = []
    for label, stack, notes in plans:
        if stack and stack[0].position is not None:
            slabs = _split_slabs(stack)
            if len(slabs) > 1:
                ends = _normal_coordinates([frame for slab in slabs for frame in (slab[0], slab[-1])])
                gaps = [float(ends[2 * i + 2] - ends[2 * i + 1]) for i in range(len(slabs) - 1)]
                series.warnings.append(f"{label + ': ' if label else ''}slices form {len(slabs)} separate slabs "
                                       f"(gaps of {', '.join(f'{g:.1f}' for g in gaps)} mm): loaded as separate volumes")
            for number, slab in enumerate(slabs, start=1):
                slab_label = label if len(slabs) == 1 else " ".join(filter(None, [label, f"slab {number}"]))
                volumes.append(_make_volume(slab_label, slab, notes, relative))
        else:
            volumes.append(_make_volume(label, stack, notes, relative))
    return volumes


def _normal_coordinates(frames: Sequence[DicomFrame]) -> np.ndarray:
    """Positions projected on the first frame's slice normal (mm)."""
    normal = _orthonormal_axes(frames[0].orientation)[2]
    return np.array([f.position for f in frames], dtype=float) @ normal


def _position_groups(frames: Sequence[DicomFrame]) -> list:
    """Frames grouped by position (same plane within DUPLICATE_TOLERANCE_MM), in normal order."""
    coordinates = _normal_coordinates(frames)
    order = np.argsort(coordinates, kind="stable")
    groups: list = []
    last = None
    for index in order:
        if last is not None and coordinates[index] - last <= DUPLICATE_TOLERANCE_MM:
            groups[-1].append(frames[index])
        else:
            groups.append([frames[index]])
        last = coordinates[index]
    return groups


_REPEAT_KEYS = (("acquisition", "AcquisitionNumber"), ("temporal", "TemporalPosition"),
                ("trigger", "TriggerTime"), ("acquisition_time", "AcquisitionTime"), ("image_type", "ImageType"))


def _resolve_repeats(series: DicomSeries, label: str, frames: list, relative) -> list:
    """Frames repeating positions: split into time points / acquisitions, else drop duplicates."""
    groups = _position_groups(frames)
    counts = [len(g) for g in groups]
    if max(counts) == 1:
        return [(label, [g[0] for g in groups], [])]
    for attribute, name in _REPEAT_KEYS:
        values = [getattr(f, attribute) for f in frames]
        if any(v is None for v in values) or len(set(values)) < 2:
            continue
        parts = _split(frames, lambda f: getattr(f, attribute))
        if len(parts) != max(counts):
            continue  # e.g. AcquisitionTime differing per slice: not one value per volume
        if all(max(len(g) for g in _position_groups(part)) == 1 for _, part in parts):
            parts.sort(key=lambda item: _sort_value(item[0]))
            uniform = len({len(part) for _, part in parts}) == 1
            if uniform:
                series.qa["multi_volume"] = {"volumes": len(parts), "split_by": name,
                                             "loaded_as": "separate volumes"}
            series.warnings.append(f"{label + ': ' if label else ''}positions repeat: split by {name} into "
                                   f"{len(parts)} volumes{' (time points)' if uniform else ''}")
            return [(" ".join(filter(None, [label, _describe_value(name, value)])),
                     [g[0] for g in _position_groups(part)], []) for value, part in parts]
    if len(set(counts)) == 1:
        repeats = counts[0]
        series.qa["multi_volume"] = {"volumes": repeats, "split_by": "instance order",
                                     "loaded_as": "separate volumes"}
        series.warnings.append(f"{label + ': ' if label else ''}every position repeats {repeats} times with no "
                               f"distinguishing attribute: split into {repeats} volumes by instance order")
        ranked = [sorted(g, key=DicomFrame.order_key) for g in groups]
        return [(" ".join(filter(None, [label, f"volume {number + 1}"])), [g[number] for g in ranked], [])
                for number in range(repeats)]
    kept, dropped = [], []
    for group in groups:
        ordered = sorted(group, key=DicomFrame.order_key)
        kept.append(ordered[0])
        dropped.extend(ordered[1:])
    names = sorted({relative(f.file.path) for f in dropped})
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    note = f"{len(dropped)} duplicate slice(s) at already-filled positions ignored ({shown})"
    series.qa["duplicates_removed"] = series.qa.get("duplicates_removed", 0) + len(dropped)
    return [(label, kept, [note])]


def _split_slabs(frames: list) -> list:
    if len(frames) < 3:
        return [frames]
    gaps = np.diff(_normal_coordinates(frames))
    median = float(np.median(gaps))
    if median <= 0:
        return [frames]
    cuts = [i + 1 for i, gap in enumerate(gaps) if gap > SLAB_GAP_FACTOR * median and gap - median > 10.0]
    if not cuts:
        return [frames]
    bounds = [0, *cuts, len(frames)]
    return [frames[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]


def _make_volume(label: str, frames: list, notes: list, relative) -> DicomVolume:
    geometry = volume_geometry(frames, relative)
    notes = [*dict.fromkeys(note for record in {id(f.file): f.file for f in frames}.values()
                            for note in record.notes), *notes]
    volume = DicomVolume("", label, frames, geometry, warnings=[*notes, *geometry.warnings], qa=dict(geometry.qa))
    return volume
