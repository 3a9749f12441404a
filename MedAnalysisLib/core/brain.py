"""Brain extraction with deepbet (LinkNet3D, trained on several thousand real T1 scans).

The network and its weights come from the pinned ``deepbet`` wheel (MIT): nothing is
downloaded. Its two TorchScript files are checked against the SHA-256 values below before
they are loaded. deepbet expects a head in RAS voxel order at about 1 mm; any input is first
resampled onto an axis-aligned 1 mm RAS grid covering it, and the brain probability is
resampled back onto the input grid, so that the mask is on the input's own voxels whatever its
orientation or spacing.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import geometry
from .errors import InputError
from .imageio import check_3d, check_finite
from .progress import ProgressReporter

DEEPBET_VERSION = "1.0.2"
# SHA-256 of the TorchScript files inside the deepbet 1.0.2 wheel (its data/models folder).
DEEPBET_SHA256 = {
    "model.pt": "de8ee7c69654d0dd3935dc4a5d84571d8ecf4637a6bfc01df399c4c2bc86e0fd",
    "bbox_model.pt": "39a7b2b5f799faa1391ea97bfcdc0b9299f20d84f2316a4ff8918dc4685e40aa",
}
NETWORK_SPACING_MM = (1.0, 1.0, 1.0)
MIN_EXTENT_MM = 40.0          # smaller fields of view hold no whole brain
MAX_NETWORK_VOXELS = 420 ** 3  # 1 mm grid of a field of view larger than any head: refused


class BrainModelError(InputError):
    """The brain-extraction network is missing or its files do not match the pinned hashes."""


@dataclasses.dataclass
class BrainMask:
    mask: sitk.Image          # uint8 0/1 on the input grid
    volume_ml: float
    probability: sitk.Image   # float32 brain probability on the input grid
    device: str


def deepbet_model_dir() -> Path:
    """Folder of deepbet's TorchScript files (the wheel installs them as ``<site-packages>/data/models``)."""
    import importlib.util

    spec = importlib.util.find_spec("deepbet")
    if spec is None or not spec.origin:
        raise BrainModelError("deepbet", f"the brain-extraction package is not installed "
                                         f"(pip install deepbet=={DEEPBET_VERSION})")
    return Path(spec.origin).resolve().parents[1] / "data" / "models"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_model_files(model_dir: Path, expected: Optional[dict] = None) -> dict:
    """{file name: path} after checking each file's SHA-256; raises BrainModelError otherwise."""
    expected = DEEPBET_SHA256 if expected is None else expected
    paths = {}
    for name, sha in expected.items():
        path = Path(model_dir) / name
        if not path.is_file():
            raise BrainModelError(path, "brain-extraction model file is missing")
        actual = _sha256(path)
        if actual != sha:
            raise BrainModelError(path, f"SHA-256 mismatch (expected {sha[:12]}..., found {actual[:12]}...): "
                                        f"refusing to load it")
        paths[name] = path
    return paths


def check_brain_input(image: sitk.Image, subject) -> None:
    """One-line InputError for inputs that cannot hold a head: not 3-D, NaN, constant, tiny, huge."""
    check_3d(image, subject, "brain extraction")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(subject, "brain extraction needs a scalar image, got "
                                  f"{image.GetNumberOfComponentsPerPixel()} components per voxel")
    check_finite(image, subject)
    extent = np.array(image.GetSize()) * np.array(image.GetSpacing())
    if np.any(extent < MIN_EXTENT_MM) or min(image.GetSize()) < 8:
        raise InputError(subject, f"field of view {np.round(extent, 1).tolist()} mm "
                                  f"({list(image.GetSize())} voxels) is too small to hold a brain")
    if np.prod(np.ceil(extent / np.array(NETWORK_SPACING_MM))) > MAX_NETWORK_VOXELS:
        raise InputError(subject, f"field of view {np.round(extent, 1).tolist()} mm is too large for "
                                  f"brain extraction (more than a head)")
    statistics = sitk.MinimumMaximumImageFilter()
    statistics.Execute(image)
    if statistics.GetMaximum() <= statistics.GetMinimum():
        raise InputError(subject, f"image is constant ({statistics.GetMinimum()}): nothing to extract")


class BrainExtractor:
    """deepbet's two networks (bounding box at 128^3, then brain at 256^3), hash-checked."""

    def __init__(self, device: str = "auto", model_dir: Optional[Path] = None,
                 expected_sha256: Optional[dict] = None):
        from .segment.engine import select_device

        paths = verify_model_files(model_dir or deepbet_model_dir(), expected_sha256)
        self.device = select_device(device)
        from deepbet.bet import BrainExtraction

        self._network = BrainExtraction(no_gpu=self.device == "cpu", model_path=str(paths["model.pt"]),
                                        bbox_model_path=str(paths["bbox_model.pt"]))

    def probability_ras(self, array_ijk: np.ndarray) -> np.ndarray:
        """Brain probability of a (i, j, k) RAS-ordered 1 mm volume, same shape."""
        import torch

        with torch.inference_mode():
            return np.asarray(self._network.run_model(np.ascontiguousarray(array_ijk, dtype=np.float32)))

    def extract(self, image: sitk.Image, threshold: float = 0.5, subject=None,
                progress: Optional[ProgressReporter] = None) -> BrainMask:
        """Brain mask of ``image`` on its own grid (any orientation and spacing)."""
        report = progress or ProgressReporter()
        subject = subject or "input"
        if not 0.0 < threshold < 1.0:
            raise InputError("threshold", f"must be in (0, 1), got {threshold}")
        check_brain_input(image, subject)
        report(0.05, "resampling to the network's 1 mm RAS grid")
        grid = geometry.axis_aligned_grid(image, NETWORK_SPACING_MM, "RAS")
        floating = image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)
        background = float(geometry.array_view(floating).min())
        network_image = geometry.resample_to_grid(floating, grid, sitk.sitkLinear, background)
        del floating
        report(0.15, "brain extraction network (deepbet)")
        probability_ijk = self.probability_ras(geometry.array_kji_to_ijk(geometry.array_view(network_image)))
        del network_image
        report.cancel.raise_if_cancelled()
        report(0.85, "mask on the input grid")
        probability_grid = geometry.image_on_grid(geometry.array_ijk_to_kji(probability_ijk.astype(np.float32)), grid)
        probability = geometry.resample_to_grid(probability_grid, geometry.grid_of(image), sitk.sitkLinear, 0.0)
        mask_array = clean_mask(geometry.array_view(probability) > threshold)
        mask = geometry.image_from_array(mask_array.astype(np.uint8), reference=image)
        volume_ml = float(mask_array.sum()) * geometry.voxel_volume_ml(image)
        if volume_ml <= 0.0:
            raise InputError(subject, "no brain found in this image (is it a head MRI?)")
        report(1.0, f"brain mask: {volume_ml:.1f} mL")
        return BrainMask(mask=mask, volume_ml=volume_ml, probability=probability, device=self.device)


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Largest connected component with its holes filled (a brain is one piece without cavities)."""
    components, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    if count > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        mask = components == int(sizes.argmax())
    return ndimage.binary_fill_holes(mask)


def masked_image(image: sitk.Image, mask: sitk.Image) -> sitk.Image:
    """``image`` with voxels outside ``mask`` set to the image's minimum (same grid and type)."""
    values = sitk.GetArrayFromImage(image)
    outside = geometry.array_view(mask) == 0
    values[outside] = values.min()
    return geometry.image_from_array(values, reference=image)


def labels_inside(labels: sitk.Image, mask: sitk.Image) -> sitk.Image:
    """``labels`` with every voxel outside ``mask`` (same grid) set to 0."""
    values = sitk.GetArrayFromImage(labels)
    values[geometry.array_view(mask) == 0] = 0
    return geometry.image_from_array(values, reference=labels)

