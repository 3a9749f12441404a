"""Inputs that lie (DICOM): header values that would steer output paths, frame counts and slice
positions that would exhaust memory, text fields with undecodable bytes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from helpers.dicomgen import write_slices
from helpers.paths import REPO

ORIENTATION = (1, 0, 0, 0, 1, 0)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "MedAnalysisLib.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=300, env=env)


def one_line_refusal(result, *words):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and "Traceback" not in result.stderr and "internal error" not in result.stderr, \
        result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def small_series(folder, rng, count=4, positions=None, edit=None):
    slices = [rng.integers(0, 1000, (16, 16)).astype(np.int16) for _ in range(count)]
    positions = positions or [(0.0, 0.0, 2.0 * k) for k in range(count)]
    return write_slices(folder, slices, positions, ORIENTATION, (1.0, 1.0), edit=edit)


def test_slices_at_absurd_positions_are_refused_before_allocation(tmp_path, rng):
    small_series(tmp_path / "dcm", rng, count=3, positions=[(0, 0, 0), (0, 0, 1.0), (0, 0, 5e6)])
    out = tmp_path / "out.nii.gz"
    result = run_cli("import", tmp_path / "dcm", "-o", out)
    one_line_refusal(result, "exceeds 10 m")  # a 5 km stack is a header that lies, not an image
    assert not out.exists()


def test_declared_frames_beyond_memory_are_refused(tmp_path, rng):
    paths = small_series(tmp_path / "dcm", rng, count=1)
    ds = pydicom.dcmread(paths[0])
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 100000
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.save_as(paths[0], enforce_file_format=True)
    one_line_refusal(run_cli("import", tmp_path / "dcm", "-o", tmp_path / "out.nii.gz"))
    assert not (tmp_path / "out.nii.gz").exists()


def test_header_values_never_steer_export_paths(tmp_path, rng):
    def edit(ds, index):
        ds.Modality = "../../../../X"
        ds.SeriesDescription = "../../escape"

    small_series(tmp_path / "dcm", rng, edit=edit)
    export = tmp_path / "deep" / "er" / "export"
    result = run_cli("import", tmp_path / "dcm", "-o", tmp_path / "out" / "a.nii.gz", "--anonymize",
                     "--export-dicom", export)
    assert result.returncode in (0, 2), result.stderr
    written = [p for p in tmp_path.rglob("*.dcm") if "dcm" not in p.relative_to(tmp_path).parts[0]]
    assert all(export in p.parents for p in written), written
    if result.returncode == 0:
        assert written and all(p.parent.name.replace("_", "").isalnum() for p in written)
    else:
        one_line_refusal(result)
        assert not written


def test_undecodable_text_bytes_do_not_crash_import_or_export(tmp_path, rng):
    def edit(ds, index):
        ds["SeriesDescription"].value = b"T1 \xff\xfe\x1b[31m caf\xe9"
        ds["PatientName"].value = b"Doe\x1b[2J^J\xff"
        ds["InstitutionName"] = pydicom.DataElement(0x00080080, "LO", b"H\xf4pital \xff")

    small_series(tmp_path / "dcm", rng, edit=edit)
    for extra in ([], ["--anonymize", "--export-dicom", tmp_path / "export"]):
        out = tmp_path / f"out{len(extra)}.nii.gz"
        result = run_cli("import", tmp_path / "dcm", "-o", out, "--json", *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr and "\x1b" not in result.stderr + result.stdout
        assert out.exists()
    result = run_cli("scan", tmp_path / "dcm")
    assert result.returncode == 0 and "\x1b" not in result.stdout + result.stderr, result.stderr


def test_single_dicom_files_are_read_by_our_reader_never_probed_by_gdcm(tmp_path, rng):
    """info/read_image on one DICOM file: a header GDCM would choke on (a damaged file-meta VR made
    GDCM allocate gigabytes in the fuzz) is read by our own checked reader; an object without
    pixels is refused before any reader; its de-identified export is a clear refusal (exit 2)."""
    import json

    path = small_series(tmp_path / "one", rng, count=1)[0]
    data = bytearray(path.read_bytes())
    at = data.index(b"\x02\x00\x10\x00UI")  # (0002,0010) TransferSyntaxUID, explicit VR
    data[at + 4:at + 6] = b"UP"  # a VR that does not exist
    damaged = tmp_path / "damaged.dcm"
    damaged.write_bytes(bytes(data))
    result = run_cli("info", damaged, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["size"] == [16, 16, 1]
    exported = run_cli("import", damaged, "-o", tmp_path / "a.nii.gz", "--anonymize", "--export-dicom", tmp_path / "x")
    one_line_refusal(exported, "damaged.dcm", "de-identified")
    assert not (tmp_path / "a.nii.gz").exists() and not (tmp_path / "x").exists()

    dataset = pydicom.dcmread(path)
    del dataset.PixelData
    del dataset.Rows
    no_pixels = tmp_path / "no_pixels.dcm"
    dataset.save_as(no_pixels, enforce_file_format=True)
    one_line_refusal(run_cli("info", no_pixels), "no_pixels.dcm", "without image pixel data")
