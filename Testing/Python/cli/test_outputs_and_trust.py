"""Inputs that lie (first part): outputs never replace inputs, arguments are checked before any
output is touched, and permission to run code comes only from the operator."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.paths import REPO
from MedAnalysisLib.core.errors import InputError


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "MedAnalysisLib.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=600)


@pytest.fixture
def volume(tmp_path, rng):
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(rng.normal(100, 10, (20, 24, 28)).astype(np.float32)), str(path))
    return path


def assert_refused(result, *words):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("command", [
    ["enhance", "{src}", "-o", "{same}", "--denoise", "gaussian"],
    ["segment", "{src}", "-o", "{same}", "--brain-mask", "off"],
    ["register", "{src}", "{other}", "-o", "{same}"],
    ["register", "{src}", "{other}", "-o", "{out}", "--init", "{tfm}", "--transform", "{tfm}"],
    ["brain-mask", "{src}", "-o", "{same}"],
])
def test_an_output_that_is_an_input_is_refused_and_the_input_kept(command, volume, tmp_path):
    other = tmp_path / "other.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(volume)), str(other))
    before = volume.read_bytes()
    same = tmp_path / "sub" / ".." / volume.name  # another spelling of the same file
    (tmp_path / "sub").mkdir()
    tfm = tmp_path / "start.tfm"
    sitk.WriteTransform(sitk.Euler3DTransform(), str(tfm))
    kept = tfm.read_bytes()
    args = [a.format(src=volume, same=same, other=other, out=tmp_path / "out.nii.gz", tfm=tfm) for a in command]
    assert_refused(run_cli(*args), "would replace the input")
    assert volume.read_bytes() == before and tfm.read_bytes() == kept


def test_enhance_checks_every_argument_before_writing(volume, tmp_path):
    output = tmp_path / "enhanced.nii.gz"
    output.write_bytes(b"previous")
    result = run_cli("enhance", volume, "-o", output, "--denoise", "gaussian", "--bias-field-output",
                     tmp_path / "field.nii.gz")
    assert_refused(result, "--bias-correct")
    assert output.read_bytes() == b"previous" and not (tmp_path / "field.nii.gz").exists()


def test_output_that_is_a_folder_or_in_a_missing_folder(volume, tmp_path):
    (tmp_path / "folder.nii.gz").mkdir()
    assert_refused(run_cli("enhance", volume, "-o", tmp_path / "folder.nii.gz", "--denoise", "gaussian"), "folder")
    assert_refused(run_cli("enhance", volume, "-o", tmp_path / "missing" / "x.nii.gz", "--denoise", "gaussian"),
                   "does not exist")


def test_segment_probabilities_must_be_a_folder(volume, tmp_path):
    existing = tmp_path / "probabilities.txt"
    existing.write_text("keep")
    result = run_cli("segment", volume, "-o", tmp_path / "seg.nii.gz", "--probabilities", existing, "--brain-mask", "off")
    assert_refused(result, "folder")
    assert existing.read_text() == "keep" and not (tmp_path / "seg.nii.gz").exists()


@pytest.mark.parametrize("option,value", [("--min-lesion-ml", "-1"), ("--relative-change", "nan"),
                                          ("--absolute-change-ml", "inf")])
def test_monitor_thresholds_are_checked(option, value, volume, tmp_path):
    result = run_cli("monitor", volume, volume, "-o", tmp_path / "report", option, value)
    assert_refused(result, "finite number")
    assert not (tmp_path / "report").exists()


def test_trust_never_comes_from_a_manifest(tmp_path, volume):
    from MedAnalysisLib import batch

    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"case_id,input,trusted\nc1,{volume},yes\n")
    with pytest.raises(InputError, match="operator"):
        batch.readManifest(manifest)
    plain = tmp_path / "plain.csv"
    plain.write_text(f"case_id,input\nc1,{volume}\n")
    case = batch.readManifest(plain)[0]
    smuggled = batch.CaseSpec(case.caseId, case.input, None, {"trusted": "yes"}, case.row)
    assert "trusted" not in batch.caseParameters(smuggled, ["segment"], batch.STEPS)
    assert batch.caseParameters(smuggled, ["segment"], batch.STEPS, {"trusted": "1"})["trusted"] == "1"


def test_several_outputs_are_published_together_or_not_at_all(tmp_path, volume, monkeypatch, capsys):
    """The bias field cannot be written (disk full): the enhanced image written just before it
    must not replace the existing output either, and no temporary file stays behind."""
    import errno

    from MedAnalysisLib import cli

    output, field = tmp_path / "out.nii.gz", tmp_path / "field.nii.gz"
    output.write_bytes(b"previous output")
    real_write = sitk.WriteImage
    calls = []

    def write(image, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", name)
        return real_write(image, name, *args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", write)
    code = cli.main(["enhance", str(volume), "-o", str(output), "--bias-correct", "--bias-field-output", str(field)])
    err = capsys.readouterr().err
    assert code == 2 and len(calls) == 2, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and "No space left on device" in lines[0], err
    assert output.read_bytes() == b"previous output" and not field.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz", "scan.nii.gz"]

    monkeypatch.setattr(sitk, "WriteImage", real_write)
    assert cli.main(["enhance", str(volume), "-o", str(output), "--bias-correct",
                     "--bias-field-output", str(field)]) == 0
    assert output.read_bytes() != b"previous output" and field.exists()


@pytest.mark.parametrize("command, words", [
    (["enhance", "{src}", "-o", "{out}", "--spacing", "0.05,0.05,0.05"], ["spacing", "memory budget"]),
    (["enhance", "{src}", "-o", "{out}", "--spacing", "1e-300,1,1"], ["spacing", "memory budget"]),
    (["segment", "{src}", "-o", "{out}", "--threads", "-1", "--brain-mask", "off"], ["threads"]),
    (["register", "{src}", "{src}", "-o", "{out}", "--threads", "-1"], ["threads"]),
])
def test_parameters_that_would_exhaust_the_machine_are_refused_before_work(tmp_path, volume, command, words,
                                                                           monkeypatch):
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"previous")
    monkeypatch.setenv("MEDANALYSIS_MAX_MEMORY", str(1 << 30))
    result = run_cli(*[a.format(src=volume, out=out) for a in command])
    assert_refused(result, *words)
    assert out.read_bytes() == b"previous"
