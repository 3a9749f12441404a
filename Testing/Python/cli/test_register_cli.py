"""``medanalysis register``: outputs, JSON, and one-line exit-2 errors that leave existing files alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.paths import REPO
from MedAnalysisLib import cli
from helpers.registration_cases import make_case


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("register_cli")
    case = make_case("rigid", 2.0)
    paths = {"fixed": folder / "fixed.nii.gz", "moving": folder / "moving.nii.gz",
             "fixed_mask": folder / "fixed_mask.nii.gz", "moving_mask": folder / "moving_mask.nii.gz"}
    sitk.WriteImage(case.fixed, str(paths["fixed"]))
    sitk.WriteImage(case.moving, str(paths["moving"]))
    sitk.WriteImage(case.fixed_mask, str(paths["fixed_mask"]))
    sitk.WriteImage(case.moving_mask, str(paths["moving_mask"]))
    return case, paths


def test_register_writes_resampled_and_transform(files, tmp_path):
    case, paths = files
    output, transform = tmp_path / "registered.nrrd", tmp_path / "moving_to_fixed.tfm"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "MedAnalysisLib.cli", "register", str(paths["fixed"]),
                             str(paths["moving"]), "-o", str(output), "--transform", str(transform),
                             "--preset", "rigid", "--metric", "mi", "--init", "moments",
                             "--fixed-mask", str(paths["fixed_mask"]), "--moving-mask", str(paths["moving_mask"]),
                             "--threads", "2", "--json"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["outputs"] == {"resampled": str(output), "transform": str(transform)}
    assert report["qa"]["final_metric"] < report["qa"]["initial_metric"]
    assert report["qa"]["mask_dice"] > 0.95
    tre = case.tre_summary(sitk.ReadTransform(str(transform)))
    assert tre["mean_mm"] <= 0.3, tre
    resampled = sitk.ReadImage(str(output))
    assert resampled.GetSize() == case.fixed.GetSize()
    assert np.allclose(resampled.GetOrigin(), case.fixed.GetOrigin())
    assert (tmp_path / "moving_to_fixed.tfm.provenance.json").exists()
    assert (tmp_path / "registered.nrrd.provenance.json").exists()


def run_main(capsys, *args):
    """In-process CLI run with --json (progress is quiet: stderr holds only the error)."""
    code = cli.main(["register", *map(str, args), "--json"])
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()]


@pytest.fixture
def existing(tmp_path):
    """An output and a transform that already exist: bad input must leave them as they are."""
    output, transform = tmp_path / "out.nii.gz", tmp_path / "out.tfm"
    output.write_bytes(b"previous result")
    transform.write_bytes(b"previous transform")
    return output, transform


def assert_bad_input(code, lines, name, existing, text):
    assert code == 2
    assert len(lines) == 1, lines
    assert name in lines[0] and text in lines[0], lines[0]
    output, transform = existing
    assert output.read_bytes() == b"previous result" and transform.read_bytes() == b"previous transform"
    assert sorted(p.name for p in output.parent.iterdir()) == ["out.nii.gz", "out.tfm"]


def test_constant_image(files, tmp_path, capsys, existing):
    case, paths = files
    flat = tmp_path / "flat.nrrd"
    image = sitk.Image(case.moving.GetSize(), sitk.sitkFloat32) + 3.0
    image.CopyInformation(case.moving)
    sitk.WriteImage(image, str(flat))
    output, transform = existing
    code, lines = run_main(capsys, paths["fixed"], flat, "-o", output, "--transform", transform)
    flat.unlink()
    assert_bad_input(code, lines, "flat.nrrd", existing, "image is constant")


def test_2d_versus_3d(files, tmp_path, capsys, existing):
    case, paths = files
    slice_path = tmp_path / "slice.nrrd"
    sitk.WriteImage(case.moving[:, :, 40], str(slice_path))
    output, transform = existing
    code, lines = run_main(capsys, paths["fixed"], slice_path, "-o", output, "--transform", transform)
    slice_path.unlink()
    assert_bad_input(code, lines, "slice.nrrd", existing, "2-D image: registration needs 3-D images")


def test_empty_mask(files, tmp_path, capsys, existing):
    case, paths = files
    empty = tmp_path / "empty.nrrd"
    image = sitk.Image(case.fixed.GetSize(), sitk.sitkUInt8)
    image.CopyInformation(case.fixed)
    sitk.WriteImage(image, str(empty))
    output, transform = existing
    code, lines = run_main(capsys, paths["fixed"], paths["moving"], "-o", output, "--transform", transform,
                           "--fixed-mask", empty)
    empty.unlink()
    assert_bad_input(code, lines, "empty.nrrd", existing, "mask is empty")


def test_no_overlap_after_initialization(files, tmp_path, capsys, existing):
    case, paths = files
    far = tmp_path / "far.tfm"
    sitk.WriteTransform(sitk.TranslationTransform(3, (0.0, 800.0, 0.0)), str(far))
    output, transform = existing
    code, lines = run_main(capsys, paths["fixed"], paths["moving"], "-o", output, "--transform", transform,
                           "--init", far)
    far.unlink()
    assert_bad_input(code, lines, "moving.nii.gz", existing, "does not overlap the fixed image after 'far.tfm'")
    assert "--init geometry or --init moments" in lines[0]


def test_diverged_optimization(files, tmp_path, capsys, existing):
    case, paths = files
    preset = tmp_path / "ascent.json"
    preset.write_text(json.dumps({"description": "gradient ascent: must be reported as a failure", "stages": [
        {"transform": "rigid", "shrink_factors": [4, 2], "smoothing_sigmas_mm": [1, 0], "samples": 3000,
         "iterations": 5, "optimizer": {"name": "gradient_descent", "learning_rate": -10.0,
                                        "estimate_learning_rate": "never"}}]}))
    output, transform = existing
    code, lines = run_main(capsys, paths["fixed"], paths["moving"], "-o", output, "--transform", transform,
                           "--preset", preset)
    preset.unlink()
    assert_bad_input(code, lines, "moving.nii.gz", existing, "registration failed")


@pytest.mark.parametrize("extra,name,text", [
    (["--preset", "warp"], "preset", "unknown preset 'warp'"),
    (["--init", "nowhere.tfm"], "nowhere.tfm", "initial transform file does not exist"),
    (["--threads", "0"], "threads", "must be at least 1"),
    (["--init", "far.tfm+search"], "init", "'+search' needs geometry or moments"),
])
def test_bad_options(files, capsys, existing, extra, name, text):
    case, paths = files
    output, transform = existing
    code, lines = run_main(capsys, paths["fixed"], paths["moving"], "-o", output, "--transform", transform, *extra)
    assert_bad_input(code, lines, name, existing, text)


def test_bad_output_names(files, tmp_path, capsys):
    case, paths = files
    code, lines = run_main(capsys, paths["fixed"], paths["moving"], "-o", tmp_path / "out.png")
    assert code == 2 and "unsupported output extension" in lines[0]
    code, lines = run_main(capsys, paths["fixed"], paths["moving"], "-o", tmp_path / "out.nrrd", "--transform",
                           tmp_path / "t.json")
    assert code == 2 and "unsupported transform extension" in lines[0]
    code, lines = run_main(capsys, tmp_path / "missing.nii.gz", paths["moving"], "-o", tmp_path / "out.nrrd")
    assert code == 2 and "missing.nii.gz: file does not exist" in lines[0]
    assert list(tmp_path.iterdir()) == []
