"""Longitudinal lesion monitoring: match lesions between baseline and follow-up and classify change.

Inputs are lesion component images in each time point's own space and the ITK transform
that maps baseline (fixed) points to follow-up (moving) points, as registration of the
follow-up to the baseline produces. Volumes are those measured in each time point's own
space; positions are reported in baseline RAS millimetres.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from . import geometry
from .monitoring_parameters import BRAIN_MASK_CHOICES, MonitoringParameters, MonitoringThresholds  # noqa: F401
from .quantify import Lesion

STATUSES = ("new", "grown", "shrunk", "stable", "vanished")


def classify_change(volume_baseline_ml: float, volume_followup_ml: float, thresholds: MonitoringThresholds) -> str:
    change = volume_followup_ml - volume_baseline_ml
    limit = max(thresholds.absolute_change_ml, thresholds.relative_change * volume_baseline_ml)
    if change > limit:
        return "grown"
    if -change > limit:
        return "shrunk"
    return "stable"


def _followup_in_baseline(followup_components: sitk.Image, baseline_components: sitk.Image,
                          transform: sitk.Transform) -> np.ndarray:
    warped = geometry.resample_to_grid(followup_components, geometry.grid_of(baseline_components),
                                       sitk.sitkNearestNeighbor, 0, transform)
    return sitk.GetArrayFromImage(warped)


def _centroids_in_baseline(followup_lesions: Sequence[Lesion], warped: np.ndarray, baseline_components: sitk.Image,
                           transform: sitk.Transform) -> dict:
    """Follow-up lesion centroids in baseline RAS: from the warped components, or by inverting
    the transform for components too small to survive resampling."""
    centroids = {}
    for lesion in followup_lesions:
        kji = np.argwhere(warped == lesion.label)
        if len(kji):
            lps = geometry.physical_points_lps(baseline_components, kji[:, ::-1].astype(float).mean(0, keepdims=True))
            centroids[lesion.label] = geometry.lps_to_ras_points(lps)[0]
            continue
        try:
            inverse = transform.GetInverse()
            lps = np.array(inverse.TransformPoint(tuple(geometry.ras_to_lps_points(
                np.array([lesion.centroid_ras]))[0])))
            centroids[lesion.label] = geometry.lps_to_ras_points(lps[None])[0]
        except RuntimeError:
            centroids[lesion.label] = np.array(lesion.centroid_ras, float)
    return centroids


def match_lesions(baseline_lesions: Sequence[Lesion], baseline_components: sitk.Image,
                  followup_lesions: Sequence[Lesion], followup_components: sitk.Image,
                  transform: sitk.Transform, thresholds: Optional[MonitoringThresholds] = None) -> dict:
    """Lesion table and summary (the ``monitor --json`` structure of DESIGN.md)."""
    thresholds = thresholds or MonitoringThresholds()
    baseline_array = geometry.array_view(baseline_components)
    warped = _followup_in_baseline(followup_components, baseline_components, transform)
    nb, nf = len(baseline_lesions), len(followup_lesions)
    overlap = np.zeros((nb + 1, nf + 1), np.int64)
    both = (baseline_array > 0) & (warped > 0)
    np.add.at(overlap, (baseline_array[both].astype(np.int64), warped[both].astype(np.int64)), 1)
    edges = {(b, f) for b in range(1, nb + 1) for f in range(1, nf + 1) if overlap[b, f] > 0}

    followup_centroids = _centroids_in_baseline(followup_lesions, warped, baseline_components, transform)
    matched_b = {b for b, _ in edges}
    matched_f = {f for _, f in edges}
    for b_lesion in baseline_lesions:
        if b_lesion.label in matched_b:
            continue
        best, best_distance = None, thresholds.match_distance_mm
        for f_lesion in followup_lesions:
            if f_lesion.label in matched_f:
                continue
            distance = float(np.linalg.norm(followup_centroids[f_lesion.label] - np.array(b_lesion.centroid_ras)))
            if distance <= best_distance:
                best, best_distance = f_lesion.label, distance
        if best is not None:
            edges.add((b_lesion.label, best))
            matched_b.add(b_lesion.label)
            matched_f.add(best)

    # connected groups of the bipartite graph
    parent = {("b", b.label): ("b", b.label) for b in baseline_lesions}
    parent.update({("f", f.label): ("f", f.label) for f in followup_lesions})

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for b, f in edges:
        parent[find(("b", b))] = find(("f", f))
    groups: dict = {}
    for node in parent:
        groups.setdefault(find(node), []).append(node)
    by_label_b = {l.label: l for l in baseline_lesions}
    by_label_f = {l.label: l for l in followup_lesions}

    entries = []
    for members in groups.values():
        b_members = [by_label_b[n[1]] for n in sorted(members) if n[0] == "b"]
        f_members = [by_label_f[n[1]] for n in sorted(members) if n[0] == "f"]
        volume_b = sum(l.volume_ml for l in b_members)
        volume_f = sum(l.volume_ml for l in f_members)
        if not f_members:
            status = "vanished"
        elif not b_members:
            status = "new"
        else:
            status = classify_change(volume_b, volume_f, thresholds)
        event = "merge" if len(b_members) > 1 and len(f_members) == 1 else \
            "split" if len(f_members) > 1 and len(b_members) == 1 else \
            "merge+split" if len(b_members) > 1 and len(f_members) > 1 else None
        if b_members:
            weights = np.array([l.volume_ml for l in b_members])
            centroid = (np.array([l.centroid_ras for l in b_members]) * weights[:, None]).sum(0) / weights.sum()
        else:
            weights = np.array([l.volume_ml for l in f_members])
            centroid = (np.array([followup_centroids[l.label] for l in f_members]) * weights[:, None]).sum(0) \
                / weights.sum()
        entry = {
            "status": status,
            "centroid_ras": [round(float(v), 2) for v in centroid],
            "volume_baseline_ml": round(volume_b, 4),
            "volume_followup_ml": round(volume_f, 4),
            "volume_change_ml": round(volume_f - volume_b, 4),
            "volume_change_percent": round(100 * (volume_f - volume_b) / volume_b, 1) if volume_b > 0 else None,
            "baseline_ids": [l.id for l in b_members],
            "followup_ids": [l.id for l in f_members],
            "max_diameter_baseline_mm": max((l.max_diameter_mm for l in b_members), default=None),
            "max_diameter_followup_mm": max((l.max_diameter_mm for l in f_members), default=None),
            "tissue": next((l.tissue for l in b_members + f_members if l.tissue), None),
            "event": event,
        }
        entries.append(entry)
    entries.sort(key=lambda e: (e["volume_baseline_ml"] == 0, -e["volume_baseline_ml"], -e["volume_followup_ml"]))
    for number, entry in enumerate(entries, start=1):
        entry["id"] = f"L{number}"
    burden_b = round(sum(l.volume_ml for l in baseline_lesions), 4)
    burden_f = round(sum(l.volume_ml for l in followup_lesions), 4)
    summary = {
        "lesions_baseline": nb, "lesions_followup": nf,
        "counts": {s: sum(1 for e in entries if e["status"] == s) for s in STATUSES},
        "merges": sum(1 for e in entries if e["event"] == "merge"),
        "splits": sum(1 for e in entries if e["event"] == "split"),
        "burden_baseline_ml": burden_b, "burden_followup_ml": burden_f,
        "burden_change_ml": round(burden_f - burden_b, 4),
        "burden_change_percent": round(100 * (burden_f - burden_b) / burden_b, 1) if burden_b > 0 else None,
        "thresholds": dataclasses.asdict(thresholds),
    }
    ordered = [{"id": e.pop("id"), **e} for e in entries]
    return {"lesions": ordered, "summary": summary}
