"""Known-transform registration cases built from the bundled MNI ICBM152 sample.

Shared by the registration tests and ``Testing/Benchmarks/bench_register.py``.

Each case has a fixed image (the T1 with its own noise), a moving image made by resampling
the T1 (or a T2-like contrast of it) through a known map ``moving_to_fixed`` (LPS, mm) with
its own noise and multiplicative bias field, and 1,000 brain points in moving space.
A registration result ``T`` (fixed -> moving, the ITK convention) is exact when
``T(moving_to_fixed(y)) == y``, so the target registration error needs no inverse:
``TRE(y) = |T(moving_to_fixed(y)) - y|``.

Cases:
  (a) ``rigid``: rotations up to 15 deg and translations up to 20 mm;
  (b) ``affine``: up to 10 % scaling and shear, with a small rotation and translation;
  (c) ``deformable``: a smooth synthetic deformation, 6 mm maximum displacement;
  (d) ``multimodal``: a T2-like inverted contrast of the same head, rigid.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Dict

import numpy as np
import SimpleITK as sitk

CASE_NAMES = ("rigid", "affine", "deformable", "multimodal")
POINT_COUNT = 1000


@dataclasses.dataclass
class RegistrationCase:
    name: str
    fixed: sitk.Image
    moving: sitk.Image
    moving_to_fixed: sitk.Transform  # LPS mm; the true fixed->moving map is its inverse
    points_moving_lps: np.ndarray  # (1000, 3) brain points in moving space
    fixed_mask: sitk.Image  # brain mask on the fixed grid (uint8)
    moving_mask: sitk.Image  # brain mask on the moving grid (uint8)

    def tre_mm(self, transform: sitk.Transform) -> np.ndarray:
        """Target registration error (mm) of a fixed->moving transform at the 1,000 points."""
        errors = np.empty(len(self.points_moving_lps))
        for index, point in enumerate(self.points_moving_lps):
            fixed_point = self.moving_to_fixed.TransformPoint(tuple(float(v) for v in point))
            errors[index] = np.linalg.norm(np.array(transform.TransformPoint(fixed_point)) - point)
        return errors

    def tre_summary(self, transform: sitk.Transform) -> Dict[str, float]:
        errors = self.tre_mm(transform)
        return {"mean_mm": round(float(errors.mean()), 4), "max_mm": round(float(errors.max()), 4)}

    def initial_tre_summary(self) -> Dict[str, float]:
        return self.tre_summary(sitk.Transform(3, sitk.sitkIdentity))


def _sample(name: str) -> sitk.Image:
    from MedAnalysisLib import resources

    return sitk.ReadImage(str(resources.samplePath(name)), sitk.sitkFloat32)


def _downsample(image: sitk.Image, spacing_mm: float, interpolator=sitk.sitkLinear) -> sitk.Image:
    if spacing_mm <= image.GetSpacing()[0] + 1e-6:
        return image
    if interpolator != sitk.sitkNearestNeighbor:
        sigma = 0.5 * math.sqrt(max(spacing_mm ** 2 - image.GetSpacing()[0] ** 2, 0.0))
        image = sitk.SmoothingRecursiveGaussian(image, sigma)
    size = [int(round(n * s / spacing_mm)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    # keep the physical centre: the new grid covers the same extent
    old_center = np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = old_center - direction @ (np.array([(n - 1) / 2 for n in size]) * spacing_mm)
    return sitk.Resample(image, size, sitk.Transform(), interpolator, tuple(origin), (spacing_mm,) * 3,
                         image.GetDirection(), 0.0, image.GetPixelID())


def _brain_center(image: sitk.Image) -> tuple:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(image > 0, sitk.sitkUInt8))
    return stats.GetCentroid(1)


def _bias_field(reference: sitk.Image, strength: float, seed: int) -> np.ndarray:
    """Smooth multiplicative field 1 +/- strength (k, j, i order)."""
    rng = np.random.default_rng(seed)
    shape = sitk.GetArrayViewFromImage(reference).shape
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    field = np.zeros(shape)
    for axis in range(3):
        field += rng.uniform(-1, 1) * grids[axis]
    field += rng.uniform(-1, 1) * grids[0] * grids[1] + rng.uniform(-1, 1) * grids[2] ** 2
    field = field / (np.abs(field).max() + 1e-12)
    return 1.0 + strength * field


def _with_noise_and_bias(image: sitk.Image, noise_fraction: float, bias: float, seed: int) -> sitk.Image:
    rng = np.random.default_rng(seed)
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    peak = float(np.percentile(array[array > 0], 99)) if np.any(array > 0) else 1.0
    if bias:
        array = array * _bias_field(image, bias, seed + 1).astype(np.float32)
    array = array + rng.normal(0.0, noise_fraction * peak, size=array.shape).astype(np.float32)
    result = sitk.GetImageFromArray(np.clip(array, 0.0, None).astype(np.float32))
    result.CopyInformation(image)
    return result


def _rigid(center, angles_deg, translation_mm) -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform()
    transform.SetCenter(center)
    transform.SetRotation(*[math.radians(a) for a in angles_deg])
    transform.SetTranslation(tuple(float(t) for t in translation_mm))
    return transform


def _affine(center) -> sitk.AffineTransform:
    """10 % scaling and 0.08 shear with a 5 deg rotation and a 9 mm translation."""
    rotation = _rigid(center, (3.0, -5.0, 4.0), (0, 0, 0))
    scale = np.diag([1.10, 0.92, 1.06])
    shear = np.array([[1.0, 0.08, 0.0], [0.0, 1.0, -0.06], [0.05, 0.0, 1.0]])
    matrix = np.array(rotation.GetMatrix()).reshape(3, 3) @ scale @ shear
    transform = sitk.AffineTransform(3)
    transform.SetCenter(center)
    transform.SetMatrix(tuple(matrix.ravel()))
    transform.SetTranslation((-6.0, 9.0, 4.0))
    return transform


def _smooth_deformation(reference: sitk.Image, center, max_mm: float, seed: int) -> sitk.DisplacementFieldTransform:
    """Sum of Gaussian bumps (sigma 28 mm) inside the brain, scaled to ``max_mm`` maximum displacement."""
    rng = np.random.default_rng(seed)
    field_spacing = 4.0
    extent = np.array(reference.GetSize()) * np.array(reference.GetSpacing())
    size = [int(math.ceil(e / field_spacing)) + 1 for e in extent]
    grid = sitk.Image(size, sitk.sitkVectorFloat64, 3)
    grid.SetSpacing((field_spacing,) * 3)
    grid.SetDirection(reference.GetDirection())
    # same physical centre as the reference image
    ref_center = np.array(reference.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in reference.GetSize()]))
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    grid.SetOrigin(tuple(ref_center - direction @ (np.array([(n - 1) / 2 for n in size]) * field_spacing)))
    kk, jj, ii = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    index = np.stack([ii, jj, kk], axis=-1).reshape(-1, 3).astype(float)
    points = index * field_spacing @ direction.T + np.array(grid.GetOrigin())
    displacement = np.zeros_like(points)
    sigma = 28.0
    for _ in range(6):
        bump_center = np.array(center) + rng.uniform(-35.0, 35.0, size=3)
        amplitude = rng.normal(0.0, 1.0, size=3)
        weight = np.exp(-np.sum((points - bump_center) ** 2, axis=1) / (2 * sigma ** 2))
        displacement += weight[:, None] * amplitude[None, :]
    displacement *= max_mm / np.linalg.norm(displacement, axis=1).max()
    field = sitk.GetImageFromArray(displacement.reshape(*size[::-1], 3), isVector=True)
    field.CopyInformation(grid)
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def _t2_like(spacing_mm: float) -> sitk.Image:
    """Inverted contrast from the tissue probability maps: CSF bright, GM middle, WM dark."""
    csf, gm, wm = (_downsample(_sample(f"mni152_{t}.nii.gz"), spacing_mm) for t in ("csf", "gm", "wm"))
    image = 230.0 * csf + 120.0 * gm + 55.0 * wm
    return sitk.Cast(image, sitk.sitkFloat32)


def _case_transform(name: str, reference: sitk.Image, center) -> sitk.Transform:
    if name in ("rigid",):
        return _rigid(center, (15.0, -9.0, 11.0), (12.0, -20.0, 9.0))
    if name == "multimodal":
        return _rigid(center, (-8.0, 12.0, -6.0), (-10.0, 14.0, -7.0))
    if name == "affine":
        return _affine(center)
    if name == "deformable":
        return _smooth_deformation(reference, center, 6.0, seed=5)
    raise KeyError(name)


@functools.lru_cache(maxsize=8)
def make_case(name: str, spacing_mm: float = 1.0) -> RegistrationCase:
    """Build case ``name`` ('rigid', 'affine', 'deformable', 'multimodal') on a ``spacing_mm`` grid."""
    seeds = {"rigid": 11, "affine": 22, "deformable": 33, "multimodal": 44}[name]
    t1 = _downsample(_sample("mni152_t1.nii.gz"), spacing_mm)
    labels = _downsample(sitk.ReadImage(str(_labels_path()), sitk.sitkUInt8), spacing_mm, sitk.sitkNearestNeighbor)
    brain = sitk.Cast(labels > 0, sitk.sitkUInt8)
    center = _brain_center(brain)
    moving_to_fixed = _case_transform(name, t1, center)
    source = _t2_like(spacing_mm) if name == "multimodal" else t1

    fixed = _with_noise_and_bias(t1, 0.02, 0.0, seeds)
    warped = sitk.Resample(source, t1, moving_to_fixed, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    moving = _with_noise_and_bias(warped, 0.03, 0.15, seeds + 100)
    moving_mask = sitk.Resample(brain, t1, moving_to_fixed, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)

    rng = np.random.default_rng(seeds + 200)
    mask_kji = np.argwhere(sitk.GetArrayViewFromImage(sitk.BinaryErode(moving_mask, [2, 2, 2])) > 0)
    chosen = mask_kji[rng.choice(len(mask_kji), POINT_COUNT, replace=False)][:, ::-1].astype(float)
    chosen += rng.uniform(-0.5, 0.5, size=chosen.shape)
    matrix = np.array(moving.GetDirection()).reshape(3, 3) * np.array(moving.GetSpacing())
    points = chosen @ matrix.T + np.array(moving.GetOrigin())
    return RegistrationCase(name, fixed, moving, moving_to_fixed, points, brain, moving_mask)


def _labels_path():
    from MedAnalysisLib import resources

    return resources.samplePath("mni152_tissue_labels.nii.gz")


def case_factories(spacing_mm: float = 1.0) -> Dict[str, Callable[[], RegistrationCase]]:
    return {name: functools.partial(make_case, name, spacing_mm) for name in CASE_NAMES}


def identity_tre(case: RegistrationCase) -> Dict[str, float]:
    return case.initial_tre_summary()


__all__ = ["RegistrationCase", "make_case", "CASE_NAMES", "case_factories", "identity_tre"]
