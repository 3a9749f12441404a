"""Registration transforms: conversion, composition, landmarks, B-spline grids, transform file I/O.

Every transform maps points of the **fixed** image to the **moving** image (ITK convention,
LPS, mm). Chains of linear transforms collapse into one ``AffineTransform`` (:func:`compose`);
:func:`bspline_grid` lays out a cubic ``BSplineTransform`` on an image's domain (ITK's layout)
and :func:`refine_bspline_coefficients` halves its mesh exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .. import geometry
from ..errors import InputError
from ..progress import atomic_output, output_suffix
from ..provenance import sidecar_path

TRANSFORM_SUFFIXES = (".tfm", ".txt", ".h5", ".hdf5")


# --- transforms --------------------------------------------------------------------------------

def _as_affine(transform: sitk.Transform, center: Sequence[float]) -> sitk.AffineTransform:
    """The linear ``transform`` as an AffineTransform with the given centre of rotation."""
    matrix = geometry.linear_matrix_lps(transform)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(tuple(float(c) for c in center))
    affine.SetMatrix(tuple(matrix[:3, :3].ravel()))
    center = np.asarray(center, dtype=float)
    affine.SetTranslation(tuple(matrix[:3, :3] @ center + matrix[:3, 3] - center))
    return affine


def _as_rigid(transform: sitk.Transform, center: Sequence[float]) -> Optional[sitk.Euler3DTransform]:
    """The linear ``transform`` as an Euler3DTransform if it is a rotation + translation, else None."""
    matrix = geometry.linear_matrix_lps(transform)
    rotation = matrix[:3, :3]
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-6) or np.linalg.det(rotation) < 0:
        return None
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(tuple(float(c) for c in center))
    rigid.SetMatrix(tuple(rotation.ravel()))
    center = np.asarray(center, dtype=float)
    rigid.SetTranslation(tuple(rotation @ center + matrix[:3, 3] - center))
    return rigid


def compose(outer: sitk.Transform, inner: sitk.Transform) -> sitk.Transform:
    """``outer(inner(x))``: one AffineTransform when both are linear, else a CompositeTransform."""
    if outer.IsLinear() and inner.IsLinear():
        matrix = geometry.linear_matrix_lps(outer) @ geometry.linear_matrix_lps(inner)
        return geometry.affine_from_matrix_lps(matrix)
    return sitk.CompositeTransform([outer, inner])


def _identity() -> sitk.Transform:
    return sitk.AffineTransform(3)


def landmark_transform(fixed_points_lps, moving_points_lps) -> sitk.Transform:
    """Rigid transform fixed -> moving (LPS) fitted to corresponding landmarks (least squares)."""
    fixed_points = np.asarray(fixed_points_lps if fixed_points_lps is not None else [], dtype=float).reshape(-1, 3)
    moving_points = np.asarray(moving_points_lps if moving_points_lps is not None else [], dtype=float).reshape(-1, 3)
    if len(fixed_points) != len(moving_points):
        raise InputError("landmarks", f"{len(fixed_points)} fixed and {len(moving_points)} moving landmarks: "
                                      "they must correspond one to one")
    if len(fixed_points) < 3:
        raise InputError("landmarks", f"{len(fixed_points)} landmark pairs: at least 3 are needed")
    centered = fixed_points - fixed_points.mean(axis=0)
    if np.linalg.matrix_rank(centered, tol=1e-3) < 2:
        raise InputError("landmarks", "the fixed landmarks are collinear: place at least 3 points not on one line")
    transform = sitk.LandmarkBasedTransformInitializer(sitk.VersorRigid3DTransform(),
                                                       fixed_points.ravel().tolist(), moving_points.ravel().tolist())
    return sitk.Euler3DTransform(transform.GetCenter(), *_euler_angles(transform), transform.GetTranslation())


def _euler_angles(transform: sitk.Transform) -> Tuple[float, float, float]:
    euler = sitk.Euler3DTransform()
    euler.SetCenter(transform.GetCenter())
    euler.SetMatrix(transform.GetMatrix())
    return euler.GetAngleX(), euler.GetAngleY(), euler.GetAngleZ()


def read_transform(path: "str | os.PathLike") -> sitk.Transform:
    """An ITK transform file (fixed -> moving, LPS), with InputError on failure."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "initial transform file does not exist (use --init geometry, moments or a "
                               "transform file)")
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError:
        raise InputError(path, "not a readable ITK transform file (.tfm, .txt, .h5)") from None
    if transform.GetDimension() != 3:
        raise InputError(path, f"{transform.GetDimension()}-D transform: a 3-D transform is needed")
    return transform


def transform_points(transform: sitk.Transform, points_lps: np.ndarray) -> np.ndarray:
    """(N, 3) LPS points through an ITK transform (vectorized for linear transforms)."""
    points_lps = np.asarray(points_lps, dtype=float)
    if transform.IsLinear():
        matrix = geometry.linear_matrix_lps(transform)
        return points_lps @ matrix[:3, :3].T + matrix[:3, 3]
    return np.array([transform.TransformPoint(tuple(float(v) for v in p)) for p in points_lps]).reshape(-1, 3)


def bspline_grid(image: sitk.Image, mesh: Sequence[int]) -> sitk.BSplineTransform:
    """Cubic B-spline transform (zero displacement) whose domain is the image's voxel extent.

    The control-point grid has the image's direction, ``mesh[a]`` intervals along each image
    axis a, and one extra control point before and two after (ITK's layout for order 3), so
    the mesh can be refined exactly by doubling ``mesh``.
    """
    mesh = np.asarray(mesh, dtype=int)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    extent = np.array(image.GetSize()) * spacing
    grid_spacing = extent / mesh
    corner = np.array(image.GetOrigin()) - direction @ (spacing / 2.0)
    origin = corner - direction @ grid_spacing
    transform = sitk.BSplineTransform(3, 3)
    transform.SetFixedParameters([*(mesh + 3).astype(float), *origin, *grid_spacing, *direction.ravel()])
    return transform


def refine_bspline_coefficients(coefficients: np.ndarray) -> np.ndarray:
    """Exact refinement (knot insertion) of cubic B-spline coefficients: each mesh interval is halved.

    ``coefficients`` has shape (3, Sz, Sy, Sx) with S = mesh + 3 per axis (ITK layout); the result
    has S' = 2 * mesh + 3 and describes the same displacement field on the domain.
    """
    result = np.asarray(coefficients, dtype=float)
    for axis in (1, 2, 3):
        moved = np.moveaxis(result, axis, 0)
        mesh = moved.shape[0] - 3
        fine = np.zeros((2 * mesh + 3,) + moved.shape[1:])
        # fine point 2j-1 coincides with coarse point j; even fine points sit half-way
        fine[1:2 * mesh + 2:2] = (moved[0:mesh + 1] + 6.0 * moved[1:mesh + 2] + moved[2:mesh + 3]) / 8.0
        fine[0:2 * mesh + 3:2] = (moved[0:mesh + 2] + moved[1:mesh + 3]) / 2.0
        result = np.moveaxis(fine, 0, axis)
    return np.ascontiguousarray(result)


# --- files ---------------------------------------------------------------------------------------------

def check_transform_path(path: "str | os.PathLike") -> Path:
    """An output transform path with a suffix ITK writes (.tfm/.txt text, .h5/.hdf5 binary)."""
    path = Path(path)
    suffix = output_suffix(path)
    if suffix not in TRANSFORM_SUFFIXES:
        raise InputError(path, f"unsupported transform extension '{suffix}' (use .tfm or .h5)")
    return path


def write_transform(transform: sitk.Transform, path: "str | os.PathLike", provenance: Optional[dict] = None) -> Path:
    """Write an ITK transform file (fixed -> moving, LPS) atomically, with an optional provenance sidecar."""
    path = check_transform_path(path)
    with atomic_output(path) as tmp:
        sitk.WriteTransform(transform, str(tmp))
        if provenance is not None:
            with atomic_output(sidecar_path(path)) as tmp_sidecar:
                tmp_sidecar.write_text(json.dumps(provenance, indent=2, sort_keys=True, default=str))
    return path
