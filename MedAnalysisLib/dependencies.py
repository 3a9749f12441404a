"""Installing MedAnalysis' Python requirements inside the Slicer application.

Slicer ships its own Python with SimpleITK, numpy and vtk: never install over those.
torch comes through the PyTorch extension's ``PyTorchUtils`` (it picks the CUDA or CPU
build that fits the machine); everything else through ``slicer.packaging.pip_ensure``
where available (Slicer >= 5.9), else ``slicer.util.pip_install``, after the user confirms.
Headless use installs the same requirements from pyproject.toml instead.
"""

from __future__ import annotations

import importlib.util
from typing import Callable, Optional, Sequence

# (import name, pip requirement). Pinned to the versions this release is tested with.
SLICER_REQUIREMENTS: Sequence[tuple[str, str]] = (
    ("pydicom", "pydicom>=3.0.2,<4"),
    ("dicomanonymizer", "dicom-anonymizer>=2.1,<3"),
    ("pylibjpeg", "pylibjpeg>=2.0,<3"),
    ("libjpeg", "pylibjpeg-libjpeg>=2.1,<3"),
    ("openjpeg", "pylibjpeg-openjpeg>=2.3,<3"),
    ("rle", "pylibjpeg-rle>=2.0,<3"),
    ("monai", "monai>=1.6.1,<1.7"),
    ("safetensors", "safetensors>=0.4,<1"),
    ("skimage", "scikit-image>=0.22"),
    ("matplotlib", "matplotlib>=3.7"),
    ("distributed", "dask[distributed]>=2024.1"),
    ("deepbet", "deepbet==1.0.2"),  # brain extraction; installed after torch (its dependency)
    ("highdicom", "highdicom>=0.28,<0.29"),  # DICOM SEG and SR export
    ("pynetdicom", "pynetdicom>=3.0,<3.1"),  # PACS exchange
)

# Packages Slicer provides and that must never be replaced by pip inside Slicer.
NEVER_INSTALL_IN_SLICER = ("SimpleITK", "numpy", "vtk", "slicer-core", "torch")

MINIMUM_TORCH = (2, 11)


def missingRequirements() -> list[str]:
    return [requirement for module, requirement in SLICER_REQUIREMENTS if importlib.util.find_spec(module) is None]


def torchAvailable() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    return version >= MINIMUM_TORCH


def ensureDependencies(confirm: Optional[Callable[[str], bool]] = None, needTorch: bool = False) -> bool:
    """Inside Slicer: install what is missing after ``confirm(message)`` returns True.

    Returns True when everything needed is importable afterwards. ``confirm`` defaults
    to Slicer's OK/Cancel dialog.
    """
    import slicer  # the application's slicer module

    missing = missingRequirements()
    needTorchInstall = needTorch and not torchAvailable()
    if not missing and not needTorchInstall:
        return True
    if confirm is None:
        confirm = lambda text: slicer.util.confirmOkCancelDisplay(text, "MedAnalysis: install Python packages")
    parts = []
    if missing:
        parts.append("Python packages: " + ", ".join(missing))
    if needTorchInstall:
        parts.append("PyTorch (through the PyTorch extension)")
    if not confirm("MedAnalysis needs to install:\n" + "\n".join(parts) + "\n\nThis may take a few minutes. Continue?"):
        return False
    if needTorchInstall:
        _installTorch()
    if missing:
        _pipInstall(missing)
    return not missingRequirements() and (not needTorch or torchAvailable())


def _installTorch() -> None:
    try:
        import PyTorchUtils  # provided by the PyTorch extension (EXTENSION_DEPENDS)
    except ImportError as error:
        raise RuntimeError("The PyTorch extension is required: install it from the Extension Manager") from error
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if not logic.torchInstalled():
        logic.installTorch(askConfirmation=False, torchVersionRequirement=">=%d.%d" % MINIMUM_TORCH)


def _pipInstall(requirements: Sequence[str]) -> None:
    import slicer

    for requirement in requirements:
        if any(requirement.lower().startswith(name.lower()) for name in NEVER_INSTALL_IN_SLICER):
            raise RuntimeError(f"refusing to pip-install {requirement} inside Slicer")
    packaging = getattr(slicer, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(list(requirements))
    else:
        slicer.util.pip_install(" ".join(f'"{r}"' for r in requirements))
