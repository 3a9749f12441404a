"""Paths of the repository, independent of where the importing test file lives."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]  # Testing/Python
REPO = TESTS.parents[1]
