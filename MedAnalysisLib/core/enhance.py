"""Image enhancement: denoising, bias-field correction, intensity normalization, contrast
enhancement, resampling and cropping, run as one pipeline of steps.

All spatial parameters are in millimetres. Images are SimpleITK images (LPS); outputs
are float32 unless a step keeps the input type (nearest-neighbour resampling).
Order of the pipeline: resample -> bias-field correction -> denoise -> normalize ->
CLAHE -> crop to foreground.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from . import geometry, imageguard
from .enhance_presets import PRESETS
from .errors import InputError
from .parameters import option, parse_spacing, positive
from .progress import ProgressReporter

MIN_VOXELS_PER_AXIS = 4  # the recursive Gaussian and the bias-field fit need this many along each axis
DENOISE_METHODS = ("gaussian", "median", "curvature", "gradient", "nlm")
BIAS_METHODS = ("tissue", "n4")
NORMALIZE_METHODS = ("zscore", "minmax", "percentile", "histmatch")
INTERPOLATORS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}


def _preset(text: str) -> Optional[str]:
    return None if str(text).strip().lower() in ("", "none") else str(text).strip()


@dataclasses.dataclass
class EnhancementParameters:
    """Every setting of the enhancement pipeline, declared once: the panel, the logic, the CLI
    options and the batch columns all come from these fields (see ``core/parameters.py``)."""

    preset: Optional[str] = option(None, "named preset (see --list-presets); explicit settings override it",
                                   parse=_preset, metavar="NAME")
    # resampling
    spacing_mm: Optional[Sequence[float]] = option(None, "resample to this voxel spacing ('1' or '1,1,3')",
                                                   unit="mm", parse=parse_spacing, flag="--spacing",
                                                   metavar="SX,SY,SZ")
    interpolation: str = option("linear", "interpolation for resampling", choices=tuple(INTERPOLATORS))
    # bias field
    bias_correct: bool = option(False, "correct the bias field")
    bias_method: str = option("tissue", "bias-field method", choices=BIAS_METHODS)
    bias_shrink_factor: int = 4
    bias_iterations: Sequence[int] = (50, 40, 30)
    bias_spline_spacing_mm: float = 40.0
    bias_tissue_classes: int = 3
    # denoising
    denoise: Optional[str] = option(None, "denoising method", choices=DENOISE_METHODS)
    gaussian_sigma_mm: float = option(0.8, "Gaussian denoising sigma", unit="mm", parse=positive)
    median_radius_mm: float = 1.0
    diffusion_iterations: int = 5
    diffusion_conductance: float = 1.0
    nlm_patch_size: int = 3
    nlm_patch_distance: int = 2
    nlm_strength: float = 0.8
    # normalization and contrast
    normalize: Optional[str] = option(None, "intensity normalization", choices=NORMALIZE_METHODS)
    percentiles: Sequence[float] = (0.5, 99.5)
    clahe: bool = option(False, "contrast-limited adaptive histogram equalization")
    clahe_kernel_mm: float = 32.0
    clahe_clip_limit: float = 0.01
    # cropping and display
    crop_to_foreground: bool = option(False, "crop to the foreground mask (with a margin)", flag="--crop")
    crop_margin_mm: float = 5.0
    display_window: Optional[Sequence[float]] = None  # (window, level): display only

    def with_preset(self) -> "EnhancementParameters":
        """Parameters with the preset's values filled in where the user kept the defaults."""
        if not self.preset:
            return self
        if self.preset not in PRESETS:
            raise InputError("preset", f"unknown preset '{self.preset}' (known: {', '.join(sorted(PRESETS))})")
        defaults = EnhancementParameters()
        changes = {}
        for key, value in PRESETS[self.preset].items():
            if key == "description":
                continue
            if getattr(self, key) == getattr(defaults, key):
                changes[key] = value
        return dataclasses.replace(self, **changes)

    def steps(self) -> list[str]:
        steps = []
        if self.spacing_mm is not None:
            steps.append("resample")
        if self.bias_correct:
            steps.append("bias")
        if self.denoise:
            steps.append("denoise")
        if self.normalize:
            steps.append("normalize")
        if self.clahe:
            steps.append("clahe")
        if self.crop_to_foreground:
            steps.append("crop")
        return steps

    def validate(self) -> None:
        """Refuse values outside their choices or ranges (messages name the parameter)."""
        for name, allowed in (("denoise", DENOISE_METHODS), ("bias_method", BIAS_METHODS),
                              ("normalize", NORMALIZE_METHODS), ("interpolation", tuple(INTERPOLATORS))):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise InputError(name, f"unknown choice '{value}' (use {' | '.join(allowed)})")
        if self.spacing_mm is not None:
            spacing = np.asarray(self.spacing_mm, dtype=float)
            if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
                raise InputError("spacing_mm", f"must be three positive numbers in mm, got {list(self.spacing_mm)}")
        for name in ("gaussian_sigma_mm", "median_radius_mm", "bias_spline_spacing_mm", "clahe_kernel_mm"):
            if not getattr(self, name) > 0:
                raise InputError(name, "must be positive")
        if self.bias_shrink_factor < 1:
            raise InputError("bias_shrink_factor", "must be at least 1")
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise InputError("percentiles", f"need 0 <= low < high <= 100, got {low}, {high}")


@dataclasses.dataclass
class EnhancementResult:
    image: sitk.Image
    bias_field: Optional[sitk.Image]  # multiplicative field on the output grid (before cropping)
    mask: sitk.Image
    steps: list
    seconds: dict


# --- checks and masks -------------------------------------------------------------------------

def check_input(image: sitk.Image, subject, what: str = "enhancement") -> None:
    if image.GetDimension() != 3:
        raise InputError(subject, f"{image.GetDimension()}-D image: {what} needs a 3-D image")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(subject, f"{image.GetNumberOfComponentsPerPixel()}-component image: {what} needs a scalar image")
    if min(image.GetSize()) < MIN_VOXELS_PER_AXIS:
        raise InputError(subject, f"image of {list(image.GetSize())} voxels is too small for {what} (at least "
                                  f"{MIN_VOXELS_PER_AXIS} voxels along each axis)")
    array = geometry.array_view(image)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise InputError(subject, f"image has {bad} NaN or infinite voxels")
    if array.size == 0 or array.min() == array.max():
        raise InputError(subject, f"image is constant ({float(array.flat[0]) if array.size else 'empty'}): nothing to {what}")


def foreground_mask(image: sitk.Image) -> sitk.Image:
    """Automatic foreground: half the Otsu threshold, holes filled, largest component."""
    array = geometry.array_view(image).astype(np.float32)
    values = array[array > array.min()]
    if values.size == 0:
        raise InputError(None, "automatic foreground mask is empty")
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(0)
    otsu.SetOutsideValue(1)
    otsu.Execute(sitk.Cast(image, sitk.sitkFloat32))
    low = float(array.min())
    threshold = low + 0.5 * (otsu.GetThreshold() - low)
    mask = sitk.Cast(sitk.Cast(image, sitk.sitkFloat32) > threshold, sitk.sitkUInt8)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    mask = sitk.Cast(components == 1, sitk.sitkUInt8)
    mask = sitk.BinaryFillhole(mask)
    return mask


def check_mask(mask: sitk.Image, image: sitk.Image, subject) -> sitk.Image:
    if mask.GetDimension() != image.GetDimension() or not geometry.same_grid(mask, image, 1e-3):
        raise InputError(subject, "mask is not on the image's grid (size/spacing/origin/direction differ)")
    mask = sitk.Cast(sitk.Cast(mask, sitk.sitkFloat32) > 0, sitk.sitkUInt8)
    if not np.any(geometry.array_view(mask)):
        raise InputError(subject, "mask is empty (no non-zero voxel)")
    return mask


# --- denoising --------------------------------------------------------------------------------

def denoise(image: sitk.Image, method: str, p: EnhancementParameters) -> sitk.Image:
    """Denoised float32 image; parameters in mm where spatial."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    spacing = np.array(image.GetSpacing())
    if method == "gaussian":
        return sitk.SmoothingRecursiveGaussian(image, p.gaussian_sigma_mm)
    if method == "median":
        radius = [max(1, int(round(p.median_radius_mm / s))) for s in spacing]
        return sitk.Median(image, radius)
    if method in ("curvature", "gradient"):
        # stability limit of the explicit scheme: dt < min spacing / 2^(N+1)
        time_step = float(spacing.min()) / 2 ** (image.GetDimension() + 1) * 0.95
        scale = float(np.percentile(geometry.array_view(image), 99.5) - np.percentile(geometry.array_view(image), 0.5))
        normalized = image / max(scale, 1e-12)  # diffusion conductance acts on unit-range intensities
        if method == "curvature":
            out = sitk.CurvatureAnisotropicDiffusion(normalized, time_step, p.diffusion_conductance, 1,
                                                     p.diffusion_iterations)
        else:
            out = sitk.GradientAnisotropicDiffusion(normalized, time_step, p.diffusion_conductance, 1,
                                                    p.diffusion_iterations)
        return out * scale
    if method == "nlm":
        from skimage.restoration import denoise_nl_means

        array = sitk.GetArrayFromImage(image)
        sigma = estimate_noise_sigma(array)
        out = denoise_nl_means(array, patch_size=p.nlm_patch_size, patch_distance=p.nlm_patch_distance,
                               h=p.nlm_strength * sigma, sigma=sigma, fast_mode=True, preserve_range=True)
        return geometry.image_from_array(out.astype(np.float32), reference=image)
    raise InputError("denoise", f"unknown method '{method}'")


def estimate_noise_sigma(array: np.ndarray) -> float:
    """Robust noise standard deviation: MAD of neighbour differences along the fastest axis,
    over voxels above the lowest 10 % (so that an empty background does not count)."""
    array = np.asarray(array, dtype=np.float32)
    differences = (array[..., 1:] - array[..., :-1]) / np.sqrt(2.0)
    support = array[..., 1:] > np.percentile(array, 10)
    values = differences[support] if np.any(support) else differences.ravel()
    sigma = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    return max(sigma, 1e-6)


# --- bias field -------------------------------------------------------------------------------

def _block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    cropped = array[tuple(slice(0, (n // factor) * factor) for n in array.shape)]
    shape = [n // factor for n in cropped.shape]
    return cropped.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5))


def _cubic_bspline_basis(length: int, controls: int, coordinates: np.ndarray) -> np.ndarray:
    """(len(coordinates), controls) uniform cubic B-spline basis spanning indices [0, length-1]."""
    knots = np.asarray(coordinates, dtype=float) / max(length - 1, 1) * (controls - 3)
    distance = np.abs(knots[:, None] - (np.arange(controls)[None, :] - 1))
    return np.where(distance < 1, (4 - 6 * distance ** 2 + 3 * distance ** 3) / 6,
                    np.where(distance < 2, (2 - distance) ** 3 / 6, 0.0))


def _second_difference_penalty(controls: Sequence[int]) -> np.ndarray:
    def penalty(n):
        d2 = np.zeros((n - 2, n))
        for i in range(n - 2):
            d2[i, i:i + 3] = (1, -2, 1)
        return d2.T @ d2

    eye = [np.eye(n) for n in controls]
    pen = [penalty(n) for n in controls]
    return (np.kron(np.kron(pen[0], eye[1]), eye[2]) + np.kron(np.kron(eye[0], pen[1]), eye[2])
            + np.kron(np.kron(eye[0], eye[1]), pen[2]))


def tissue_log_bias_field(image: sitk.Image, mask: sitk.Image, shrink: int = 4, spline_spacing_mm: float = 40.0,
                          classes: int = 3, iterations: int = 8, smoothness: float = 0.01,
                          report: Optional[ProgressReporter] = None) -> np.ndarray:
    """Tissue-class-aware log bias field (k, j, i array on the image grid, zero mean in the mask).

    Alternates, on a block-averaged copy: a Gaussian-mixture classification of the
    corrected log intensities into ``classes`` tissues, and a weighted, smoothness-
    penalised least-squares fit of a cubic B-spline field (control spacing
    ``spline_spacing_mm``) to the residual log(I) - class mean (weights = posterior
    precision), as FSL FAST / SPM unified segmentation do. The field is then evaluated
    at full resolution from the same spline coefficients.
    """
    import scipy.sparse

    array = geometry.array_view(image).astype(np.float32)
    inside = geometry.array_view(mask) > 0
    if np.any(array[inside] <= 0):
        # log needs positive intensities: shift so that the mask's minimum is 1 % of its range
        low, high = float(array[inside].min()), float(array[inside].max())
        array = array - low + 0.01 * (high - low)
    shape = array.shape
    factor = max(1, int(shrink))
    mask_fraction = _block_mean(inside.astype(np.float32), factor)
    coarse_mask = mask_fraction > 0.99
    if coarse_mask.sum() < 50:
        coarse_mask = mask_fraction > 0.5
    if coarse_mask.sum() < 20:
        raise InputError(None, "foreground mask is too small for bias-field estimation")
    coarse = _block_mean(np.where(inside, array, 0).astype(np.float32), factor) / np.maximum(mask_fraction, 1e-6)
    spacing_kji = np.array(image.GetSpacing())[::-1]
    controls = [max(4, int(round(n * s / spline_spacing_mm)) + 3) for n, s in zip(shape, spacing_kji)]
    centres = [np.arange(n) * factor + (factor - 1) / 2 for n in coarse_mask.shape]
    bases = [_cubic_bspline_basis(shape[d], controls[d], centres[d]) for d in range(3)]
    index = np.nonzero(coarse_mask)
    observed = np.log(np.maximum(coarse[index], 1e-6)).astype(np.float64)
    design = (bases[0][index[0]][:, :, None, None] * bases[1][index[1]][:, None, :, None]
              * bases[2][index[2]][:, None, None, :]).reshape(len(observed), -1)
    design = scipy.sparse.csr_matrix(np.where(design > 1e-12, design, 0.0))
    penalty = _second_difference_penalty(controls)
    n_coefficients = design.shape[1]
    field = np.zeros_like(observed)
    coefficients = np.zeros(n_coefficients)
    means = sds = weights = None
    for iteration in range(iterations):
        corrected = observed - field
        if means is None:
            means = np.percentile(corrected, np.linspace(15, 85, classes))
            sds = np.full(classes, corrected.std() / classes + 1e-6)
            weights = np.full(classes, 1.0 / classes)
        for _ in range(15):  # EM for a 1-D Gaussian mixture
            loglik = -0.5 * ((corrected[:, None] - means) / sds) ** 2 - np.log(sds) + np.log(weights)
            loglik -= loglik.max(axis=1, keepdims=True)
            posterior = np.exp(loglik)
            posterior /= posterior.sum(axis=1, keepdims=True)
            counts = posterior.sum(axis=0) + 1e-9
            means = (posterior * corrected[:, None]).sum(axis=0) / counts
            sds = np.sqrt((posterior * (corrected[:, None] - means) ** 2).sum(axis=0) / counts) + 1e-4
            weights = counts / counts.sum()
        precision = (posterior / sds ** 2).sum(axis=1)
        residual = observed - (posterior * means).sum(axis=1)
        weighted = design.multiply(precision[:, None]).tocsr()
        normal = (design.T @ weighted).toarray() + smoothness * precision.sum() / n_coefficients * penalty
        coefficients = np.linalg.solve(normal, weighted.T @ residual)
        field = design @ coefficients
        field -= field.mean()
        if report is not None:
            report((iteration + 1) / iterations, f"tissue-aware bias field: iteration {iteration + 1}/{iterations}")
    full_bases = [_cubic_bspline_basis(shape[d], controls[d], np.arange(shape[d])) for d in range(3)]
    log_field = np.einsum("ai,bj,ck,ijk->abc", *full_bases, coefficients.reshape(controls), optimize=True)
    return (log_field - log_field[inside].mean()).astype(np.float32)


def n4_log_bias_field(image: sitk.Image, mask: sitk.Image, shrink: int = 4,
                      iterations: Sequence[int] = (50, 40, 30)) -> np.ndarray:
    """N4 (SimpleITK) estimated on a shrunken image; log field evaluated at full resolution."""
    positive = sitk.Cast(image, sitk.sitkFloat32)
    array = geometry.array_view(positive)
    inside = geometry.array_view(mask) > 0
    if np.any(array[inside] <= 0):
        low, high = float(array[inside].min()), float(array[inside].max())
        positive = positive - low + 0.01 * (high - low)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
    factor = [max(1, int(shrink))] * 3
    n4.Execute(sitk.Shrink(positive, factor), sitk.Shrink(mask, factor))
    log_field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(positive))
    return (log_field - log_field[inside].mean()).astype(np.float32)


def correct_bias(image: sitk.Image, mask: sitk.Image, p: EnhancementParameters,
                 report: Optional[ProgressReporter] = None) -> tuple[sitk.Image, sitk.Image]:
    """(corrected float32 image, multiplicative bias field image): corrected = image / field."""
    if p.bias_method == "n4":
        log_field = n4_log_bias_field(image, mask, p.bias_shrink_factor, p.bias_iterations)
    else:
        log_field = tissue_log_bias_field(image, mask, p.bias_shrink_factor, p.bias_spline_spacing_mm,
                                          p.bias_tissue_classes, report=report)
    field = np.exp(log_field).astype(np.float32)
    corrected = geometry.array_view(image).astype(np.float32) / field
    return (geometry.image_from_array(corrected, reference=image),
            geometry.image_from_array(field, reference=image))


# --- normalization and contrast ---------------------------------------------------------------

def normalize(image: sitk.Image, method: str, mask: sitk.Image, p: EnhancementParameters,
              reference: Optional[sitk.Image] = None) -> sitk.Image:
    """Intensity normalization; statistics come only from voxels inside ``mask``."""
    array = geometry.array_view(image).astype(np.float32)
    inside = geometry.array_view(mask) > 0
    values = array[inside]
    if method == "zscore":
        std = float(values.std())
        if std == 0:
            raise InputError(None, "intensities inside the mask are constant: z-score undefined")
        out = (array - float(values.mean())) / std
    elif method == "minmax":
        low, high = float(values.min()), float(values.max())
        if high == low:
            raise InputError(None, "intensities inside the mask are constant: min-max undefined")
        out = (array - low) / (high - low)
    elif method == "percentile":
        low, high = (float(v) for v in np.percentile(values, p.percentiles))
        if high == low:
            raise InputError(None, "intensity percentiles inside the mask coincide: nothing to scale")
        out = (np.clip(array, low, high) - low) / (high - low)
    elif method == "histmatch":
        if reference is None:
            raise InputError("reference", "histogram matching needs a reference volume")
        matcher = sitk.HistogramMatchingImageFilter()
        matcher.SetNumberOfHistogramLevels(256)
        matcher.SetNumberOfMatchPoints(15)
        matcher.ThresholdAtMeanIntensityOn()
        return matcher.Execute(sitk.Cast(image, sitk.sitkFloat32), sitk.Cast(reference, sitk.sitkFloat32))
    else:
        raise InputError("normalize", f"unknown method '{method}'")
    return geometry.image_from_array(out.astype(np.float32), reference=image)


def clahe(image: sitk.Image, mask: sitk.Image, p: EnhancementParameters) -> sitk.Image:
    """Contrast-limited adaptive histogram equalization (output in [0, 1])."""
    from skimage.exposure import equalize_adapthist

    array = geometry.array_view(image).astype(np.float32)
    inside = geometry.array_view(mask) > 0
    low, high = np.percentile(array[inside], (0.5, 99.5))
    scaled = np.clip((array - low) / max(high - low, 1e-12), 0, 1)
    kernel = [max(3, int(round(p.clahe_kernel_mm / s))) for s in np.array(image.GetSpacing())[::-1]]
    out = equalize_adapthist(scaled, kernel_size=kernel, clip_limit=p.clahe_clip_limit)
    return geometry.image_from_array(out.astype(np.float32), reference=image)


def crop_to_foreground(image: sitk.Image, mask: sitk.Image, margin_mm: float) -> sitk.Image:
    index = np.nonzero(geometry.array_view(mask))
    margin = [int(np.ceil(margin_mm / s)) for s in np.array(image.GetSpacing())[::-1]]
    shape = geometry.array_view(mask).shape
    low = [max(0, int(index[d].min()) - margin[d]) for d in range(3)]
    high = [min(shape[d], int(index[d].max()) + 1 + margin[d]) for d in range(3)]
    size_ijk = [high[d] - low[d] for d in range(3)][::-1]
    return sitk.RegionOfInterest(image, size_ijk, low[::-1])


def resample_like(image: sitk.Image, reference: sitk.Image, interpolation: str = "linear",
                  default_value: float = 0.0) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid (world positions kept; no transform)."""
    if interpolation not in INTERPOLATORS:
        raise InputError("interpolation", f"unknown interpolation '{interpolation}'")
    if image.GetDimension() != reference.GetDimension():
        raise InputError("reference", f"{reference.GetDimension()}-D reference for a {image.GetDimension()}-D image")
    return geometry.resample_to_grid(image, geometry.grid_of(reference), INTERPOLATORS[interpolation], default_value)


# --- pipeline ---------------------------------------------------------------------------------

def enhance_image(image: sitk.Image, parameters: EnhancementParameters, mask: Optional[sitk.Image] = None,
                  reference: Optional[sitk.Image] = None, report: Optional[ProgressReporter] = None,
                  subject="input") -> EnhancementResult:
    """Run the steps the parameters ask for, in the pipeline order; the input is not modified."""
    p = parameters.with_preset()
    p.validate()
    report = report or ProgressReporter()
    check_input(image, subject)
    steps = p.steps()
    if not steps:
        raise InputError(subject, "no enhancement step selected (choose a preset or at least one step)")
    if "normalize" in steps and p.normalize == "histmatch" and reference is None:
        raise InputError("reference", "histogram matching needs a reference volume")
    if reference is not None:
        check_input(reference, "reference", "histogram matching")
    if mask is not None:
        mask = check_mask(mask, image, "mask")
    if "resample" in steps:  # the new grid must fit before any step runs (image, mask and the work copy)
        target = np.array(image.GetSize(), dtype=float) * np.array(image.GetSpacing()) / np.array(p.spacing_mm, float)
        imageguard.check_allocation("spacing", np.maximum(1, np.round(target)), 4 * 3, "resampled grid")
    seconds = {}
    bias_field = None
    current = sitk.Cast(image, sitk.sitkFloat32) if p.interpolation != "nearest" else image
    for number, step in enumerate(steps):
        sub = report.sub(number / len(steps), (number + 1) / len(steps))
        sub(0.0, f"{step}")
        started = time.perf_counter()
        if step == "resample":
            grid = geometry.grid_for_spacing(current, p.spacing_mm)
            current = geometry.resample_to_grid(current, grid, INTERPOLATORS[p.interpolation])
            if mask is not None:
                mask = geometry.resample_to_grid(mask, grid, sitk.sitkNearestNeighbor)
        else:
            if mask is None:
                mask = foreground_mask(current)
            current = sitk.Cast(current, sitk.sitkFloat32)
            if step == "bias":
                current, bias_field = correct_bias(current, mask, p, sub)
            elif step == "denoise":
                current = denoise(current, p.denoise, p)
            elif step == "normalize":
                current = normalize(current, p.normalize, mask, p, reference)
            elif step == "clahe":
                current = clahe(current, mask, p)
            elif step == "crop":
                current = crop_to_foreground(current, mask, p.crop_margin_mm)
                if bias_field is not None:
                    bias_field = crop_to_foreground(bias_field, mask, p.crop_margin_mm)
                mask = crop_to_foreground(mask, mask, p.crop_margin_mm)
        seconds[step] = round(time.perf_counter() - started, 3)
        sub(1.0, f"{step} done")
    if mask is None:
        mask = foreground_mask(current)
    return EnhancementResult(current, bias_field, mask, steps, seconds)
