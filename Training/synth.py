"""SynthSeg-style synthetic training data from real-subject label maps and the MNI ICBM152 2009 tissue maps.

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
BG, CSF, GM, WM, LESION, RIM, SKULL, SCALP, OTHER, MARROW = range(10)
# Generation labels beyond the MNI set: real-subject label maps tell these structures apart, and
# each gets its own intensity (as in SynthSeg), so the network cannot rely on one GM or WM value.
(VENTRICLE, CEREB_GM, CEREB_WM, THALAMUS, CAUDATE, PUTAMEN, PALLIDUM, HIPPO_AMYG, ACCUMBENS, BRAINSTEM,
 VENTRAL_DC, VESSEL, CHOROID) = range(10, 23)
EXTRA_FIRST = 23  # 23..31: the extra-cerebral labels of the real-subject maps (random intensities)
N_INTERNAL = 32
TARGET_LUT = np.zeros(N_INTERNAL, dtype=np.uint8)
TARGET_LUT[[CSF, VENTRICLE, CHOROID]] = 1
TARGET_LUT[[GM, CEREB_GM, THALAMUS, CAUDATE, PUTAMEN, PALLIDUM, HIPPO_AMYG, ACCUMBENS, VESSEL]] = 2
TARGET_LUT[[WM, CEREB_WM, BRAINSTEM, VENTRAL_DC]] = 3
TARGET_LUT[LESION] = 4

# FreeSurfer labels of the SynthSeg training maps -> generation label (target class via TARGET_LUT).
# Documented in the model card; labels not listed (none in the 20 maps) become background.
FREESURFER_TO_GENERATION: Dict[int, int] = {
    0: BG,
    2: WM, 41: WM,  # cerebral white matter
    3: GM, 42: GM,  # cerebral cortex
    4: VENTRICLE, 43: VENTRICLE, 5: VENTRICLE, 44: VENTRICLE, 14: VENTRICLE, 15: VENTRICLE, 72: VENTRICLE,
    24: CSF,  # sulcal / extra-cerebral CSF
    7: CEREB_WM, 46: CEREB_WM,
    8: CEREB_GM, 47: CEREB_GM,
    10: THALAMUS, 49: THALAMUS,
    11: CAUDATE, 50: CAUDATE,
    12: PUTAMEN, 51: PUTAMEN,
    13: PALLIDUM, 52: PALLIDUM,
    17: HIPPO_AMYG, 53: HIPPO_AMYG, 18: HIPPO_AMYG, 54: HIPPO_AMYG,
    26: ACCUMBENS, 58: ACCUMBENS,
    16: BRAINSTEM,
    28: VENTRAL_DC, 60: VENTRAL_DC, 85: VENTRAL_DC,  # ventral diencephalon, optic chiasm: white-matter-like
    30: VESSEL, 62: VESSEL,
    136: CHOROID, 137: CHOROID, 163: CHOROID, 164: CHOROID,  # small periventricular labels next to the ventricles
    25: LESION, 57: LESION,  # white-matter lesions (real shapes)
    502: EXTRA_FIRST, 506: EXTRA_FIRST + 1, 507: EXTRA_FIRST + 2, 508: EXTRA_FIRST + 3, 509: EXTRA_FIRST + 4,
    511: SCALP,  # outer skin layer
    512: EXTRA_FIRST + 5, 514: EXTRA_FIRST + 6,
    515: SKULL, 516: MARROW,
    530: EXTRA_FIRST + 7,
}
# The four maps kept out of training (validation and evaluation only).
HELD_OUT_MAPS = ("training_seg_17", "training_seg_18", "training_seg_19", "training_seg_20")
CONTRASTS = ("t1", "t2", "pd", "flair", "random")
TRAIN_CONTRAST_PROBS = (0.35, 0.15, 0.10, 0.25, 0.15)

# Intensity normalisation used for training *and* inference (whole volume, after resampling to 1 mm).
NORM_PERCENTILES = (0.5, 99.5)

_PAD = 24  # voxels of padding around the template grid (room for the synthetic head)


@dataclasses.dataclass
class Template:
    """One anatomy prepared for synthesis (padded grid, 1 mm): the MNI template or a real subject's label map."""

    labels: np.ndarray  # uint8 generation labels (see TARGET_LUT), padded
    t1: Optional[np.ndarray]  # float32 0..1, padded (brain-masked real T1); None for label maps
    dist: Optional[np.ndarray]  # float32 distance (mm) outside the brain; only where head layers are drawn
    shape: Tuple[int, int, int]  # original (unpadded) grid shape, z y x
    pad: int
    brain_points: np.ndarray  # (n, 3) int32 padded indices of a subsample of brain voxels
    brain_bbox: Tuple[np.ndarray, np.ndarray]  # padded index bbox (lo, hi) of the brain
    mc_labels: np.ndarray  # labels at fixed random voxels of the original grid (normalisation estimate)
    mc_dist: np.ndarray
    mc_t1: Optional[np.ndarray]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]
    name: str = "mni152"
    has_head: bool = False  # True: the labels already hold skull, skin and other extra-cerebral tissue

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


def _sample_points(labels_p: np.ndarray, dist: np.ndarray, shape, pad: int, mc_samples: int, seed: int):
    brain = TARGET_LUT[labels_p] > 0
    idx = np.argwhere(brain)
    lo, hi = idx.min(0), idx.max(0)
    rng = np.random.default_rng(seed)
    pts = idx[rng.choice(len(idx), size=min(len(idx), 200000), replace=False)].astype(np.int32)
    mc = np.stack([rng.integers(0, s, size=mc_samples) for s in shape], axis=0) + pad
    return pts, (lo, hi), mc, dist[mc[0], mc[1], mc[2]]


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
    dist = ndimage.distance_transform_edt(labels_p == 0).astype(np.float32)
    pts, bbox, mc, mc_dist = _sample_points(labels_p, dist, shape, p, mc_samples, seed)
    return Template(
        labels=labels_p,
        t1=t1_p,
        dist=dist,
        shape=tuple(int(s) for s in shape),
        pad=p,
        brain_points=pts,
        brain_bbox=bbox,
        mc_labels=labels_p[mc[0], mc[1], mc[2]],
        mc_dist=mc_dist,
        mc_t1=t1_p[mc[0], mc[1], mc[2]],
        spacing=lab_img.GetSpacing(),
        origin=lab_img.GetOrigin(),
        direction=lab_img.GetDirection(),
    )


def load_label_map(path: str, mc_samples: int = 40000, seed: int = 12345, margin: int = 6) -> Template:
    """Load a real subject's FreeSurfer-style whole-head label map (SynthSeg training maps) as a Template.

    The map is converted with :data:`FREESURFER_TO_GENERATION`, reoriented to the MNI axis order
    (index axes Right, Anterior, Superior; arrays z, y, x) and cropped to the head plus ``margin``.
    """
    import SimpleITK as sitk

    img = sitk.DICOMOrient(_read(path), "RAS")
    fs = sitk.GetArrayFromImage(img).astype(np.int32)
    lut = np.zeros(int(fs.max()) + 1, dtype=np.uint8)
    for fs_label, gen in FREESURFER_TO_GENERATION.items():
        if fs_label < lut.size:
            lut[fs_label] = gen
    labels = lut[fs]
    del fs
    idx = np.argwhere(labels > 0)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, labels.shape)
    labels = np.ascontiguousarray(labels[tuple(slice(a, b) for a, b in zip(lo, hi))])
    dist = ndimage.distance_transform_edt(TARGET_LUT[labels] == 0).astype(np.float32)
    pts, bbox, mc, mc_dist = _sample_points(labels, dist, labels.shape, 0, mc_samples, seed)
    origin = img.TransformIndexToPhysicalPoint([int(v) for v in lo[::-1]])
    return Template(
        labels=labels,
        t1=None,
        dist=None,
        shape=tuple(int(s) for s in labels.shape),
        pad=0,
        brain_points=pts,
        brain_bbox=bbox,
        mc_labels=labels[mc[0], mc[1], mc[2]],
        mc_dist=mc_dist,
        mc_t1=None,
        spacing=img.GetSpacing(),
        origin=origin,
        direction=img.GetDirection(),
        name=os.path.basename(path).split(".")[0],
        has_head=True,
    )


def label_map_paths(data_dir: str, held_out: bool = False) -> List[str]:
    """The real-subject label maps in ``data_dir``: the training ones, or the held-out ones."""
    names = sorted(f for f in os.listdir(data_dir) if f.endswith(".nii.gz"))
    keep = [f for f in names if (f.split(".")[0] in HELD_OUT_MAPS) == held_out]
    return [os.path.join(data_dir, f) for f in keep]


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


# Tissue mean ranges (normalised 0..1) per contrast: CSF, GM, WM, and the lesion direction against WM.
_CONTRAST_RANGES = {
    "t1": {"csf": (0.05, 0.35), "gm": (0.38, 0.60), "wm": (0.62, 0.92), "lesion_hyper_prob": 0.1},
    "t2": {"csf": (0.75, 1.00), "gm": (0.42, 0.62), "wm": (0.22, 0.42), "lesion_hyper_prob": 0.95},
    "pd": {"csf": (0.60, 0.90), "gm": (0.50, 0.70), "wm": (0.35, 0.52), "lesion_hyper_prob": 0.9},
    "flair": {"csf": (0.00, 0.15), "gm": (0.40, 0.60), "wm": (0.25, 0.42), "lesion_hyper_prob": 1.0},
}
# Deep grey structures lie between GM and WM: the fraction of the way from GM to WM.
_DEEP_FRACTION = {THALAMUS: (0.3, 0.7), CAUDATE: (0.0, 0.3), PUTAMEN: (0.1, 0.45), PALLIDUM: (0.4, 0.9),
                  HIPPO_AMYG: (0.0, 0.25), ACCUMBENS: (0.0, 0.3), BRAINSTEM: (0.6, 1.0), VENTRAL_DC: (0.55, 1.0)}


def _gmm_params(rng: np.random.Generator, contrast: str) -> Tuple[np.ndarray, np.ndarray]:
    """Per-generation-label Gaussian means and standard deviations for one contrast (0..1 scale)."""
    u = rng.uniform
    means = u(0, 1, N_INTERNAL).astype(np.float32)  # extra-cerebral and other labels: any intensity
    means[BG] = u(0, 0.08)
    for _ in range(50):
        if contrast in _CONTRAST_RANGES:
            r = _CONTRAST_RANGES[contrast]
            means[CSF], means[GM], means[WM] = u(*r["csf"]), u(*r["gm"]), u(*r["wm"])
        else:
            means[[CSF, GM, WM]] = u(0, 1, 3)
        tissue = means[[CSF, GM, WM]]
        if min(abs(tissue[0] - tissue[1]), abs(tissue[0] - tissue[2]), abs(tissue[1] - tissue[2])) >= 0.06:
            break
    if rng.random() < 0.8:
        means[SKULL] = u(0, 0.2)  # cortical bone is dark in nearly every MR contrast
    if contrast == "t1":
        means[[SCALP, MARROW]] = u(0.6, 1.0), u(0.3, 0.8)  # fat is bright on T1
        means[OTHER] = u(0.2, 0.7)
    gm, wm = float(means[GM]), float(means[WM])
    for label, (f0, f1) in _DEEP_FRACTION.items():
        means[label] = gm + (wm - gm) * u(f0, f1)
    means[CEREB_GM] = np.clip(gm + u(-0.06, 0.06), 0, 1)
    means[CEREB_WM] = np.clip(wm + u(-0.06, 0.06), 0, 1)
    means[VENTRICLE] = np.clip(means[CSF] + u(-0.04, 0.04), 0, 1)
    means[CHOROID] = means[CSF] + (gm - means[CSF]) * u(0.2, 0.8)
    means[RIM] = np.clip(means[CSF] + u(-0.05, 0.05), 0, 1)
    stds = u(0.005, 0.05, N_INTERNAL).astype(np.float32)
    stds[BG] = u(0, 0.01)
    return means, stds


def _lesion_delta(rng: np.random.Generator, wm: float, contrast: str, relative: bool) -> float:
    """Signed lesion-minus-WM contrast, at least a random margin away from 0."""
    hyper_prob = _CONTRAST_RANGES[contrast]["lesion_hyper_prob"] if contrast in _CONTRAST_RANGES else 0.5
    sign = 1.0 if rng.random() < hyper_prob else -1.0
    mag = rng.uniform(0.12, 0.55)
    if contrast == "flair":
        mag = rng.uniform(0.2, 0.6)  # FLAIR lesions stand out
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
    contrast: Optional[str] = None,
    contrast_probs: Sequence[float] = TRAIN_CONTRAST_PROBS,
    lesion_free_prob: float = 0.0,
) -> Tuple[np.ndarray, np.ndarray, dict]:
    """One synthetic (image, target label, info) case.

    ``patch_size`` None gives a whole volume on the template grid (shape ``template.shape``),
    otherwise a patch of that size centred (mostly) on a random brain voxel.  The image is
    float32 normalised like at inference (0.5/99.5 % percentiles of the whole volume -> 0..1;
    for patches the whole-volume percentiles are estimated from the label composition of the
    template), the label is uint8 in 0..4.  With probability ``lesion_free_prob`` the case has no
    lesion at all (the anatomy's own lesions become white matter, none is added), so that the
    network also sees brains without lesions and learns not to report them everywhere.  ``contrast`` is one of :data:`CONTRASTS` (None: drawn
    with ``contrast_probs``); ``real_prob`` is the chance of using the real MNI T1 intensities
    (MNI template and T1 contrast only).
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
    dist = None
    if not template.has_head:
        dist = ndimage.map_coordinates(template.dist, coords, order=1, mode="nearest", prefilter=False)

    if contrast is None:
        contrast = CONTRASTS[int(rng.choice(len(CONTRASTS), p=np.asarray(contrast_probs) / np.sum(contrast_probs)))]
    real = template.t1 is not None and contrast == "t1" and rng.random() < real_prob
    whole_head = rng.random() < whole_head_prob
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
    if not template.has_head:
        thick = _smooth_field(rng, out_shape, (3, 6), u(0, 1.5))
        blob = _smooth_field(rng, out_shape, (5, 9), 1.0) if hp["other"] > 0 else None
        lab = _head_labels(lab, dist, hp, thick, blob)
        del dist
    strip_dilate = int(rng.integers(0, 4))

    # ---- lesions
    n_les = int(rng.integers(lesion_count[0], lesion_count[1] + 1)) if lesion_count[1] > 0 else 0
    if lesion_free_prob > 0 and rng.random() < lesion_free_prob:
        lab[lab == LESION] = WM
        n_les = 0
    lesion_volumes = _place_lesions(lab, rng, n_les)

    # ---- intensities
    means, stds = _gmm_params(rng, contrast)
    if real:
        gain = u(0.8, 1.2)
        img = means[lab] + stds[lab] * rng.standard_normal(out_shape, dtype=np.float32)
        brain = TARGET_LUT[lab] > 0
        img[brain] = t1[brain] * gain
        wm_ref = 214.0 / 255.0 * gain
        # extra-cerebral tissue relative to real WM: skull dark, scalp/fat bright
        if lesion_volumes:
            les = lab == LESION
            delta = _lesion_delta(rng, wm_ref, "t1", relative=True)
            img[les] = t1[les] * gain * (1 + delta) + u(0.005, 0.04) * rng.standard_normal(int(les.sum()), dtype=np.float32)
        del t1
    else:
        les_mean = means[WM] + _lesion_delta(rng, float(means[WM]), contrast, relative=False)
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
        mask = TARGET_LUT[lab] > 0
        if strip_dilate:
            mask = ndimage.binary_dilation(mask, iterations=strip_dilate)
        img[~mask] = 0.0

    # ---- normalisation like at inference (whole-volume percentiles)
    if full:
        lo, hi = np.percentile(img, NORM_PERCENTILES)
    else:
        mlab = template.mc_labels
        if not template.has_head:
            mlab = _head_labels(mlab, template.mc_dist, dict(hp, other=0.0))
        mimg = means[mlab] + stds[mlab] * rng.standard_normal(mlab.shape, dtype=np.float32)
        if real:
            mb = (TARGET_LUT[mlab] > 0) & (TARGET_LUT[mlab] < LESION)
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
        "mode": "real_t1" if real else f"{contrast}_gmm",
        "contrast": contrast,
        "anatomy": template.name,
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
    target = TARGET_LUT[lab]
    info["lesion_ml_total"] = float((target == LESION).sum()) / 1000.0
    return img, target, info


def make_validation_set(
    template: Template,
    seeds: Sequence[int],
    whole_head: Optional[Sequence[bool]] = None,
    lesion_count: Tuple[int, int] = (3, 6),
    real_prob: float = 0.0,
    contrast: Optional[Union[str, Sequence[str]]] = None,
) -> List[Tuple[np.ndarray, np.ndarray, dict]]:
    """Full-volume synthetic cases (template grid, 1 mm) for evaluation, one per seed (deterministic).

    ``contrast``: one contrast for all cases, one per seed, or None (drawn as in training).
    """
    cases = []
    for i, seed in enumerate(seeds):
        wh = 0.5 if whole_head is None else (1.0 if whole_head[i] else 0.0)
        c = contrast if contrast is None or isinstance(contrast, str) else contrast[i]
        rng = np.random.default_rng(int(seed))
        img, lab, info = synthesize_case(template, rng, None, whole_head_prob=wh, lesion_count=lesion_count,
                                         real_prob=real_prob, contrast=c)
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
