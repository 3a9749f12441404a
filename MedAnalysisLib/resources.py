"""Where the shipped resources (models, sample data) are.

* source checkout and Slicer extension install: ``<parent of MedAnalysisLib>/Resources``
  (the extension build installs ``Resources/`` beside the ``MedAnalysisLib`` package);
* wheel (``pip install .``): the ``MedAnalysisLib/Resources`` package data.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def resourcesDir() -> Path:
    for candidate in (_PACKAGE_DIR / "Resources", _PACKAGE_DIR.parent / "Resources"):
        if (candidate / "SampleData").is_dir() or (candidate / "Models").is_dir():
            return candidate
    raise FileNotFoundError("MedAnalysis resources (Resources/SampleData, Resources/Models) are not installed")


def sampleDataDir() -> Path:
    return resourcesDir() / "SampleData"


def modelsDir() -> Path:
    return resourcesDir() / "Models"


def samplePath(name: str) -> Path:
    """Path of a shipped sample file, e.g. ``samplePath('mni152_t1.nii.gz')``."""
    path = sampleDataDir() / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sample file is missing from the installation")
    return path
