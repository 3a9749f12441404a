"""Image geometry: SimpleITK images <-> numpy/torch arrays and their affines.

Conventions (the only place besides ``mrml.py`` where geometry math lives):

* SimpleITK/ITK physical space is **LPS** (x grows to the patient's Left, y to Posterior).
  MRML/Slicer world space is **RAS**. The two differ by ``LPS_TO_RAS = diag(-1, -1, 1)``,
  which is its own inverse.
* ``sitk.GetArrayFromImage`` returns axes in **(k, j, i)** order (slowest first);
  ``IJK`` matrices below act on column vectors ``(i, j, k, 1)``.
* MONAI/nibabel style arrays are **(i, j, k)** ordered with a 4x4 **RAS** affine.
* ITK transforms map points of the fixed (output) space to the moving space, in LPS.
  A Slicer transform node's *from-parent* transform maps RAS points the same way,
  so ``from_parent_ras = F @ itk_lps @ F`` with ``F = diag(-1, -1, 1, 1)``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
LPS_TO_RAS_4 = np.diag([-1.0, -1.0, 1.0, 1.0])


def array_view(image: sitk.Image) -> np.ndarray:
    """Read-only numpy view in (k, j, i[, component]) order.

    The view does not keep ``image`` alive: hold the image in a variable for as long as the
    view is used (``array_view(make_image()) > 0`` reads freed memory).
    """
    return sitk.GetArrayViewFromImage(image)


def ijk_to_lps(image: "sitk.Image | dict") -> np.ndarray:
    """4x4 matrix mapping voxel indices (i, j, k, 1) to LPS millimetres.

    ``image`` is a SimpleITK image or a grid dict (``origin``, ``spacing``, ``direction``, as
    :func:`grid_of` returns; the direction row-major or as a matrix).
    """
    if isinstance(image, dict):
        spacing = np.array(image["spacing"], dtype=float)
        dim = len(spacing)
        direction = np.array(image["direction"], dtype=float).reshape(dim, dim)
        origin = np.array(image["origin"], dtype=float)
    else:
        dim = image.GetDimension()
        direction = np.array(image.GetDirection(), dtype=float).reshape(dim, dim)
        spacing = np.array(image.GetSpacing(), dtype=float)
        origin = np.array(image.GetOrigin(), dtype=float)
    if dim == 2:  # treat as one slice of a 3-D volume
        direction = np.pad(direction, ((0, 1), (0, 1)))
        direction[2, 2] = 1.0
        spacing = np.append(spacing, 1.0)
        origin = np.append(origin, 0.0)
    elif dim != 3:
        raise ValueError(f"{dim}-D image: only 2-D and 3-D images have an IJK-to-LPS matrix")
    matrix = np.eye(4)
    matrix[:3, :3] = direction * spacing[np.newaxis, :]
    matrix[:3, 3] = origin
    return matrix


def ijk_to_ras(image: sitk.Image) -> np.ndarray:
    """4x4 matrix mapping voxel indices (i, j, k, 1) to RAS millimetres (Slicer's IJKToRAS)."""
    return LPS_TO_RAS_4 @ ijk_to_lps(image)


def decompose_ijk_to_ras(matrix: np.ndarray) -> Tuple[Tuple[float, ...], Tuple[float, ...], Tuple[float, ...]]:
    """(origin_lps, spacing, direction_lps row-major) from a 4x4 IJK-to-RAS matrix."""
    matrix = np.asarray(matrix, dtype=float)
    lps = LPS_TO_RAS_4 @ matrix
    columns = lps[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise ValueError("IJK-to-RAS matrix has a zero-length axis")
    direction = columns / spacing[np.newaxis, :]
    return tuple(lps[:3, 3]), tuple(spacing), tuple(direction.ravel())


def set_geometry(image: sitk.Image, origin_lps: Sequence[float], spacing: Sequence[float],
                 direction_lps: Sequence[float]) -> sitk.Image:
    image.SetOrigin(tuple(float(v) for v in origin_lps))
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetDirection(tuple(float(v) for v in direction_lps))
    return image


def image_from_array(array_kji: np.ndarray, ijk_to_ras_matrix: Optional[np.ndarray] = None,
                     is_vector: bool = False, reference: Optional[sitk.Image] = None) -> sitk.Image:
    """SimpleITK image from a (k, j, i[, c]) array and either a RAS IJK matrix or a reference image."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji), isVector=is_vector)
    if reference is not None:
        image.CopyInformation(reference)
    elif ijk_to_ras_matrix is not None:
        set_geometry(image, *decompose_ijk_to_ras(ijk_to_ras_matrix))
    return image


def copy_geometry(source: sitk.Image, target: sitk.Image) -> sitk.Image:
    target.SetOrigin(source.GetOrigin())
    target.SetSpacing(source.GetSpacing())
    target.SetDirection(source.GetDirection())
    return target


def to_channel_first(image: sitk.Image) -> Tuple[np.ndarray, np.ndarray]:
    """(array of shape (1, I, J, K), 4x4 RAS affine): the MONAI/nibabel convention."""
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0).transpose(0, 3, 2, 1)
    else:
        array = array.transpose(2, 1, 0)[np.newaxis]
    return np.ascontiguousarray(array), ijk_to_ras(image)


def from_channel_first(array_cijk: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Inverse of :func:`to_channel_first` for a single-channel array on ``reference``'s grid."""
    array = np.asarray(array_cijk)
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(f"expected one channel, got {array.shape[0]}")
        array = array[0]
    return image_from_array(np.ascontiguousarray(array.transpose(2, 1, 0)), reference=reference)


def lps_to_ijk(image_or_grid: "sitk.Image | dict") -> np.ndarray:
    """4x4 matrix mapping LPS millimetres (x, y, z, 1) to continuous voxel indices (i, j, k, 1).

    The inverse of :func:`ijk_to_lps` (an image or a grid dict), as ITK's
    ``TransformPhysicalPointToContinuousIndex`` applies it; compose it with other 4x4 LPS maps.
    """
    return np.linalg.inv(ijk_to_lps(image_or_grid))


def world_to_index(image_or_grid: "sitk.Image | dict", points_lps: np.ndarray) -> np.ndarray:
    """Continuous voxel indices (N, 3), in (i, j, k) order, of (N, 3) LPS points (mm).

    Voxel centres are at integer indices (``np.rint`` gives the nearest voxel); the grid covers
    ``-0.5 <= index <= size - 0.5``. Inverse of :func:`index_to_world`.
    """
    matrix = lps_to_ijk(image_or_grid)
    points = np.asarray(points_lps, dtype=float)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def index_to_world(image_or_grid: "sitk.Image | dict", ijk: np.ndarray) -> np.ndarray:
    """LPS millimetres (N, 3) of (N, 3) continuous voxel indices (i, j, k) of an image or a grid dict."""
    matrix = ijk_to_lps(image_or_grid)
    ijk = np.asarray(ijk, dtype=float)
    return ijk @ matrix[:3, :3].T + matrix[:3, 3]


def physical_points_lps(image: sitk.Image, ijk: np.ndarray) -> np.ndarray:
    """LPS millimetres of (N, 3) continuous voxel indices (i, j, k) (:func:`index_to_world`)."""
    return index_to_world(image, ijk)


def lps_to_ras_points(points: np.ndarray) -> np.ndarray:
    """Flip (N, 3) points between LPS and RAS (the map is its own inverse)."""
    return np.asarray(points, dtype=float) * np.array([-1.0, -1.0, 1.0])


ras_to_lps_points = lps_to_ras_points


def describe(image: sitk.Image) -> dict:
    """Geometry and pixel type as plain JSON-able values (LPS and RAS)."""
    info = {
        "dimension": image.GetDimension(),
        "size": list(image.GetSize()),
        "spacing_mm": [float(v) for v in image.GetSpacing()],
        "origin_lps_mm": [float(v) for v in image.GetOrigin()],
        "direction_lps": [float(v) for v in image.GetDirection()],
        "pixel_type": image.GetPixelIDTypeAsString(),
        "components": image.GetNumberOfComponentsPerPixel(),
    }
    if image.GetDimension() == 3:
        ras = ijk_to_ras(image)
        info["ijk_to_ras"] = ras.tolist()
        info["orientation"] = orientation_code(image)
    return info


def orientation_code(image: sitk.Image) -> str:
    """Three-letter RAS-style code of the voxel axes, e.g. 'LPS' or 'RAS' (direction of increasing i, j, k)."""
    return orientation_code_from_direction(image.GetDirection())


def orientation_code_from_direction(direction: np.ndarray | Sequence[float]) -> str:
    """:func:`orientation_code` of a 3x3 LPS direction matrix (columns: the i, j, k axes), or of its
    nine values in row-major order (``image.GetDirection()``)."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        tuple(float(v) for v in np.asarray(direction).ravel()))


def same_grid(a: sitk.Image, b: sitk.Image, tolerance_mm: float = 1e-4) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance_mm)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance_mm)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


def voxel_volume_ml(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing())) / 1000.0


# --- transforms -----------------------------------------------------------------------------

def linear_matrix_lps(transform: sitk.Transform) -> np.ndarray:
    """4x4 LPS matrix of a linear (rigid, similarity, affine, or composite of those) transform."""
    origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.eye(4)
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        matrix[:3, axis] = np.array(transform.TransformPoint(tuple(unit))) - origin
    matrix[:3, 3] = origin
    return matrix


def is_linear(transform: sitk.Transform) -> bool:
    return bool(transform.IsLinear())


def affine_from_matrix_lps(matrix: np.ndarray) -> sitk.AffineTransform:
    matrix = np.asarray(matrix, dtype=float)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tuple(matrix[:3, :3].ravel()))
    affine.SetTranslation(tuple(matrix[:3, 3]))
    return affine


def conjugate_lps_ras(matrix: np.ndarray) -> np.ndarray:
    """Express a 4x4 point map given in LPS in RAS (or back: the map is an involution)."""
    return LPS_TO_RAS_4 @ np.asarray(matrix, dtype=float) @ LPS_TO_RAS_4


def transform_points_ras(transform: sitk.Transform, points_ras: np.ndarray) -> np.ndarray:
    """Apply an ITK (LPS) transform to (N, 3) RAS points, returning RAS points."""
    points_lps = ras_to_lps_points(points_ras)
    mapped = np.array([transform.TransformPoint(tuple(p)) for p in points_lps])
    return lps_to_ras_points(mapped)


def displacement_field_lps_to_ras(field_kji3: np.ndarray) -> np.ndarray:
    """Flip the vector components of a displacement field array between LPS and RAS."""
    return np.asarray(field_kji3) * np.array([-1.0, -1.0, 1.0])


# --- grids ------------------------------------------------------------------------------------

def grid_for_spacing(image: sitk.Image, spacing_mm: Sequence[float]) -> dict:
    """Grid (size, origin, spacing, direction) with new spacing covering the same physical
    extent: the outer voxel corners stay where they were, the direction is unchanged."""
    spacing_new = np.asarray(spacing_mm, dtype=float)
    if spacing_new.shape != (image.GetDimension(),) or np.any(~np.isfinite(spacing_new)) or np.any(spacing_new <= 0):
        raise ValueError(f"spacing must be {image.GetDimension()} positive numbers in mm, got {list(spacing_mm)}")
    spacing_old = np.array(image.GetSpacing())
    size_old = np.array(image.GetSize())
    size_new = np.maximum(1, np.round(size_old * spacing_old / spacing_new)).astype(int)
    dim = image.GetDimension()
    direction = np.array(image.GetDirection()).reshape(dim, dim)
    # corner of voxel 0 (index -0.5) stays in place
    corner = np.array(image.GetOrigin()) - direction @ (spacing_old / 2)
    origin_new = corner + direction @ (spacing_new / 2)
    return {"size": [int(v) for v in size_new], "origin": tuple(float(v) for v in origin_new),
            "spacing": tuple(float(v) for v in spacing_new), "direction": image.GetDirection()}


def resample_to_grid(image: sitk.Image, grid: dict, interpolator: int = sitk.sitkLinear,
                     default_value: float = 0.0, transform: Optional[sitk.Transform] = None) -> sitk.Image:
    """Resample ``image`` onto ``grid`` (as from :func:`grid_for_spacing`) through ``transform``
    (fixed/output -> moving/input, identity by default)."""
    return sitk.Resample(image, grid["size"], transform or sitk.Transform(), interpolator, grid["origin"],
                         grid["spacing"], grid["direction"], default_value, image.GetPixelID())


def axis_aligned_grid(image: sitk.Image, spacing_mm: Sequence[float], orientation: str = "RAS") -> dict:
    """Grid whose index axes point as ``orientation`` says (e.g. 'RAS': i to the Right, j Anterior,
    k Superior; no obliquity), with ``spacing_mm``, covering the physical extent of ``image``.

    Two acquisitions of the same head in different orientations land on the same kind of grid,
    so a network sees the anatomy the same way in both."""
    spacing = np.asarray(spacing_mm, dtype=float)
    axes = {"R": (-1, 0, 0), "L": (1, 0, 0), "A": (0, -1, 0), "P": (0, 1, 0), "I": (0, 0, -1), "S": (0, 0, 1)}
    direction = np.array([axes[letter] for letter in orientation.upper()], dtype=float).T  # columns: index axes (LPS)
    bounds = physical_bounds_lps(image)
    corners = np.array([[x, y, z] for x in bounds[:, 0] for y in bounds[:, 1] for z in bounds[:, 2]])
    in_axes = corners @ direction  # coordinates along each new index axis
    low, high = in_axes.min(axis=0), in_axes.max(axis=0)
    size = np.maximum(1, np.ceil((high - low) / spacing - 1e-6)).astype(int)
    origin = direction @ (low + spacing / 2)
    return {"size": [int(v) for v in size], "origin": tuple(float(v) for v in origin),
            "spacing": tuple(float(v) for v in spacing), "direction": tuple(float(v) for v in direction.ravel())}


def image_on_grid(array_kji: np.ndarray, grid: dict) -> sitk.Image:
    """SimpleITK image of a (k, j, i) array placed on ``grid``."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    return set_geometry(image, grid["origin"], grid["spacing"], grid["direction"])


def array_kji_to_ijk(array_kji: np.ndarray) -> np.ndarray:
    """SimpleITK (k, j, i) voxel order -> nibabel/MONAI (i, j, k) order (a view)."""
    return np.asarray(array_kji).transpose(2, 1, 0)


def array_ijk_to_kji(array_ijk: np.ndarray) -> np.ndarray:
    """nibabel/MONAI (i, j, k) voxel order -> SimpleITK (k, j, i) order (a view)."""
    return np.asarray(array_ijk).transpose(2, 1, 0)


def dicom_plane_grid(position_lps: Sequence[float], orientation: Sequence[float], pixel_spacing: Sequence[float],
                     rows: int, columns: int, thickness_mm: float = 1.0) -> dict:
    """Grid of one DICOM image plane (one slice, or one frame of a multi-frame image).

    ImagePositionPatient is the centre of the first pixel; ImageOrientationPatient holds the
    direction in which the column index grows (along a row) and then the direction in which the
    row index grows; PixelSpacing is (between rows, between columns). So index i is the column,
    j the row, and k the plane normal (one voxel of ``thickness_mm``).
    """
    row_direction = np.asarray(orientation[:3], dtype=float)
    column_direction = np.asarray(orientation[3:6], dtype=float)
    row_direction /= np.linalg.norm(row_direction)
    column_direction /= np.linalg.norm(column_direction)
    normal = np.cross(row_direction, column_direction)
    direction = np.column_stack([row_direction, column_direction, normal])
    spacing = (float(pixel_spacing[1]), float(pixel_spacing[0]), float(thickness_mm))
    return {"size": [int(columns), int(rows), 1], "origin": tuple(float(v) for v in position_lps),
            "spacing": spacing, "direction": tuple(float(v) for v in direction.ravel())}


def slice_spacing_mm(positions_lps: Sequence[Sequence[float]], orientation: Sequence[float]) -> Optional[float]:
    """Median distance between neighbouring slice positions along the plane normal (None for one slice)."""
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float))
    normal /= np.linalg.norm(normal)
    along = np.sort(np.asarray(positions_lps, float) @ normal)
    steps = np.diff(along)
    steps = steps[steps > 1e-6]
    return float(np.median(steps)) if steps.size else None


def grid_of(image: sitk.Image) -> dict:
    return {"size": list(image.GetSize()), "origin": image.GetOrigin(), "spacing": image.GetSpacing(),
            "direction": image.GetDirection()}


def reorient(image: sitk.Image, orientation: str) -> sitk.Image:
    """Permute/flip axes so the index axes point as the ITK orientation code says
    (e.g. 'RAS': i to the Right, j Anterior, k Superior). World positions are unchanged."""
    return sitk.DICOMOrient(image, orientation)


def physical_bounds_lps(image: sitk.Image) -> np.ndarray:
    """(2, 3) min/max LPS corners (mm) of the image's extent (voxel edges included)."""
    size = np.array(image.GetSize(), float)
    corners = np.array([[x, y, z] for x in (-0.5, size[0] - 0.5) for y in (-0.5, size[1] - 0.5)
                        for z in (-0.5, size[2] - 0.5)])
    points = physical_points_lps(image, corners)
    return np.stack([points.min(axis=0), points.max(axis=0)])


def bounds_overlap_mm(a: sitk.Image, b: sitk.Image) -> np.ndarray:
    """Overlap (mm, per LPS axis; <= 0 means none) of two images' physical bounding boxes."""
    bounds_a, bounds_b = physical_bounds_lps(a), physical_bounds_lps(b)
    return np.minimum(bounds_a[1], bounds_b[1]) - np.maximum(bounds_a[0], bounds_b[0])
