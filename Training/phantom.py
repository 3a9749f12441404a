"""Synthetic longitudinal study pairs (baseline + follow-up) with known lesion changes.

Built from a T1 volume and its tissue labels (the MNI sample): ellipsoidal lesions placed in
white matter, each with a known fate (grown, shrunk, stable, vanished, new), a rigid head
motion between the time points, and different bias fields and noise. The ground truth
(status, baseline-space RAS centroid, volume at each time point measured in that time point's
own space) comes with it. Used by the tests, the benchmarks and the bundled demo pair.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from MedAnalysisLib.core import geometry

FATES = ("grown", "shrunk", "stable", "vanished", "new")


@dataclasses.dataclass
class StudyPair:
    baseline: sitk.Image
    followup: sitk.Image
    baseline_lesions: sitk.Image       # lesion ids (1..N) in baseline space
    followup_lesions: sitk.Image       # lesion ids in follow-up space
    transform: sitk.Transform          # ITK: baseline (fixed) points -> follow-up (moving) points
    truth: list                        # per lesion: id, status, centroid_ras, volume_baseline_ml, volume_followup_ml


def _ellipsoid(shape, centre_kji, radii_mm, rotation, spacing_kji) -> np.ndarray:
    reach = int(np.ceil(max(radii_mm) / min(spacing_kji))) + 2
    low = np.maximum(np.round(centre_kji).astype(int) - reach, 0)
    high = np.minimum(np.round(centre_kji).astype(int) + reach + 1, shape)
    grids = np.meshgrid(*[np.arange(l, h) for l, h in zip(low, high)], indexing="ij")
    offsets = np.stack([(g - c) * s for g, c, s in zip(grids, centre_kji, spacing_kji)], -1)
    local = offsets @ rotation
    inside = ((local / np.asarray(radii_mm)) ** 2).sum(-1) <= 1.0
    mask = np.zeros(shape, bool)
    mask[tuple(slice(l, h) for l, h in zip(low, high))] = inside
    return mask


def _random_rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                     [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
                     [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d]])


def _smooth_field(shape, rng, amplitude) -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    field = np.zeros(shape)
    for _ in range(3):
        k = rng.normal(0, 1.0, 3)
        field += np.sin(sum(k[d] * grids[d] * np.pi / 2 for d in range(3)) + rng.uniform(0, 2 * np.pi))
    return np.exp(amplitude * field / max(np.abs(field).max(), 1e-9))


def default_fates(count: int, rng) -> list:
    base = ["grown", "shrunk", "stable", "vanished", "new"]
    fates = [base[i % len(base)] for i in range(count)]
    rng.shuffle(fates)
    return fates


def make_study_pair(t1: sitk.Image, tissue: sitk.Image, seed: int = 0, n_lesions: int = 10,
                    fates: Optional[list] = None, volume_range_ml=(0.1, 5.0), growth=(1.7, 2.6),
                    shrinkage=(0.25, 0.55), rotation_deg: float = 4.0, translation_mm: float = 4.0,
                    noise_fraction: float = 0.02, lesion_contrast: float = 0.55) -> StudyPair:
    """Generate a study pair; ``fates`` (one per lesion) defaults to a balanced mix."""
    rng = np.random.default_rng(seed)
    fates = list(fates) if fates is not None else default_fates(n_lesions, rng)
    image = sitk.GetArrayFromImage(t1).astype(np.float32)
    labels = sitk.GetArrayFromImage(tissue)
    spacing_kji = np.array(t1.GetSpacing())[::-1]
    wm = labels == 3
    depth = ndimage.distance_transform_edt(wm, sampling=spacing_kji)
    wm_mean = float(image[wm].mean())
    voxel_ml = geometry.voxel_volume_ml(t1)

    baseline_ids = np.zeros(image.shape, np.uint16)
    followup_ids = np.zeros(image.shape, np.uint16)
    placed = []  # (centre_kji, reach_mm)
    lesions = []
    for number, fate in enumerate(fates, start=1):
        low, high = np.log(volume_range_ml[0]), np.log(volume_range_ml[1] / (growth[1] if fate == "grown" else 1.0))
        volume = float(np.exp(rng.uniform(low, max(low, high))))
        factor = {"grown": rng.uniform(*growth), "shrunk": rng.uniform(*shrinkage),
                  "stable": rng.uniform(0.97, 1.03), "vanished": 0.0, "new": 1.0}[fate]
        base_volume = 0.0 if fate == "new" else volume
        follow_volume = volume * factor if fate != "new" else volume
        reach_mm = (3 * max(base_volume, follow_volume) * 1000 / (4 * np.pi)) ** (1 / 3) * 1.3
        candidates = np.argwhere(depth > min(reach_mm * 0.5, depth.max() * 0.6))
        for _ in range(500):
            centre = candidates[rng.integers(len(candidates))] + rng.uniform(-0.5, 0.5, 3)
            if all(np.linalg.norm((centre - c) * spacing_kji) > reach_mm + r + 3.0 for c, r in placed):
                break
        else:
            raise RuntimeError("could not place all lesions without overlap; use fewer or smaller lesions")
        placed.append((centre, reach_mm))
        axes = rng.uniform(0.75, 1.3, 3)
        axes /= np.prod(axes) ** (1 / 3)
        rotation = _random_rotation(rng)

        def shape_for(volume_ml):
            radius = (3 * volume_ml * 1000 / (4 * np.pi)) ** (1 / 3)
            return _ellipsoid(image.shape, centre, radius * axes, rotation, spacing_kji)

        if base_volume > 0:
            baseline_ids[shape_for(base_volume) & (baseline_ids == 0)] = number
        if follow_volume > 0:
            followup_ids[shape_for(follow_volume) & (followup_ids == 0)] = number
        lesions.append({"id": number, "status": fate, "factor": round(float(factor), 3)})

    def render(ids, rng_local):
        lesion = ndimage.gaussian_filter((ids > 0).astype(np.float32), 0.6)
        out = image * (1 - lesion) + lesion * lesion_contrast * wm_mean * (image > 0)
        head = ndimage.binary_dilation(image > 0, iterations=2)
        out = out * _smooth_field(image.shape, rng_local, 0.12)
        sigma = noise_fraction * wm_mean
        noisy = np.sqrt((out + rng_local.normal(0, sigma, out.shape)) ** 2 + rng_local.normal(0, sigma, out.shape) ** 2)
        return np.where(head, noisy, 0).astype(np.float32)

    baseline = geometry.image_from_array(render(baseline_ids, np.random.default_rng([seed, 1])), reference=t1)
    followup_in_baseline = geometry.image_from_array(render(followup_ids, np.random.default_rng([seed, 2])),
                                                     reference=t1)
    # head motion: follow-up point = R(baseline point); the follow-up grid samples R^-1(q)
    centre = np.array(t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in t1.GetSize()]))
    angles = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3))
    shift = rng.uniform(-translation_mm, translation_mm, 3)
    motion = sitk.Euler3DTransform(tuple(centre), *angles, tuple(shift))
    inverse = motion.GetInverse()
    grid = geometry.grid_of(t1)
    followup = geometry.resample_to_grid(followup_in_baseline, grid, sitk.sitkLinear, 0.0, inverse)
    followup_lesions = geometry.resample_to_grid(geometry.image_from_array(followup_ids, reference=t1), grid,
                                                 sitk.sitkNearestNeighbor, 0, inverse)
    baseline_lesions = geometry.image_from_array(baseline_ids, reference=t1)

    follow_array = sitk.GetArrayFromImage(followup_lesions)
    truth = []
    for lesion in lesions:
        number = lesion["id"]
        in_base = np.argwhere(baseline_ids == number)
        in_follow_base_space = np.argwhere(followup_ids == number)
        source = in_base if len(in_base) else in_follow_base_space
        centroid = geometry.lps_to_ras_points(geometry.physical_points_lps(
            t1, source[:, ::-1].astype(float).mean(0, keepdims=True)))[0]
        truth.append({**lesion, "centroid_ras": [round(float(v), 3) for v in centroid],
                      "volume_baseline_ml": round(float(len(in_base)) * voxel_ml, 4),
                      "volume_followup_ml": round(float((follow_array == number).sum()) * voxel_ml, 4)})
    return StudyPair(baseline, followup, baseline_lesions, followup_lesions, motion, truth)


def score_monitoring(result: dict, truth: list, min_volume_ml: float = 0.5):
    """(micro F1 of the status, relative volume errors, centroid errors in mm, failures) of a monitoring
    result against the phantom truth: each true lesion takes the nearest unmatched predicted one within
    5 mm; predicted lesions left over count against precision."""
    predicted = list(result["lesions"])
    correct, volume_errors, centroid_errors, failures = 0, [], [], []
    for lesion in truth:
        distances = [np.linalg.norm(np.array(p["centroid_ras"]) - lesion["centroid_ras"]) for p in predicted]
        if not distances or min(distances) > 5.0:
            failures.append((lesion["id"], lesion["status"], "unmatched"))
            continue
        match = predicted.pop(int(np.argmin(distances)))
        centroid_errors.append(min(distances))
        if match["status"] == lesion["status"]:
            correct += 1
        else:
            failures.append((lesion["id"], lesion["status"], match["status"], lesion.get("factor")))
        for key in ("volume_baseline_ml", "volume_followup_ml"):
            if lesion[key] >= min_volume_ml:
                volume_errors.append(abs(match[key] - lesion[key]) / lesion[key])
    precision = correct / max(len(result["lesions"]), 1)
    recall = correct / max(len(truth), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-9)
    return f1, volume_errors, centroid_errors, failures
