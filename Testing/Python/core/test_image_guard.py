"""Inputs that lie (second part): image headers that point elsewhere, declare voxels that are not
there, ask for more memory than the machine has, or hold geometry that cannot be used.  Each is
refused before any voxel is allocated, with one line naming the file and the problem."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.paths import REPO
from MedAnalysisLib.core import imageio
from MedAnalysisLib.core.errors import InputError


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "MedAnalysisLib.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


def write_nhdr(folder, data_file, sizes=(4, 5, 6)):
    header = folder / "scan.nhdr"
    header.write_text("NRRD0004\ntype: uint8\ndimension: 3\nsizes: %d %d %d\nspace: left-posterior-superior\n"
                      "space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\nencoding: raw\n"
                      "data file: %s\n\n" % (*sizes, data_file))
    return header


@pytest.fixture
def nifti(tmp_path, rng):
    """A small float NIfTI-1 file, uncompressed (raw header bytes can be edited in place)."""
    path = tmp_path / "scan.nii"
    image = sitk.GetImageFromArray(rng.normal(100, 10, (12, 14, 16)).astype(np.float32))
    image.SetSpacing((1.0, 1.2, 1.5))
    sitk.WriteImage(image, str(path))
    return path


def patch_header(path, offset, fmt, *values):
    data = bytearray(path.read_bytes())
    struct.pack_into("<" + fmt, data, offset, *values)
    path.write_bytes(bytes(data))


def refused(path, *words):
    with pytest.raises(InputError) as caught:
        imageio.read_image(path)
    message = str(caught.value)
    assert path.name in message and "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


def test_detached_data_beside_the_header_reads(tmp_path):
    (tmp_path / "scan.raw").write_bytes(bytes(range(120)))
    image = imageio.read_image(write_nhdr(tmp_path, "scan.raw"))
    assert image.GetSize() == (4, 5, 6)
    assert int(sitk.GetArrayViewFromImage(image)[5, 4, 3]) == 119


@pytest.mark.parametrize("target", ["/etc/passwd", "../outside.raw", "sub/../../outside.raw"])
def test_detached_data_outside_the_folder_is_refused(tmp_path, target):
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "outside.raw").write_bytes(bytes(120))
    header = write_nhdr(inner, target)
    refused(header, target)
    with pytest.raises(InputError):
        imageio.read_image_header(header)  # even the header-only read


def test_metaimage_detached_data_outside_is_refused(tmp_path):
    header = tmp_path / "scan.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 5 6\nElementType = MET_UCHAR\n"
                      "ElementDataFile = /etc/hostname\n")
    refused(header, "absolute path")


def test_symlinked_data_leaving_the_folder_is_refused(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "outside.raw").write_bytes(bytes(120))
    (inner / "scan.raw").symlink_to(tmp_path / "outside.raw")
    refused(write_nhdr(inner, "scan.raw"), "outside its folder")


def test_truncated_nifti_is_refused_not_zero_filled(tmp_path, nifti):
    data = nifti.read_bytes()
    short = tmp_path / "short.nii"
    short.write_bytes(data[:len(data) // 2])
    refused(short, "truncated")
    gz = tmp_path / "short.nii.gz"
    gz.write_bytes(gzip.compress(data)[:-2000])
    refused(gz, "truncated")
    whole = tmp_path / "whole.nii.gz"
    whole.write_bytes(gzip.compress(data))
    assert imageio.read_image(whole).GetSize() == (16, 14, 12)


def test_zero_voxel_size_is_refused(nifti):
    patch_header(nifti, 80, "f", 0.0)  # pixdim[1]
    refused(nifti, "voxel sizes")


def test_nan_orientation_is_refused(nifti):
    patch_header(nifti, 254, "h", 1)  # sform_code
    patch_header(nifti, 280, "f", float("nan"))  # srow_x[0]
    refused(nifti, "non-finite orientation")


def test_zero_size_is_refused(nifti):
    patch_header(nifti, 42, "h", 0)  # dim[1]
    refused(nifti, "zero or negative size")


def test_header_that_asks_for_too_much_memory_is_refused_before_reading(tmp_path, monkeypatch):
    (tmp_path / "scan.raw").write_bytes(bytes(120))
    bomb = write_nhdr(tmp_path, "scan.raw", sizes=(30000, 30000, 30000))
    message = refused(bomb, "memory budget")
    assert "MEDANALYSIS_MAX_MEMORY" in message
    monkeypatch.setenv("MEDANALYSIS_MAX_MEMORY", "100")
    refused(write_nhdr(tmp_path, "scan.raw"), "memory budget")
    monkeypatch.setenv("MEDANALYSIS_MAX_MEMORY", "lots")
    with pytest.raises(InputError, match="MEDANALYSIS_MAX_MEMORY"):
        imageio.read_image(write_nhdr(tmp_path, "scan.raw"))


def test_cli_gives_one_line_and_leaves_no_output(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    header = write_nhdr(inner, "/etc/passwd")
    out = tmp_path / "out.nii.gz"
    for command in (["info", header], ["enhance", header, "-o", out, "--denoise", "gaussian"]):
        result = run_cli(*command)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("[")]
        assert len(lines) == 1 and "scan.nhdr" in lines[0] and "Traceback" not in result.stderr, result.stderr
        assert "root:" not in result.stdout + result.stderr
    assert not out.exists()


def test_segmentation_file_goes_through_the_same_checks(tmp_path, scene):
    from MedAnalysisLib import mrml

    inner = tmp_path / "inner"
    inner.mkdir()
    header = write_nhdr(inner, "/etc/passwd")
    seg = inner / "lesions.seg.nrrd"
    seg.write_bytes(header.read_bytes())
    with pytest.raises(InputError, match="absolute path"):
        mrml.loadSegmentation(seg, scene)
    assert not scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems()


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_nrrd_is_refused_and_whole_one_reads(tmp_path, rng, compress):
    path = tmp_path / "scan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(rng.normal(0, 1, (10, 12, 14)).astype(np.float32)), str(path),
                    useCompression=compress)
    assert imageio.read_image(path).GetSize() == (14, 12, 10)
    data = path.read_bytes()
    short = tmp_path / "short.nrrd"
    short.write_bytes(data[:len(data) - 200])
    refused(short, "truncated")


SEG_SPACE = b"space: left-posterior-superior\nspace directions: %s(1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\n\n"


@pytest.mark.parametrize("name, header, body, words", [
    ("lesions.seg.nrrd", b"dimension: 3\nsizes: 2147483648 2 1\n" + SEG_SPACE % b"", 64, "lesions.seg.nrrd"),
    ("layers.seg.nrrd", b"dimension: 4\nsizes: 2 8 8 8\nkinds: list domain domain domain\n" + SEG_SPACE % b"none ",
     100, "truncated"),
])
def test_segmentation_with_inflated_extent_is_refused_before_slicer_reads_it(tmp_path, scene, name, header, body,
                                                                             words):
    from MedAnalysisLib import mrml

    seg = tmp_path / name
    seg.write_bytes(b"NRRD0004\ntype: unsigned char\nencoding: raw\n" + header + bytes(body))
    with pytest.raises(InputError, match=words):
        mrml.loadSegmentation(seg, scene)
    assert not scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems()
