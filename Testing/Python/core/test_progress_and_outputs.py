"""All-or-nothing outputs, cancellation and provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from MedAnalysisLib.core import imageio
from MedAnalysisLib.core.errors import InputError, OperationCancelled
from MedAnalysisLib.core.progress import CancelToken, ProgressReporter, atomic_output
from MedAnalysisLib.core.provenance import make_provenance


def test_failed_write_leaves_existing_output(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_cancel_token_stops_reporter():
    token = CancelToken()
    seen = []
    reporter = ProgressReporter(lambda f, m: seen.append((f, m)), token).sub(0.5, 1.0)
    reporter(0.5, "half of second half")
    assert seen == [(0.75, "half of second half")]
    token.cancel()
    with pytest.raises(OperationCancelled):
        reporter(0.9, "never")


def test_write_image_with_provenance_sidecar(tmp_path):
    image = sitk.GetImageFromArray(np.ones((3, 4, 5), np.float32))
    record = make_provenance("test", {"sigma_mm": 1.0}, {"in.nii.gz": "abc"})
    path = imageio.write_image(image, tmp_path / "o.nii.gz", provenance=record)
    sidecar = json.loads((tmp_path / "o.nii.gz.provenance.json").read_text())
    assert sidecar["operation"] == "test" and sidecar["parameters"] == {"sigma_mm": 1.0}
    assert sidecar["version"] and sidecar["inputs_sha256"] == {"in.nii.gz": "abc"}
    assert sitk.ReadImage(str(path)).GetSize() == (5, 4, 3)


def test_unsupported_output_extension(tmp_path):
    with pytest.raises(InputError, match="unsupported output extension"):
        imageio.write_image(sitk.Image([2, 2, 2], sitk.sitkUInt8), tmp_path / "x.png")
    assert not list(tmp_path.iterdir())
