"""Segmentation inference on MONAI: model-defined preprocessing, sliding windows with
Gaussian blending, optional flip test-time augmentation, argmax, postprocessing, and the
label map brought back to the input grid.

Memory and speed: the volume is normalized as a whole (as in training), cropped to its
foreground, then processed in slabs along the slowest axis, each slab with a halo of half
a window so that blending matches a single pass; each slab is reduced to uint8 labels by
argmax before the next one starts, so full-resolution float logits of the whole volume
never exist. Labels are resampled back to the input grid with nearest neighbour.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .. import geometry, imageguard
from ..errors import InputError, MedAnalysisError
from ..progress import ProgressReporter
from .parameters import SegmentationParameters


class Segmented(NamedTuple):
    labels: np.ndarray                          # uint8 labels on the model grid
    probabilities: Optional[np.ndarray]         # (classes, ...) float32, when asked for
    lesion_confidence: Optional[np.ndarray]     # uint8 lesion probability x 255 where labelled lesion, else 0;
                                                # only when a lesion peak rule applies


@dataclasses.dataclass
class InferenceResult:
    labels: sitk.Image                    # uint8 labels on the input grid
    probabilities: Optional[sitk.Image]   # vector image of class probabilities on the model grid
    device: str
    seconds: dict
    messages: list


def select_device(requested: str) -> str:
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise InputError("device", f"unknown device '{requested}' (use auto|cpu|cuda)")
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError("device", "CUDA was requested but no CUDA GPU is available")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def normalize_percentile(array: np.ndarray, spec: dict) -> np.ndarray:
    low_p, high_p = spec.get("lower_percentile", 0.5), spec.get("upper_percentile", 99.5)
    low, high = np.percentile(array, (low_p, high_p))
    if high <= low:
        high = low + 1.0
    out = np.subtract(array, np.float32(low), dtype=np.float32)  # one full-size buffer, then in place
    np.divide(out, np.float32(high - low), out=out)
    if spec.get("clip", True):
        np.clip(out, 0.0, 1.0, out=out)
    return out


def preprocess(image: sitk.Image, config: dict) -> tuple[dict, np.ndarray]:
    """(model grid, normalized float32 array in (k, j, i) order) per the model config.

    Only the grid (``geometry.grid_of``) of the resampled image is kept: its voxels live on as
    the normalized array, so a large input does not stay in memory twice."""
    pre = config["preprocessing"]
    orientation = pre.get("orientation", "RAS")
    # copies are avoided where the input already fits: large volumes are the memory limit
    oriented = image if geometry.orientation_code(image) == orientation else geometry.reorient(image, orientation)
    interpolation = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}.get(pre.get("interpolation", "linear"),
                                                                               sitk.sitkLinear)
    spacing = pre.get("spacing_mm")
    model_image = oriented if oriented.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(oriented, sitk.sitkFloat32)
    del oriented
    if spacing:
        grid = geometry.grid_for_spacing(model_image, spacing)
        # the model grid, its probabilities (one float per class) and the work copies must fit
        imageguard.check_allocation("input", grid["size"], 4 * (len(config.get("labels", [])) + 3),
                                    "model-spacing grid")
        if not np.allclose(grid["spacing"], model_image.GetSpacing()) or grid["size"] != list(model_image.GetSize()):
            model_image = geometry.resample_to_grid(model_image, grid, interpolation,
                                                    float(geometry.array_view(model_image).min()))
    intensity = pre.get("intensity", {"method": "percentile"})
    if intensity.get("method") != "percentile":
        raise InputError("model", f"unsupported intensity normalization '{intensity.get('method')}'")
    grid = geometry.grid_of(model_image)
    array = normalize_percentile(sitk.GetArrayViewFromImage(model_image), intensity)
    return grid, array


def _on_grid(array: np.ndarray, grid: dict, is_vector: bool = False) -> sitk.Image:
    image = geometry.image_from_array(array, is_vector=is_vector)
    return geometry.set_geometry(image, grid["origin"], grid["spacing"], grid["direction"])


def foreground_box(array: np.ndarray, margin: int) -> tuple:
    """Bounding box (slices) of voxels above the array's minimum, grown by ``margin``."""
    nonzero = np.nonzero(array > array.min())
    if not nonzero[0].size:
        return tuple(slice(0, n) for n in array.shape)
    return tuple(slice(max(0, int(ix.min()) - margin), min(n, int(ix.max()) + 1 + margin))
                 for ix, n in zip(nonzero, array.shape))


def _pad_to(array: np.ndarray, shape: Sequence[int], value: float) -> tuple[np.ndarray, tuple]:
    pads = [(0, max(0, s - n)) for n, s in zip(array.shape, shape)]
    if not any(p[1] for p in pads):
        return array, tuple(slice(0, n) for n in array.shape)
    return np.pad(array, pads, constant_values=value), tuple(slice(0, n) for n in array.shape)


def decide_labels(probabilities, config: dict, lesion_threshold: Optional[float] = None):
    """uint8 labels of (classes, ...) torch probabilities: argmax, except that with a lesion
    threshold (given, else the model config's ``inference.lesion_threshold``) a voxel is lesion
    exactly when the lesion probability reaches it (else the best other class)."""
    import torch

    labels = probabilities.argmax(0)
    threshold = lesion_threshold
    if threshold is None:
        threshold = config.get("inference", {}).get("lesion_threshold")
    lesion = _lesion_label(config)
    if threshold is not None and lesion is not None and lesion < probabilities.shape[0]:
        lesion_p = probabilities[lesion]
        weak = (labels == lesion) & (lesion_p < float(threshold))
        if bool(weak.any()):
            others = probabilities[:, weak].clone()
            others[lesion] = -1
            labels[weak] = others.argmax(0)
        labels[lesion_p >= float(threshold)] = lesion
    return labels.to(torch.uint8)


def lesion_min_peak(config: dict, lesion_peak: Optional[float] = None) -> Optional[float]:
    """The lesion peak rule in force: the given value, else the model config's
    ``inference.lesion_min_peak`` (chosen on validation data for those weights), else None."""
    if lesion_peak is not None:
        return float(lesion_peak)
    value = config.get("inference", {}).get("lesion_min_peak")
    return None if value is None else float(value)


def lesion_confidence_of(labels, probabilities, lesion: int):
    """uint8 lesion probability (x 255) of the voxels labelled ``lesion`` (0 elsewhere), torch in, numpy out."""
    import torch

    confidence = torch.round(probabilities[lesion].float() * 255.0).clamp_(0, 255).to(torch.uint8)
    confidence[labels != lesion] = 0
    return confidence.cpu().numpy()


class SlidingWindowSegmenter:
    """Runs a network over a normalized (k, j, i) array, slab by slab, returning uint8 labels."""

    def __init__(self, network, config: dict, settings: SegmentationParameters):
        import torch

        self.config = config
        self.settings = settings
        self.device = select_device(settings.device)
        if self.device == "cpu":
            torch.set_num_threads(int(settings.threads or os.cpu_count() or 1))
        self.network = network.to(self.device).eval()
        try:  # channels-last 3-D convolutions are ~10 % faster on CPU; same results
            self.network = self.network.to(memory_format=torch.channels_last_3d)
            self.channels_last = True
        except (RuntimeError, TypeError, AttributeError):  # TorchScript modules may not support it
            self.channels_last = False
        inference = config.get("inference", {})
        self.roi = [int(v) for v in inference.get("roi_size", (96, 96, 96))]
        self.overlap = float(settings.overlap if settings.overlap is not None else inference.get("overlap", 0.25))
        # batching windows does not change results (per-window instance norm) but doubles CPU throughput
        self.sw_batch_size = int(settings.swBatchSize or max(4, int(inference.get("sw_batch_size", 1))))
        self.classes = int(config["network"]["args"].get("out_channels", 2))
        self.messages: list = []
        lesion = _lesion_label(config)
        # the peak rule needs each lesion voxel's probability after the decision (kept as uint8)
        self.confidence_label = lesion if lesion is not None and lesion < self.classes and \
            lesion_min_peak(config, settings.lesionPeak) is not None else None

    def _decide(self, probabilities, intensities=None):
        """Labels of (C, ...) probabilities; with ``settings.refine`` the tissue probabilities are
        first fitted to the intensities (same shape as one class) of this image."""
        if self.settings.refine and intensities is not None:
            from .refine import refine_probabilities

            tissue = {key: _label_named(self.config, name) for key, name in
                      (("csf", "cerebrospinal fluid"), ("gm", "gray matter"), ("wm", "white matter"))}
            probabilities = refine_probabilities(intensities.to(probabilities.device), probabilities,
                                                 _lesion_label(self.config),
                                                 tissue={k: v for k, v in tissue.items() if v is not None})
        return decide_labels(probabilities, self.config, self.settings.lesionThreshold), probabilities

    def _forward(self, window):
        import torch

        if self.channels_last:
            window = window.contiguous(memory_format=torch.channels_last_3d)
        if self.device == "cuda" and self.settings.amp:
            with torch.autocast("cuda", dtype=torch.float16):
                return self.network(window).float()
        return self.network(window)

    def _probabilities(self, tensor):
        """Softmax probabilities of one (1, 1, z, y, x) tensor, with optional flip TTA."""
        import torch
        from monai.inferers import sliding_window_inference

        def run(x):
            logits = sliding_window_inference(x, roi_size=self.roi, sw_batch_size=self.sw_batch_size,
                                              predictor=self._forward, overlap=self.overlap, mode="gaussian")
            return torch.softmax(logits, dim=1)

        probabilities = run(tensor)
        if self.settings.tta:
            probabilities = (probabilities + torch.flip(run(torch.flip(tensor, dims=[4])), dims=[4])) / 2
        return probabilities

    def segment(self, array: np.ndarray, report: ProgressReporter, keep_probabilities: bool = False) -> Segmented:
        """Labels (and optional class probabilities, lesion confidence) of a normalized (k, j, i) array."""
        box = foreground_box(array, margin=4)
        if array.shape[0] <= max(int(self.settings.slabVoxels), self.roi[0]):
            return self._segment_windows(array, box, report, keep_probabilities)
        return self._segment_slabs(array, box, report, keep_probabilities)

    def _segment_windows(self, array: np.ndarray, box: tuple, report: ProgressReporter, keep_probabilities: bool):
        """MONAI's window grid for the whole volume (same positions, padding and Gaussian
        weights as ``sliding_window_inference``), running only the windows that touch the
        foreground box: inside the box the blend equals a plain sliding window; voxels that
        only empty windows cover are background."""
        import torch
        from monai.data.utils import compute_importance_map, dense_patch_slices
        from monai.inferers.utils import _get_scan_interval

        pads = [max(r - n, 0) for r, n in zip(self.roi, array.shape)]
        pad_pairs = [(p // 2, p - p // 2) for p in pads]
        padded = np.pad(array, pad_pairs, constant_values=0.0) if any(pads) else array
        windows = dense_patch_slices(padded.shape, self.roi, _get_scan_interval(padded.shape, self.roi, 3,
                                                                                [self.overlap] * 3))
        low = [b.start + p[0] for b, p in zip(box, pad_pairs)]
        high = [b.stop + p[0] for b, p in zip(box, pad_pairs)]
        windows = [w for w in windows if all(w[d].start < high[d] and w[d].stop > low[d] for d in range(3))]
        start = [min(w[d].start for w in windows) for d in range(3)]
        stop = [max(w[d].stop for w in windows) for d in range(3)]
        region = tuple(slice(a, b) for a, b in zip(start, stop))
        shape = [b - a for a, b in zip(start, stop)]
        weights = compute_importance_map(tuple(self.roi), mode="gaussian", sigma_scale=0.125, device=self.device)
        blended = torch.zeros((self.classes, *shape), dtype=torch.float32, device=self.device)
        counts = torch.zeros(shape, dtype=torch.float32, device=self.device)
        source = torch.from_numpy(np.ascontiguousarray(padded))
        with torch.inference_mode():
            for first in range(0, len(windows), self.sw_batch_size):
                report(first / len(windows), f"sliding windows: {first}/{len(windows)}")
                batch = windows[first:first + self.sw_batch_size]
                data = torch.stack([source[w] for w in batch])[:, None].to(self.device)
                logits = self._forward_with_fallback(data)
                for index, window in enumerate(batch):
                    local = tuple(slice(w.start - a, w.stop - a) for w, a in zip(window, start))
                    blended[(slice(None), *local)] += weights * logits[index].float()
                    counts[local] += weights
            covered = counts > 0
            blended /= torch.where(covered, counts, torch.ones_like(counts))
            probabilities = torch.softmax(blended, dim=0)
            probabilities[:, ~covered] = 0
            probabilities[0, ~covered] = 1
            region_labels, probabilities = self._decide(probabilities, source[region])
            region_confidence = None
            if self.confidence_label is not None:
                region_confidence = lesion_confidence_of(region_labels, probabilities, self.confidence_label)
            region_labels = region_labels.cpu().numpy()
            region_probabilities = probabilities.cpu().numpy() if keep_probabilities else None
        labels = np.zeros(padded.shape, np.uint8)
        labels[region] = region_labels
        valid = tuple(slice(p[0], p[0] + n) for p, n in zip(pad_pairs, array.shape))
        confidence = None
        if region_confidence is not None:
            confidence = np.zeros(padded.shape, np.uint8)
            confidence[region] = region_confidence
            confidence = confidence[valid]
        full_probabilities = None
        if keep_probabilities:
            full_probabilities = np.zeros((self.classes, *padded.shape), np.float32)
            full_probabilities[0] = 1.0
            full_probabilities[(slice(None), *region)] = region_probabilities
            full_probabilities = full_probabilities[(slice(None), *valid)]
        return Segmented(labels[valid], full_probabilities, confidence)

    def _forward_with_fallback(self, data):
        """Logits of a batch of windows, with flip TTA, retrying smaller / on CPU when GPU memory runs out."""
        import torch

        try:
            logits = self._forward(data)
            if self.settings.tta:
                logits = (logits + torch.flip(self._forward(torch.flip(data, dims=[4])), dims=[4])) / 2
            return logits
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if data.shape[0] > 1:
                self.messages.append("GPU out of memory: running one window at a time")
                self.sw_batch_size = 1
                return torch.cat([self._forward_with_fallback(data[i:i + 1]) for i in range(data.shape[0])])
            self.messages.append("GPU out of memory: falling back to the CPU")
            self.device = "cpu"
            self.network = self.network.to("cpu")
            return self._forward_with_fallback(data.cpu()).to("cpu")

    def _segment_slabs(self, array: np.ndarray, box: tuple, report: ProgressReporter, keep_probabilities: bool):
        """Memory-bounded mode for deep volumes: the foreground is processed in slabs along the
        slowest axis, each with a half-window halo, and reduced to labels before the next."""
        import torch

        background = float(array.min())
        cropped = np.ascontiguousarray(array[box])
        padded, valid = _pad_to(cropped, self.roi, background)
        depth = padded.shape[0]
        slab = max(int(self.settings.slabVoxels), self.roi[0])
        halo = self.roi[0] // 2
        labels = np.zeros(padded.shape, np.uint8)
        confidence = np.zeros(padded.shape, np.uint8) if self.confidence_label is not None else None
        probabilities = np.zeros((self.classes, *padded.shape), np.float32) if keep_probabilities else None
        starts = list(range(0, depth, slab))
        with torch.inference_mode():
            for number, start in enumerate(starts):
                report(number / len(starts), f"sliding windows: slab {number + 1}/{len(starts)}")
                stop = min(depth, start + slab)
                low, high = max(0, start - halo), min(depth, stop + halo)
                tensor = torch.from_numpy(np.ascontiguousarray(padded[low:high]))[None, None].to(self.device)
                slab_probabilities = self._probabilities_with_fallback(tensor)
                core = slice(start - low, stop - low)
                slab_labels, slab_probabilities_core = self._decide(slab_probabilities[0][:, core],
                                                                    tensor[0, 0, core])
                if confidence is not None:
                    confidence[start:stop] = lesion_confidence_of(slab_labels, slab_probabilities_core,
                                                                  self.confidence_label)
                labels[start:stop] = slab_labels.cpu().numpy()
                if probabilities is not None:
                    probabilities[:, start:stop] = slab_probabilities_core.float().cpu().numpy()
                del slab_probabilities, tensor
        full = np.zeros(array.shape, np.uint8)
        full[box] = labels[valid]
        full_confidence = None
        if confidence is not None:
            full_confidence = np.zeros(array.shape, np.uint8)
            full_confidence[box] = confidence[valid]
        full_probabilities = None
        if probabilities is not None:
            full_probabilities = np.zeros((self.classes, *array.shape), np.float32)
            full_probabilities[0] = 1.0
            full_probabilities[(slice(None), *box)] = probabilities[(slice(None), *valid)]
        return Segmented(full, full_probabilities, full_confidence)

    def _probabilities_with_fallback(self, tensor):
        import torch

        try:
            return self._probabilities(tensor)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if self.sw_batch_size > 1:
                self.messages.append("GPU out of memory: retrying with sw_batch_size 1")
                self.sw_batch_size = 1
                return self._probabilities_with_fallback(tensor)
            self.messages.append("GPU out of memory: falling back to the CPU")
            self.device = "cpu"
            self.network = self.network.to("cpu")
            return self._probabilities(tensor.cpu())


def remove_small_components(labels: np.ndarray, label: int, min_voxels: int) -> np.ndarray:
    """Relabel components of ``label`` smaller than ``min_voxels`` to the most common neighbour label."""
    if min_voxels <= 1 or not np.any(labels == label):
        return labels
    from scipy import ndimage

    components, count = ndimage.label(labels == label, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(components.ravel())
    small = np.isin(components, np.nonzero(sizes < min_voxels)[0]) & (components > 0)
    if np.any(small):
        grown = ndimage.binary_dilation(small, iterations=1) & ~small
        neighbours = labels[grown]
        neighbours = neighbours[neighbours != label]
        replacement = np.bincount(neighbours).argmax() if neighbours.size else 0
        labels = labels.copy()
        labels[small] = replacement
    return labels


def remove_unhosted_components(labels: np.ndarray, label: int, host: int) -> np.ndarray:
    """Relabel components of ``label`` whose one-voxel shell holds no ``host`` voxel (to the most
    common label of that shell)."""
    from scipy import ndimage

    mask = labels == label
    if not mask.any():
        return labels
    where = np.nonzero(mask)
    box = tuple(slice(max(int(w.min()) - 1, 0), int(w.max()) + 2) for w in where)
    sub = labels[box]
    components, count = ndimage.label(sub == label, structure=np.ones((3, 3, 3)))
    grown = ndimage.grey_dilation(components, footprint=np.ones((3, 3, 3), bool))
    shell = (components == 0) & (grown > 0)
    hosted = np.unique(grown[shell & (sub == host)])
    orphans = np.setdiff1d(np.arange(1, count + 1), hosted)
    if orphans.size == 0:
        return labels
    labels = labels.copy()
    sub = labels[box]
    for index in orphans:
        ring = sub[shell & (grown == index)]
        ring = ring[ring != label]
        sub[components == index] = np.bincount(ring).argmax() if ring.size else 0
    return labels


def remove_poorly_hosted_components(labels: np.ndarray, label: int, host: int, min_fraction: float) -> np.ndarray:
    """Relabel components of ``label`` whose one-voxel shell is less than ``min_fraction`` ``host``
    (white-matter lesions lie in white matter; bright cortex or vessels on FLAIR do not)."""
    from scipy import ndimage

    mask = labels == label
    if not mask.any():
        return labels
    where = np.nonzero(mask)
    box = tuple(slice(max(int(w.min()) - 1, 0), int(w.max()) + 2) for w in where)
    labels = labels.copy()
    sub = labels[box]
    components, count = ndimage.label(sub == label, structure=np.ones((3, 3, 3)))
    grown = ndimage.grey_dilation(components, footprint=np.ones((3, 3, 3), bool))
    shell = (components == 0) & (grown > 0)
    shell_ids = grown[shell]
    shell_labels = sub[shell]
    totals = np.bincount(shell_ids, minlength=count + 1)
    hosted = np.bincount(shell_ids, weights=(shell_labels == host), minlength=count + 1)
    for index in range(1, count + 1):
        if totals[index] and hosted[index] / totals[index] < min_fraction:
            ring = shell_labels[shell_ids == index]
            ring = ring[ring != label]
            sub[components == index] = np.bincount(ring).argmax() if ring.size else 0
    return labels


def remove_weak_components(labels: np.ndarray, label: int, confidence: np.ndarray, min_peak: float) -> np.ndarray:
    """Relabel components of ``label`` whose highest ``confidence`` (uint8, probability x 255) stays
    below ``min_peak`` (a probability) to the most common label of their one-voxel shell: a lesion
    is reported only where the network is sure of it somewhere, and then with its whole extent."""
    from scipy import ndimage

    mask = labels == label
    if not mask.any():
        return labels
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    peaks = ndimage.maximum(confidence, components, index=np.arange(1, count + 1))
    weak = np.nonzero(np.asarray(peaks) < min_peak * 255.0 - 0.5)[0] + 1
    if weak.size == 0:
        return labels
    labels = labels.copy()
    objects = ndimage.find_objects(components)
    for index in weak:
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in objects[index - 1])
        own = components[box] == index
        shell = ndimage.binary_dilation(own, structure=np.ones((3, 3, 3), bool)) & ~own
        ring = labels[box][shell]
        ring = ring[ring != label]
        labels[box][own] = np.bincount(ring).argmax() if ring.size else 0
    return labels


ISLAND_MAX_ML = 3.0  # larger enclosed grey-matter components may be deep nuclei (putamen with pallidum: ~6 mL)
ISLAND_MIN_SHELL = 0.9  # share of an island's one-voxel shell that must be white matter (or lesion)


def enclosed_islands_to_lesions(labels: np.ndarray, gm: int, wm: int, lesion: int, min_voxels: int,
                                max_voxels: int, min_shell: float = ISLAND_MIN_SHELL) -> np.ndarray:
    """Relabel as ``lesion`` the grey-matter components of ``min_voxels``..``max_voxels`` voxels whose
    one-voxel shell is at least ``min_shell`` white matter or lesion.

    Grey matter does not float inside white matter (cortex and deep nuclei touch CSF or each other),
    so a grey-matter-like island enclosed by white matter is a white-matter hypointensity, as
    FreeSurfer labels it on T1: T1 lesions have the intensity of grey matter, and a network that
    has not learnt them calls them grey matter."""
    from scipy import ndimage

    mask = labels == gm
    if not mask.any() or max_voxels < max(min_voxels, 1):
        return labels
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    candidates = np.nonzero((sizes >= max(min_voxels, 1)) & (sizes <= max_voxels))[0]
    candidates = candidates[candidates > 0]
    if candidates.size == 0:
        return labels
    objects = ndimage.find_objects(components)
    structure = np.ones((3, 3, 3), bool)
    out = None
    for index in candidates:
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in objects[index - 1])
        own = components[box] == index
        shell = ndimage.binary_dilation(own, structure=structure) & ~own
        ring = labels[box][shell]
        if ring.size and np.isin(ring, (wm, lesion)).mean() >= min_shell:
            if out is None:
                out = labels.copy()
            out[box][own] = lesion
    return labels if out is None else out


def postprocess_lesions(labels: np.ndarray, config: dict, spacing_mm, lesion_min_ml: float,
                        confidence: Optional[np.ndarray] = None, min_peak: Optional[float] = None,
                        islands: bool = False) -> np.ndarray:
    """Lesion clean-up of a model label map: components whose peak lesion probability stays below
    ``min_peak`` (with ``confidence``, see :func:`lesion_min_peak`), components smaller than
    ``lesion_min_ml`` and, for a model with a white-matter label (its lesions are white-matter
    lesions), components touching no or too little white matter take their neighbours' label.
    With ``islands`` (and grey- and white-matter labels), grey matter enclosed by white matter
    becomes lesion first (:func:`enclosed_islands_to_lesions`)."""
    lesion = _lesion_label(config)
    if lesion is None:
        return labels
    if confidence is not None and min_peak is not None:
        labels = remove_weak_components(labels, lesion, confidence, min_peak)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    gm, wm = _label_named(config, "gray matter"), _label_named(config, "white matter")
    if islands and gm is not None and wm is not None:
        labels = enclosed_islands_to_lesions(labels, gm, wm, lesion, int(np.ceil(lesion_min_ml / voxel_ml)),
                                             int(ISLAND_MAX_ML / voxel_ml))
    if lesion_min_ml > 0:
        labels = remove_small_components(labels, lesion, int(np.ceil(lesion_min_ml / voxel_ml)))
    host = _label_named(config, "white matter")
    if host is not None:
        labels = remove_unhosted_components(labels, lesion, host)
        labels = remove_poorly_hosted_components(labels, lesion, host, min_fraction=0.4)
    return labels


def segment_image(image: sitk.Image, network, config: dict, settings: Optional[SegmentationParameters] = None,
                  report: Optional[ProgressReporter] = None, subject="input") -> InferenceResult:
    """Segment a 3-D scalar image; labels come back on the input grid."""
    settings = settings or SegmentationParameters()
    report = report or ProgressReporter()
    check_segmentation_input(image, config, subject)
    seconds = {}
    started = time.perf_counter()
    report(0.0, "preprocessing")
    model_grid, array = preprocess(image, config)
    seconds["preprocess"] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    segmenter = SlidingWindowSegmenter(network, config, settings)
    labels, probabilities, confidence = segmenter.segment(array, report.sub(0.05, 0.9), settings.probabilities)
    del array
    seconds["inference"] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    report(0.9, "postprocessing")
    labels = postprocess_lesions(labels, config, model_grid["spacing"], settings.lesionMinMl, confidence,
                                 lesion_min_peak(config, settings.lesionPeak), settings.lesionIslands)
    del confidence
    model_labels = _on_grid(labels, model_grid)
    if geometry.same_grid(model_labels, image, 1e-6):
        on_input = model_labels  # the input already is on the model's grid
    else:
        on_input = geometry.resample_to_grid(model_labels, geometry.grid_of(image), sitk.sitkNearestNeighbor, 0)
    seconds["postprocess"] = round(time.perf_counter() - started, 3)
    probability_image = None
    if probabilities is not None:
        probability_image = _on_grid(np.moveaxis(probabilities, 0, -1), model_grid, is_vector=True)
    report(1.0, "segmentation done")
    return InferenceResult(on_input, probability_image, segmenter.device, seconds, segmenter.messages)


def _label_named(config: dict, name: str) -> Optional[int]:
    for entry in config.get("labels", []):
        if str(entry.get("name", "")).lower() == name:
            return int(entry["value"])
    return None


def is_brain_model(config: dict) -> bool:
    """A brain tissue model (it has a white-matter label): brain extraction applies to its inputs."""
    return _label_named(config, "white matter") is not None


def _lesion_label(config: dict) -> Optional[int]:
    return _label_named(config, "lesion")


def check_segmentation_input(image: sitk.Image, config: dict, subject) -> None:
    if image.GetDimension() != 3:
        raise InputError(subject, f"{image.GetDimension()}-D image: segmentation needs a 3-D volume")
    channels = int(config.get("preprocessing", {}).get("input_channels",
                                                        config["network"]["args"].get("in_channels", 1)))
    components = image.GetNumberOfComponentsPerPixel()
    if components != channels:
        raise InputError(subject, f"image has {components} channel(s) but the model expects {channels}")
    array = geometry.array_view(image)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError(subject, f"image has {int(array.size - np.count_nonzero(np.isfinite(array)))} "
                                  "NaN or infinite voxels")
    if array.min() == array.max():
        raise InputError(subject, "image is constant: nothing to segment")


class ModelError(MedAnalysisError):
    """A model that cannot be loaded safely or does not fit the input."""


ProgressFn = Callable[[float, str], None]
