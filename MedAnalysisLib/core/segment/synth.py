"""SynthSeg-style synthetic training data from the MNI ICBM152 2009 tissue maps.

Pure numpy / scipy / SimpleITK (no torch).  One template (label map + T1 + distance outside the
brain) is loaded once with :func:`load_template`; :func:`synthesize_case` then draws a random
spatial transform (affine + smooth elastic field + left-right flip), resamples the template
labels directly into the output grid (a training patch or a whole volume) with that composite
transform, adds synthetic extra-cerebral layers (CSF rim, skull with marrow, scalp/fat, other
soft tissue), places synthetic white-matter lesions and renders an image from a random
per-label Gaussian mixture (or, part of the time, from the real MNI T1 intensities), followed
by partial-volume blur, optional thick-slice simulation, bias field, Rician/Gaussian noise,
percentile normalisation and gamma.

Arrays are in SimpleITK order (z, y, x) of the template grid: 1 mm isotropic, index axes
pointing to Right, Anterior, Superior (ITK orientation code "RAS").

Internal label values (the training target maps 5..9 to background 0)::

    0 background/air, 1 CSF, 2 grey matter, 3 white matter, 4 lesion,
    5 extra-cerebral CSF rim, 6 skull (cortical bone), 7 scalp / fat, 8 other soft tissue,
    9 skull marrow (diploe)
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

LABEL_NAMES = ["background", "cerebrospinal fluid", "gray matter", "white matter", "lesion"]
NUM_CLASSES = 5
N_INTERNAL = 10
BG, CSF, GM, WM, LESION, RIM, SKULL, SCALP, OTHER, MARROW = range(10)
TARGET_LUT = np.array([0, 1, 2, 3, 4, 0, 0, 0, 0, 0], dtype=np.uint8)

# Intensity normalisation used for training *and* inference (whole volume, after resampling to 1 mm).
NORM_PERCENTILES = (0.5, 99.5)

_PAD = 24  # voxels of padding around the template grid (room for the synthetic head)


@dataclasses.dataclass
class Template:
    """The MNI template prepared for synthesis (padded grid, 1 mm)."""

    labels: np.ndarray  # uint8, padded, 0 bg 1 CSF 2 GM 3 WM
    t1: np.ndarray  # float32 0..1, padded (brain-masked T1)
    dist: np.ndarray  # float32, distance (mm) outside the brain mask, 0 inside
    shape: Tuple[int, int, int]  # original (unpadded) grid shape, z y x
    pad: int
    brain_points: np.ndarray  # (n, 3) int32 padded indices of a subsample of brain voxels
    brain_bbox: Tuple[np.ndarray, np.ndarray]  # padded index bbox (lo, hi) of the brain
    mc_labels: np.ndarray  # labels at fixed random voxels of the original grid (normalisation estimate)
    mc_dist: np.ndarray
    mc_t1: np.ndarray
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]

    def to_image(self, array: np.ndarray):
        """Wrap a full-grid (unpadded) array as a SimpleITK image with the template geometry."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(array)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img


def _read(path: str):
    import SimpleITK as sitk

    return sitk.ReadImage(path)


def load_template(sample_dir: str, mc_samples: int = 40000, seed: int = 12345) -> Template:
    """Load the MNI ICBM152 tissue label map and T1 from ``sample_dir`` and precompute what synthesis needs."""
    import SimpleITK as sitk

    lab_img = _read(os.path.join(sample_dir, "mni152_tissue_labels.nii.gz"))
    t1_img = _read(os.path.join(sample_dir, "mni152_t1.nii.gz"))
    labels = sitk.GetArrayFromImage(lab_img).astype(np.uint8)
    t1 = sitk.GetArrayFromImage(t1_img).astype(np.float32) / 255.0
    shape = labels.shape
    p = _PAD
    # The brain stem leaves the grid at its inferior face (z = 0): continue it downwards
    # (edge replication) so that the synthetic head layers wrap a "spinal cord", not a cut.
    pads = ((p, p), (p, p), (p, p))
    labels_p = np.pad(labels, pads, mode="constant")
    t1_p = np.pad(t1, pads, mode="constant")
    labels_p[:p] = labels_p[p]
    t1_p[:p] = t1_p[p]
    brain = labels_p > 0
    dist = ndimage.distance_transform_edt(~brain).astype(np.float32)

    idx = np.argwhere(brain)
    lo, hi = idx.min(0), idx.max(0)
    rng = np.random.default_rng(seed)
    pts = idx[rng.choice(len(idx), size=min(len(idx), 200000), replace=False)].astype(np.int32)

    mc = np.stack([rng.integers(0, s, size=mc_samples) for s in shape], axis=0) + p
    mc_labels = labels_p[mc[0], mc[1], mc[2]]
    mc_dist = dist[mc[0], mc[1], mc[2]]
    mc_t1 = t1_p[mc[0], mc[1], mc[2]]
    return Template(
        labels=labels_p,
        t1=t1_p,
        dist=dist,
        shape=tuple(int(s) for s in shape),
        pad=p,
        brain_points=pts,
        brain_bbox=(lo, hi),
        mc_labels=mc_labels,
        mc_dist=mc_dist,
        mc_t1=mc_t1,
        spacing=lab_img.GetSpacing(),
        origin=lab_img.GetOrigin(),
        direction=lab_img.GetDirection(),
    )


# ----------------------------------------------------------------------------------------------
# small helpers


def normalize_intensity(image: np.ndarray, percentiles: Sequence[float] = NORM_PERCENTILES) -> np.ndarray:
    """Inference-time normalisation: scale the whole volume so that its (0.5, 99.5) % percentiles map to (0, 1), clip."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, percentiles)
    if not hi > lo:
        hi = lo + 1.0
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _upsample(coarse: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Smooth (trilinear) upsampling of a small random grid to ``shape`` (corner-aligned)."""
    factors = [s / c for s, c in zip(shape, coarse.shape)]
    out = ndimage.zoom(coarse.astype(np.float32), factors, order=1, mode="nearest", grid_mode=False)
    if out.shape != tuple(shape):  # rounding safety
        out = out[: shape[0], : shape[1], : shape[2]]
        out = np.pad(out, [(0, s - o) for s, o in zip(shape, out.shape)], mode="edge")
    return out


def _smooth_field(rng: np.random.Generator, shape, grid=(4, 8), scale: float = 1.0) -> np.ndarray:
    g = [int(rng.integers(grid[0], grid[1] + 1)) for _ in range(3)]
    return _upsample(rng.standard_normal(g).astype(np.float32) * scale, shape)


def _rotation(angles: Sequence[float]) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _random_matrix(rng: np.random.Generator, max_rot_deg=20.0, max_scale=0.12, max_shear=0.05, flip_prob=0.5):
    rot = _rotation(np.deg2rad(rng.uniform(-max_rot_deg, max_rot_deg, 3)))
    scale = np.diag(1.0 + rng.uniform(-max_scale, max_scale, 3))
    shear = np.eye(3) + np.triu(rng.uniform(-max_shear, max_shear, (3, 3)), 1) + np.tril(
        rng.uniform(-max_shear, max_shear, (3, 3)), -1
    )
    flip = np.diag([1.0, 1.0, -1.0 if rng.random() < flip_prob else 1.0])  # x (last axis) = left-right
    return rot @ scale @ shear @ flip, bool(flip[2, 2] < 0)


def _resample_axis_linear(x: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    n = x.shape[axis]
    positions = np.clip(positions, 0, n - 1)
    i0 = np.floor(positions).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (positions - i0).astype(np.float32)
    shp = [1, 1, 1]
    shp[axis] = -1
    w = w.reshape(shp)
    return np.take(x, i0, axis=axis) * (1 - w) + np.take(x, i1, axis=axis) * w


def _head_labels(lab: np.ndarray, dist: np.ndarray, hp: dict, thick_noise=None, blob=None) -> np.ndarray:
    """Add extra-cerebral layers (internal labels 5..9) outside the brain, by distance to it."""
    out = lab.copy()
    outside = lab == 0
    d = dist if thick_noise is None else dist + thick_noise
    r1 = hp["rim"]
    r2 = r1 + hp["skull"]
    r3 = r2 + hp["scalp"]
    out[outside & (d <= r1)] = RIM
    skull = outside & (d > r1) & (d <= r2)
    out[skull] = SKULL
    if hp["marrow"]:
        m0 = r1 + hp["skull"] * 0.3
        m1 = r1 + hp["skull"] * 0.7
        out[skull & (d > m0) & (d < m1)] = MARROW
    out[outside & (d > r2) & (d <= r3)] = SCALP
    if blob is not None and hp["other"] > 0:
        out[outside & (d > r3) & (d <= r3 + hp["other"]) & (blob > hp["other_thr"])] = OTHER
    return out


def _gmm_params(rng: np.random.Generator, t1_like: bool) -> Tuple[np.ndarray, np.ndarray]:
    u = rng.uniform
    means = np.zeros(N_INTERNAL, np.float32)
    for _ in range(50):
        if t1_like:
            means[:] = [u(0, 0.05), u(0.05, 0.35), u(0.38, 0.6), u(0.62, 0.92), 0, 0, u(0, 0.15),
                        u(0.6, 1.0), u(0.2, 0.7), u(0.3, 0.8)]
        else:
            means[:] = u(0, 1, N_INTERNAL)
            means[BG] = u(0, 0.08)
            if rng.random() < 0.8:
                means[SKULL] = u(0, 0.2)
        tissue = means[[CSF, GM, WM]]
        if min(abs(tissue[0] - tissue[1]), abs(tissue[0] - tissue[2]), abs(tissue[1] - tissue[2])) >= 0.06:
            break
    means[RIM] = np.clip(means[CSF] + u(-0.05, 0.05), 0, 1)
    stds = u(0.005, 0.05, N_INTERNAL).astype(np.float32)
    stds[BG] = u(0, 0.01)
    return means, stds


def _lesion_delta(rng: np.random.Generator, wm: float, t1_like: bool, relative: bool) -> float:
    """Signed lesion-minus-WM contrast, at least a random margin away from 0."""
    hypo = rng.random() < (0.75 if t1_like else 0.5)
    mag = rng.uniform(0.1, 0.55) if not relative else rng.uniform(0.12, 0.55)
    sign = -1.0 if hypo else 1.0
    if relative:
        return sign * mag
    if not 0.0 <= wm + sign * mag <= 1.15:
        sign = -sign
    return sign * mag


def _place_lesions(lab: np.ndarray, rng: np.random.Generator, count: int, vol_range_ml=(0.05, 5.0)) -> List[float]:
    """Write irregular lesions (label 4) into white matter of ``lab`` (in place); return their volumes (mL)."""
    volumes = []
    cand = np.flatnonzero(lab.ravel() == WM)
    if count <= 0 or cand.size < 50:
        return volumes
    shape = np.array(lab.shape)
    for _ in range(count):
        target = int(round(math.exp(rng.uniform(math.log(vol_range_ml[0] * 1000), math.log(vol_range_ml[1] * 1000)))))
        c = np.array(np.unravel_index(cand[rng.integers(cand.size)], lab.shape))
        r_eq = (3 * target / (4 * math.pi)) ** (1 / 3)
        ax = rng.uniform(0.6, 1.6, 3)
        ax = ax / np.prod(ax) ** (1 / 3) * r_eq
        # random orientation of the ellipsoid
        rot = _rotation(rng.uniform(-math.pi, math.pi, 3))
        h = int(math.ceil(ax.max() * 1.8)) + 2
        lo = np.maximum(c - h, 0)
        hi = np.minimum(c + h + 1, shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        box = lab[sl]
        grids = np.meshgrid(*[np.arange(a, b, dtype=np.float32) - cc for a, b, cc in zip(lo, hi, c)], indexing="ij")
        coords = np.stack(grids, 0).reshape(3, -1)
        local = (rot.T @ coords) / ax[:, None]
        ell = (local ** 2).sum(0).reshape(box.shape)
        noise = ndimage.gaussian_filter(rng.standard_normal(box.shape).astype(np.float32), max(1.0, r_eq * rng.uniform(0.25, 0.5)))
        noise /= noise.std() + 1e-6
        field = -ell + rng.uniform(0.2, 0.9) * noise
        allowed = (box == WM) | (box == LESION)
        vals = field[allowed]
        if vals.size == 0:
            continue
        if vals.size > target:
            thr = np.partition(vals, vals.size - target)[vals.size - target]
        else:
            thr = vals.min()
        sel = allowed & (field >= thr) & (ell < 4.0)
        if not sel.any():
            continue
        box[sel] = LESION
        volumes.append(float(sel.sum()) / 1000.0)
    return volumes


# ----------------------------------------------------------------------------------------------


def synthesize_case(
    template: Template,
    rng: np.random.Generator,
    patch_size: Optional[Union[int, Sequence[int]]] = None,
    whole_head_prob: float = 0.5,
    lesion_count: Tuple[int, int] = (0, 6),
    real_prob: float = 0.3,
    t1_like_prob: float = 0.75,
) -> Tuple[np.ndarray, np.ndarray, dict]:
    """One synthetic (image, target label, info) case.

    ``patch_size`` None gives a whole volume on the template grid (shape ``template.shape``),
    otherwise a patch of that size centred (mostly) on a random brain voxel.  The image is
    float32 normalised like at inference (0.5/99.5 % percentiles of the whole volume -> 0..1;
    for patches the whole-volume percentiles are estimated from the label composition of the
    template), the label is uint8 in 0..4.
    """
    u = rng.uniform
    full = patch_size is None
    if full:
        out_shape = tuple(template.shape)
    elif isinstance(patch_size, int):
        out_shape = (patch_size,) * 3
    else:
        out_shape = tuple(int(s) for s in patch_size)

    # ---- spatial transform: output index -> template (padded) index
    M, flipped = _random_matrix(rng)
    if full:
        center = np.array(template.shape, float) / 2 - 0.5 + template.pad + rng.uniform(-5, 5, 3)
    elif rng.random() < 0.8:
        center = template.brain_points[rng.integers(len(template.brain_points))].astype(float)
    else:
        lo, hi = template.brain_bbox
        center = rng.uniform(lo, hi)
    center = center + rng.uniform(-3, 3, 3)
    sigma_el = u(0.0, 3.0)
    disp = [_smooth_field(rng, out_shape, (4, 7), sigma_el) for _ in range(3)] if sigma_el > 0.3 else None
    ax = [np.arange(s, dtype=np.float32) - (s - 1) / 2.0 for s in out_shape]
    uz, uy, ux = ax[0][:, None, None], ax[1][None, :, None], ax[2][None, None, :]
    coords = np.empty((3,) + out_shape, np.float32)
    for i in range(3):
        coords[i] = M[i, 0] * uz + M[i, 1] * uy + M[i, 2] * ux + center[i]
        if disp is not None:
            coords[i] += disp[i]

    lab = ndimage.map_coordinates(template.labels, coords, order=0, mode="constant", cval=0, prefilter=False)
    dist = ndimage.map_coordinates(template.dist, coords, order=1, mode="nearest", prefilter=False)

    real = rng.random() < real_prob
    whole_head = rng.random() < whole_head_prob
    t1_like = real or rng.random() < t1_like_prob
    if real:
        t1 = ndimage.map_coordinates(template.t1, coords, order=1, mode="constant", cval=0, prefilter=False)
    del coords

    # ---- extra-cerebral layers
    hp = {
        "rim": u(0.5, 3.0),
        "skull": u(3.0, 8.0),
        "scalp": u(3.0, 9.0),
        "marrow": bool(rng.random() < 0.6),
        "other": u(0, 30) if rng.random() < 0.6 else 0.0,
        "other_thr": u(-0.5, 0.8),
    }
    thick = _smooth_field(rng, out_shape, (3, 6), u(0, 1.5))
    blob = _smooth_field(rng, out_shape, (5, 9), 1.0) if hp["other"] > 0 else None
    lab = _head_labels(lab, dist, hp, thick, blob)
    strip_dilate = int(rng.integers(0, 4))

    # ---- lesions
    n_les = int(rng.integers(lesion_count[0], lesion_count[1] + 1)) if lesion_count[1] > 0 else 0
    lesion_volumes = _place_lesions(lab, rng, n_les)

    # ---- intensities
    means, stds = _gmm_params(rng, t1_like)
    if real:
        gain = u(0.8, 1.2)
        img = means[lab] + stds[lab] * rng.standard_normal(out_shape, dtype=np.float32)
        brain = (lab >= CSF) & (lab <= LESION)
        img[brain] = t1[brain] * gain
        wm_ref = 214.0 / 255.0 * gain
        # extra-cerebral tissue relative to real WM: skull dark, scalp/fat bright
        if lesion_volumes:
            les = lab == LESION
            delta = _lesion_delta(rng, wm_ref, True, relative=True)
            img[les] = t1[les] * gain * (1 + delta) + u(0.005, 0.04) * rng.standard_normal(int(les.sum()), dtype=np.float32)
        del t1
    else:
        les_mean = means[WM] + _lesion_delta(rng, float(means[WM]), t1_like, relative=False)
        means[LESION] = les_mean
        stds[LESION] = u(0.01, 0.06)
        img = means[lab] + stds[lab] * rng.standard_normal(out_shape, dtype=np.float32)
    img = img.astype(np.float32)

    # ---- partial volume / acquisition blur
    pv = u(0.0, 0.5) if real else u(0.3, 1.0)
    if pv > 0.05:
        img = ndimage.gaussian_filter(img, pv)
    thick_slices = None
    if rng.random() < 0.35:
        axis = int(rng.integers(3))
        thk = u(2.0, 4.0)
        sig = [0.0, 0.0, 0.0]
        sig[axis] = thk / 2.355
        img = ndimage.gaussian_filter(img, sig)
        n = out_shape[axis]
        phase = u(0, thk)
        pos = np.arange(phase - thk, n + thk, thk)
        low = _resample_axis_linear(img, axis, pos)
        img = _resample_axis_linear(low, axis, (np.arange(n) - (phase - thk)) / thk)
        thick_slices = {"axis": axis, "thickness_mm": round(thk, 2)}
    elif rng.random() < 0.3:
        img = ndimage.gaussian_filter(img, u(0.2, 0.9, 3))

    # ---- bias field (multiplicative, within +-30 %)
    bias_amp = u(0.0, 0.3)
    if bias_amp > 0.02:
        bf = _smooth_field(rng, out_shape, (3, 5), 1.0)
        bf = np.clip(bf * bias_amp / 1.5, -bias_amp, bias_amp)
        img *= 1.0 + bf
        del bf

    # ---- noise (relative to the brightest tissue)
    scale = float(max(means[[CSF, GM, WM]].max(), 0.3)) if not real else 0.9
    noise_sd = u(0.0, 0.04) * scale
    rician = rng.random() < 0.5

    def add_noise(x, r):
        if noise_sd <= 0:
            return x
        n1 = r.standard_normal(x.shape, dtype=np.float32) * noise_sd
        if rician:
            n2 = r.standard_normal(x.shape, dtype=np.float32) * noise_sd
            return np.sqrt((x + n1) ** 2 + n2 ** 2)
        return np.maximum(x + n1, 0)

    img = add_noise(img, rng)

    # ---- skull stripping (imperfect: brain mask dilated by 0..3 voxels)
    if not whole_head:
        mask = (lab >= CSF) & (lab <= LESION)
        if strip_dilate:
            mask = ndimage.binary_dilation(mask, iterations=strip_dilate)
        img[~mask] = 0.0

    # ---- normalisation like at inference (whole-volume percentiles)
    if full:
        lo, hi = np.percentile(img, NORM_PERCENTILES)
    else:
        mlab = _head_labels(template.mc_labels, template.mc_dist, dict(hp, other=0.0))
        mimg = means[mlab] + stds[mlab] * rng.standard_normal(mlab.shape, dtype=np.float32)
        if real:
            mb = (mlab >= CSF) & (mlab <= WM)
            mimg[mb] = template.mc_t1[mb] * gain
        mimg = add_noise(mimg.astype(np.float32), rng)
        if not whole_head:
            mimg[template.mc_dist > strip_dilate] = 0.0
        lo, hi = np.percentile(mimg, NORM_PERCENTILES)
        span = hi - lo
        hi = hi + span * u(-0.08, 0.08)
        lo = lo + span * u(-0.02, 0.02)
    if not hi > lo:
        hi = lo + 1.0
    img = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    gamma = 1.0
    if rng.random() < 0.7:
        gamma = float(math.exp(rng.normal(0.0, 0.25)))
        img = img ** gamma
    img = img.astype(np.float32)

    info = {
        "mode": "real_t1" if real else ("t1_like_gmm" if t1_like else "random_gmm"),
        "whole_head": whole_head,
        "flipped": flipped,
        "lesion_volumes_ml": lesion_volumes,
        "n_lesions": len(lesion_volumes),
        "thick_slices": thick_slices,
        "gamma": gamma,
        "noise_sd": noise_sd,
        "bias_amp": bias_amp,
        "elastic_sigma_mm": sigma_el,
        "norm_lo_hi": (float(lo), float(hi)),
    }
    return img, TARGET_LUT[lab], info


def make_validation_set(
    template: Template,
    seeds: Sequence[int],
    whole_head: Optional[Sequence[bool]] = None,
    lesion_count: Tuple[int, int] = (3, 6),
    real_prob: float = 0.0,
) -> List[Tuple[np.ndarray, np.ndarray, dict]]:
    """Full-volume synthetic cases (template grid, 1 mm) for evaluation, one per seed (deterministic)."""
    cases = []
    for i, seed in enumerate(seeds):
        wh = 0.5 if whole_head is None else (1.0 if whole_head[i] else 0.0)
        rng = np.random.default_rng(int(seed))
        img, lab, info = synthesize_case(template, rng, None, whole_head_prob=wh, lesion_count=lesion_count, real_prob=real_prob)
        info["seed"] = int(seed)
        cases.append((img, lab, info))
    return cases


def template_case(template: Template) -> Tuple[np.ndarray, np.ndarray, dict]:
    """The real MNI T1 (brain-masked) normalised like at inference, with its tissue labels (no lesions)."""
    p = template.pad
    sl = tuple(slice(p, p + s) for s in template.shape)
    img = normalize_intensity(template.t1[sl])
    lab = template.labels[sl].copy()
    return img, lab, {"mode": "mni152_t1", "lesion_volumes_ml": []}


def crop_to_foreground(image: np.ndarray, label: np.ndarray, margin: int = 4):
    """Crop both arrays to the bounding box of image > 0 (plus margin); used to speed up validation."""
    idx = np.argwhere(image > 0.02)
    if idx.size == 0:
        return image, label
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, image.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    return image[sl], label[sl]
