"""Shared fixtures: a real headless MRML scene (slicer-core) and synthetic test images.

Helper functions live in the ``helpers`` package (Testing/Python/helpers), which pytest puts on
``sys.path`` through ``pythonpath`` in pyproject.toml; import them as ``from helpers.X import ...``,
never from this file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.paths import REPO


@pytest.fixture
def scene():
    from MedAnalysisLib import mrml

    scene = mrml.newScene()
    yield scene
    scene.Clear(1)


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)


@pytest.fixture
def repo_root() -> Path:
    return REPO
