"""Lesion detection and localization from a labelmap: connected components and their measures.

Volumes are in mL (1 mL = 1000 mm^3), positions in RAS millimetres (Slicer's world space),
computed in the image's own space (never after resampling).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import geometry

TISSUE_NAMES = {1: "Cerebrospinal fluid", 2: "Gray matter", 3: "White matter"}


@dataclasses.dataclass
class Lesion:
    id: str
    label: int                       # component number in the lesion component image (1..N)
    volume_ml: float
    voxels: int
    centroid_ras: list               # [R, A, S] mm
    bbox_ras_min: list
    bbox_ras_max: list
    max_diameter_mm: float
    mean_intensity: Optional[float] = None
    max_intensity: Optional[float] = None
    tissue: Optional[str] = None     # tissue around the lesion when a tissue labelmap is given

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def lesion_components(mask: np.ndarray, voxel_ml: float, min_volume_ml: float = 0.0) -> tuple[np.ndarray, int]:
    """26-connected components of a boolean (k, j, i) mask, numbered by decreasing size;
    components smaller than ``min_volume_ml`` are dropped."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return components.astype(np.int32), 0
    sizes = np.bincount(components.ravel())[1:]
    keep = np.nonzero(sizes * voxel_ml >= min_volume_ml)[0]
    order = keep[np.argsort(-sizes[keep], kind="stable")]
    relabel = np.zeros(count + 1, np.int32)
    relabel[order + 1] = np.arange(1, len(order) + 1)
    return relabel[components], len(order)


def _max_diameter_mm(points_mm: np.ndarray) -> float:
    if len(points_mm) < 2:
        return 0.0
    if len(points_mm) > 4:
        try:
            from scipy.spatial import ConvexHull

            points_mm = points_mm[ConvexHull(points_mm).vertices]
        except Exception:  # noqa: BLE001 - flat (coplanar) lesions: use all points
            pass
    if len(points_mm) > 3000:
        points_mm = points_mm[:: len(points_mm) // 3000 + 1]
    differences = points_mm[:, None, :] - points_mm[None, :, :]
    return float(np.sqrt((differences ** 2).sum(-1)).max())


def measure_lesions(lesion_mask: sitk.Image, intensity: Optional[sitk.Image] = None,
                    tissue_labels: Optional[sitk.Image] = None, min_volume_ml: float = 0.01,
                    id_prefix: str = "L") -> tuple[list[Lesion], sitk.Image]:
    """(lesions sorted by decreasing volume, component label image on the mask's grid)."""
    mask = geometry.array_view(lesion_mask) > 0
    voxel_ml = geometry.voxel_volume_ml(lesion_mask)
    components, count = lesion_components(mask, voxel_ml, min_volume_ml)
    component_image = geometry.image_from_array(components.astype(np.uint16 if count < 65535 else np.int32),
                                                reference=lesion_mask)
    if count == 0:
        return [], component_image
    intensity_array = geometry.array_view(intensity) if intensity is not None else None
    tissue_array = geometry.array_view(tissue_labels) if tissue_labels is not None else None
    spacing = np.array(lesion_mask.GetSpacing())
    # voxel corner offsets (in index units) so that the diameter spans the voxels' extent
    slices = ndimage.find_objects(components)
    lesions = []
    for number, box in enumerate(slices, start=1):
        local = components[box] == number
        kji = np.argwhere(local) + np.array([s.start for s in box])
        ijk = kji[:, ::-1].astype(float)
        centroid_lps = geometry.physical_points_lps(lesion_mask, ijk.mean(axis=0, keepdims=True))[0]
        eroded = ndimage.binary_erosion(local)
        surface = np.argwhere(local & ~eroded) + np.array([s.start for s in box])
        surface_lps = geometry.physical_points_lps(lesion_mask, surface[:, ::-1].astype(float))
        diameter = _max_diameter_mm(surface_lps) + float(spacing.mean())  # centre-to-centre + one voxel
        corners_lps = geometry.physical_points_lps(
            lesion_mask, np.array([[box[2].start, box[1].start, box[0].start],
                                   [box[2].stop - 1, box[1].stop - 1, box[0].stop - 1]], float))
        corners_ras = geometry.lps_to_ras_points(corners_lps)
        lesion = Lesion(
            id=f"{id_prefix}{number}", label=number, voxels=int(local.sum()),
            volume_ml=round(float(local.sum()) * voxel_ml, 6),
            centroid_ras=[round(float(v), 3) for v in geometry.lps_to_ras_points(centroid_lps[None])[0]],
            bbox_ras_min=[round(float(v), 3) for v in corners_ras.min(axis=0)],
            bbox_ras_max=[round(float(v), 3) for v in corners_ras.max(axis=0)],
            max_diameter_mm=round(diameter, 2))
        if intensity_array is not None:
            values = intensity_array[box][local]
            lesion.mean_intensity = round(float(values.mean()), 4)
            lesion.max_intensity = round(float(values.max()), 4)
        if tissue_array is not None:
            ring = ndimage.binary_dilation(components == number, iterations=2) & (components != number)
            around = tissue_array[ring]
            around = around[np.isin(around, list(TISSUE_NAMES))]
            if around.size:
                lesion.tissue = TISSUE_NAMES[int(np.bincount(around).argmax())]
        lesions.append(lesion)
    return lesions, component_image


def lesion_burden_ml(lesions: Sequence[Lesion]) -> float:
    return round(float(sum(l.volume_ml for l in lesions)), 4)
