"""`medanalysis scan` / `medanalysis import`: outputs, JSON, ZIP and DICOMDIR sources, and every
bad input of the issue (one-line reason, exit 2, nothing existing overwritten)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from helpers.dicomgen import write_slices
from helpers.paths import REPO
from MedAnalysisLib.core import dicom, dicom_archive
from MedAnalysisLib.core.dicom_archive import ArchiveLimits, extract_zip
from MedAnalysisLib.core.dicom_import import import_to_files, scan_source
from MedAnalysisLib.core.errors import InputError

VALUES = (np.arange(8 * 20 * 24).reshape(8, 20, 24) % 500 - 100).astype(np.int16)
POSITIONS = [(-12.0, -10.0, 3.0 * k) for k in range(8)]


def run_cli(*args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "MedAnalysisLib.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


def one_line_error(result, name: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("[")]
    assert len(lines) == 1, result.stderr
    assert name in lines[0] and "Traceback" not in result.stderr
    return lines[0]


def write_series(folder: Path, **kwargs) -> list:
    return write_slices(folder, list(VALUES), POSITIONS, [1, 0, 0, 0, 1, 0], (0.5, 0.6), **kwargs)


@pytest.fixture
def existing_output(tmp_path):
    path = tmp_path / "out" / "existing.nii"
    path.parent.mkdir()
    path.write_bytes(b"precious")
    return path


def assert_untouched(path: Path) -> None:
    assert path.read_bytes() == b"precious"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


# --- normal use -----------------------------------------------------------------------------------

def test_scan_json_lists_series_without_patient_identifiers(tmp_path):
    write_series(tmp_path / "a", series_number=3)
    write_series(tmp_path / "b", series_number=5, study_uid=generate_uid())
    (tmp_path / "notes.txt").write_text("not DICOM")
    result = run_cli("scan", tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["studies"] == 2 and sorted(s["series_number"] for s in report["series"]) == [3, 5]
    assert report["non_dicom_files"] == 1 and report["dicom_files"] == 16
    [first] = [s for s in report["series"] if s["series_number"] == 3]
    volume = first["volumes"][0]
    assert volume["size"] == [24, 20, 8] and volume["spacing_mm"] == [0.6, 0.5, 3.0]
    assert first["modality"] == "MR" and first["description"] == "synthetic series"
    text = result.stdout + result.stderr
    assert "Synthetic" not in text and "SYN0001" not in text
    human = run_cli("scan", tmp_path)
    assert human.returncode == 0 and "series 3 MR" in human.stdout and "Phantom" not in human.stdout


def test_import_several_series_writes_one_file_each(tmp_path):
    write_series(tmp_path / "src" / "a", series_number=3)
    write_series(tmp_path / "src" / "b", series_number=5)
    result = run_cli("import", tmp_path / "src", "-o", tmp_path / "out" / "case.nrrd", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    files = [Path(o["file"]).name for o in report["outputs"]]
    assert sorted(files) == ["case_3.nrrd", "case_5.nrrd"]
    for name in files:
        image = sitk.ReadImage(str(tmp_path / "out" / name))
        assert np.array_equal(sitk.GetArrayFromImage(image), VALUES)
        assert (tmp_path / "out" / f"{name}.provenance.json").is_file()
    [uid] = [o["series_uid"] for o in report["outputs"] if o["series_number"] == 5]
    one = run_cli("import", tmp_path / "src", "-o", tmp_path / "one.nii", "--series", uid, "--json")
    assert one.returncode == 0 and [o["series_number"] for o in json.loads(one.stdout)["outputs"]] == [5]


def test_zip_source_is_extracted_and_cleaned(tmp_path):
    paths = write_series(tmp_path / "series")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in paths:
            zipped.write(path, f"patient/study/{path.name}")
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    result = run_cli("import", archive, "-o", tmp_path / "zip.nii.gz", "--json", env_extra={"TMPDIR": str(private_tmp)})
    assert result.returncode == 0, result.stderr
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "zip.nii.gz"))), VALUES)
    assert list(private_tmp.iterdir()) == []  # extraction folder removed
    report = scan_source(archive)
    assert report["kind"] == "zip" and report["series"][0]["files"] == 8


def test_dicomdir_source():
    from pydicom.data import get_testdata_file

    report = scan_source(get_testdata_file("DICOMDIR"))
    assert report["kind"] == "dicomdir"
    assert len(report["series"]) >= 5 and report["dicom_files"] >= 30


# --- bad input: one line, exit 2, nothing overwritten -----------------------------------------------

def test_empty_folder(tmp_path, existing_output):
    (tmp_path / "empty").mkdir()
    line = one_line_error(run_cli("import", tmp_path / "empty", "-o", existing_output), "empty")
    assert "folder is empty" in line
    assert_untouched(existing_output)


def test_folder_without_dicom(tmp_path, existing_output):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    line = one_line_error(run_cli("import", folder, "-o", existing_output), "docs")
    assert "no DICOM or image files found" in line and "2 file(s) checked" in line
    assert_untouched(existing_output)
    assert "no DICOM" in one_line_error(run_cli("scan", folder), "docs")


def test_truncated_file_is_left_out_with_a_warning(tmp_path):
    paths = write_series(tmp_path / "series")
    victim = paths[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 300])
    result = run_cli("import", tmp_path / "series", "-o", tmp_path / "out.nii", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    [output] = report["outputs"]
    assert any(victim.name in w and "truncated pixel data" in w for w in output["warnings"])
    assert output["qa"]["missing_slices"][0]["after_slice"] == 2
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out.nii")))
    assert image.shape == VALUES.shape
    assert np.array_equal(image[:3], VALUES[:3]) and np.array_equal(image[4:], VALUES[4:])
    assert report["skipped"] == [{"file": victim.name, "reason": "truncated pixel data (660 of 960 bytes)"}]


def test_pixel_data_missing(tmp_path, existing_output):
    write_series(tmp_path / "headers", edit=lambda ds, k: delattr(ds, "PixelData"))
    line = one_line_error(run_cli("import", tmp_path / "headers", "-o", existing_output), "headers")
    assert "without pixel data" in line
    assert_untouched(existing_output)


def test_zip_slip_is_refused(tmp_path, existing_output):
    paths = write_series(tmp_path / "series")
    archive = tmp_path / "work" / "evil.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(paths[0], "ok/slice0.dcm")
        zipped.writestr("../escaped.dcm", paths[1].read_bytes())
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    line = one_line_error(run_cli("import", archive, "-o", existing_output, env_extra={"TMPDIR": str(private_tmp)}),
                          "evil.zip")
    assert "zip-slip" in line and "../escaped.dcm" in line
    assert list(private_tmp.iterdir()) == []  # the extraction folder is removed on refusal too
    assert not (tmp_path / "escaped.dcm").exists() and not (archive.parent.parent / "escaped.dcm").exists()
    assert_untouched(existing_output)
    absolute = tmp_path / "work" / "absolute.zip"
    with zipfile.ZipFile(absolute, "w") as zipped:
        zipped.writestr("/etc/medanalysis-test.dcm", b"x")
    assert "absolute path" in one_line_error(run_cli("scan", absolute), "absolute.zip")


def test_zip_bomb_is_refused(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("zeros.dcm", bytes(64 * 1024 * 1024))
    assert archive.stat().st_size < 200_000
    with pytest.raises(InputError, match="zip bomb"):
        scan_source(archive)
    destination = tmp_path / "limited"
    destination.mkdir()
    with pytest.raises(InputError, match="more than the limit"):
        extract_zip(archive, destination, ArchiveLimits(max_total_bytes=1024 * 1024, max_ratio=1e9))


def test_inconsistent_slice_sizes_are_split(tmp_path):
    series = dict(study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid(), series_number=6)
    write_series(tmp_path / "mixed", **series)
    write_slices(tmp_path / "mixed", [VALUES[k, :10, :12].copy() for k in range(2)], POSITIONS[:2],
                 [1, 0, 0, 0, 1, 0], (0.5, 0.6), names=["small_a", "small_b"], **series)
    result = run_cli("import", tmp_path / "mixed", "-o", tmp_path / "mixed.nii", "--json")
    assert result.returncode == 0, result.stderr
    outputs = json.loads(result.stdout)["outputs"]
    assert [Path(o["file"]).name for o in outputs] == ["mixed_6_1.nii", "mixed_6_2.nii"]
    assert [o["size"] for o in outputs] == [[24, 20, 8], [12, 10, 2]]
    assert all(any("mixes size" in w for w in o["warnings"]) for o in outputs)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file regardless of permissions")
def test_unreadable_file_permissions_cli(tmp_path):
    paths = write_series(tmp_path / "series")
    paths[2].chmod(0)
    result = run_cli("import", tmp_path / "series", "-o", tmp_path / "out.nii", "--json")
    assert result.returncode == 0
    assert any("permission denied" in w for w in json.loads(result.stdout)["outputs"][0]["warnings"])
    single = one_line_error(run_cli("import", paths[2], "-o", tmp_path / "one.nii"), paths[2].name)
    assert "permission denied" in single


def test_unreadable_file_permissions(tmp_path, monkeypatch, existing_output):
    """As root the OS grants access anyway, so the permission failure is simulated."""
    paths = write_series(tmp_path / "series")
    locked = paths[2]
    real_open = open

    def guarded_open(file, *args, **kwargs):
        if Path(file) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(dicom.header, "open", guarded_open, raising=False)  # read_header's open
    result = import_to_files(tmp_path / "series", tmp_path / "out.nii")
    [output] = result["outputs"]
    assert any(locked.name in w and "permission denied" in w for w in output["warnings"])
    monkeypatch.setattr(dicom_archive.os, "access", lambda path, mode: False)
    with pytest.raises(InputError, match="permission denied"):
        import_to_files(locked, existing_output)
    assert_untouched(existing_output)


def test_unknown_series_and_bad_output_extension(tmp_path, existing_output):
    write_series(tmp_path / "series")
    line = one_line_error(run_cli("import", tmp_path / "series", "-o", existing_output, "--series", "1.2.3"),
                          "series")
    assert "no series or volume '1.2.3'" in line
    assert "unsupported output extension" in one_line_error(
        run_cli("import", tmp_path / "series", "-o", tmp_path / "x.png"), "x.png")
    assert_untouched(existing_output)


def test_missing_source(tmp_path):
    assert "does not exist" in one_line_error(run_cli("scan", tmp_path / "nowhere"), "nowhere")


def test_cancelled_import_writes_nothing(tmp_path):
    from MedAnalysisLib.core.errors import OperationCancelled
    from MedAnalysisLib.core.progress import CancelToken

    write_series(tmp_path / "series")
    cancel = CancelToken()

    def progress(fraction, message):
        if fraction > 0.5:
            cancel.cancel()

    with pytest.raises(OperationCancelled):
        import_to_files(tmp_path / "series", tmp_path / "out" / "x.nii", progress=progress, cancel=cancel)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
