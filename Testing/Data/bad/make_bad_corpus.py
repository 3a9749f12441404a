"""Generate the bad-input corpus ("inputs that lie", issue 16): small image files whose headers lie
about their size, geometry or data location, borderline images, and archives/DICOM files with
hostile values.

    python make_bad_corpus.py OUT_DIR [SENTINEL]

``main(out_dir, sentinel_path=None)`` writes every case of :data:`CASES` into ``out_dir`` and
returns ``{name: path}``. Everything is deterministic (fixed seeds, fixed UIDs, gzip mtime 0,
fixed ZIP timestamps): the same arguments give the same bytes. Each file is < 200 KB.

The *sentinel* stands for a file the input must never make the product read (think
``/etc/passwd``): several headers point their voxel data at it (absolute path, ``../`` escape,
symlink, LIST). The tests create it with unique content and check that content never shows up in
any output. It must lie outside ``out_dir``. Without one, a sentinel is written beside ``out_dir``.

:func:`write_good_images` writes the valid companions the tests need (GOOD, GOOD2, GOODSEG), and
:func:`valid_nifti_bytes` / :func:`valid_nrrd_bytes` / :func:`valid_dicom_dataset` are the bases of
the header fuzz test.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

SEED = 20261116
GZIP_MTIME = 0
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
UID_ROOT = "1.2.826.0.1.3680043.8.498.16"  # fixed UIDs: deterministic files

# name -> what the file is. Auxiliary files (data files, symlinks) are written too but are not cases.
CASES = {
    # NIfTI headers that lie
    "truncated.nii": "NIfTI header declares 24x28x20 float32, only half the voxel bytes present",
    "truncated.nii.gz": "gzip NIfTI, header declares 24x28x20 float32, only half the voxel bytes present",
    "header_only.nii": "348-byte NIfTI header with no vox_offset padding and no voxels",
    "pixdim_zero.nii": "NIfTI pixdim[1] = 0",
    "pixdim_negative.nii.gz": "NIfTI pixdim[2] = -1.5",
    "pixdim_nan.nii": "NIfTI pixdim[3] = NaN",
    "dim_zero.nii": "NIfTI dim[2] = 0",
    "dim_negative.nii": "NIfTI dim[3] = -5",
    "ndim_zero.nii": "NIfTI dim[0] = 0",
    "qform_nan.nii": "NIfTI qform_code 1 with NaN quaternion and offset",
    "sform_nan.nii.gz": "NIfTI sform_code 1 with NaN srow_x",
    "sform_singular.nii": "NIfTI sform_code 1 with an all-zero rotation (determinant 0)",
    "vox_offset_huge.nii": "NIfTI vox_offset = 1e12 (data far past the end of the file)",
    "scl_slope_nan.nii": "NIfTI scl_slope = NaN, scl_inter = inf",
    "memory_bomb.nii.gz": "gzip NIfTI header declaring 4000^3 float32 (256 GB), 4 KB body",
    "memory_bomb.nii": "NIfTI header declaring 4000^3 float32 (256 GB), 4 KB body",
    "gzip_trailer_lie.nii.gz": "gzip NIfTI, 2000^3 float32 declared, gzip trailer forged to claim the bytes",
    # borderline images
    "two_d.nii.gz": "2-D image 32x32",
    "four_d.nii.gz": "4-D image 12x14x10x3",
    "constant.nii.gz": "constant 24x28x20 image",
    "nan_voxels.nii.gz": "24x28x20 image with 37 NaN and 5 inf voxels",
    "tiny_2x2x2.nii.gz": "2x2x2 image",
    "one_slice.nii.gz": "24x28x1 image",
    "huge_spacing.nii.gz": "24x28x20 image with 1e6 mm voxels",
    "text_named.nii.gz": "a text file named .nii.gz",
    "gzip_garbage.nii.gz": "gzip of random bytes named .nii.gz",
    "empty.nii.gz": "empty file",
    # NRRD / MetaImage pointing at data elsewhere
    "abs_datafile.nhdr": "NRRD header, 'data file:' is the absolute path of the sentinel",
    "escape_datafile.nhdr": "NRRD header, 'data file:' ../ escapes the header's folder to the sentinel",
    "symlink_datafile.nhdr": "NRRD header, data file beside it is a symlink to the sentinel",
    "list_datafile.nhdr": "NRRD header, 'data file: LIST' naming the sentinel's absolute path",
    "abs_datafile.mhd": "MetaImage header, ElementDataFile is the absolute path of the sentinel",
    "escape_datafile.mhd": "MetaImage header, ElementDataFile ../ escapes to the sentinel",
    "nrrd_nan_directions.nrrd": "NRRD with NaN space directions",
    "nrrd_big_gzip.nrrd": "NRRD declaring 1024x1024x512 float (2 GiB, under most memory budgets), tiny gzip body",
    "nrrd_truncated_raw.nrrd": "NRRD raw encoding, half of the voxel bytes present",
    # segmentations
    "seg_absurd_extent.seg.nrrd": "seg.nrrd with sizes 2^31 x 2^31 x 2^31 and a tiny body",
    "seg_4d_truncated.seg.nrrd": "4-D (2 layers) seg.nrrd whose gzip body stops half way",
    "seg_truncated.seg.nrrd": "3-D seg.nrrd whose gzip stream is cut in the middle",
    "seg_bad_extent.seg.nrrd": "valid 3-D seg.nrrd voxels, segment extent and label value out of range",
    # DICOM
    "dicom_frames_bomb.dcm": "DICOM declaring 100000 frames of 65535x65535, 512 bytes of PixelData",
    "dicom_frames_jpeg.dcm": "DICOM 16x16, NumberOfFrames 100000, JPEG transfer syntax, 512 bytes of native PixelData",
    "dicom_nan_position.dcm": "DICOM ImagePositionPatient NaN\\NaN\\NaN",
    "dicom_absurd_geometry.dcm": "DICOM ImagePositionPatient 1e308, PixelSpacing 0\\-1, orientation all zero",
    "dicom_bad_text.dcm": "DICOM with raw 0xff bytes in SeriesDescription/PatientName, Modality ../../x",
    "dicom_short_pixels.dcm": "DICOM 16x16 uint16 whose PixelData holds 10 bytes",
    # archives
    "zip_nhdr_sentinel.zip": "ZIP holding NRRD/MetaImage headers that point at the sentinel",
    "zip_slip.zip": "ZIP with '../' and absolute member paths (holding a valid DICOM file)",
    "zip_bomb.zip": "ZIP with two 64 MB members of zeros (~130 KB compressed)",
}

SENTINEL_SIZE = 512  # 8x8x8 uint8


# --- helpers -------------------------------------------------------------------------------------

def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=GZIP_MTIME)


def smooth_volume(shape_kji=(20, 28, 24), seed: int = SEED, shift_mm=(0.0, 0.0, 0.0), spacing=2.0) -> np.ndarray:
    """A head-like smooth blob with mild noise (float32), registrable to a shifted copy of itself."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape_kji], indexing="ij")
    centre = [(n - 1) / 2 for n in shape_kji]
    dz, dy, dx = ((k - centre[0]) * spacing - shift_mm[2], (j - centre[1]) * spacing - shift_mm[1],
                  (i - centre[2]) * spacing - shift_mm[0])
    r = np.sqrt((dx / 18.0) ** 2 + (dy / 22.0) ** 2 + (dz / 15.0) ** 2)
    volume = 100.0 / (1.0 + np.exp((r - 1.0) * 8.0)) + 40.0 * np.exp(-((dx - 6) ** 2 + (dy + 4) ** 2 + dz ** 2) / 60.0)
    volume += rng.normal(0.0, 1.0, shape_kji)
    return volume.astype(np.float32)


def _sitk_bytes(image, suffix: str = ".nii") -> bytes:
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "image" + suffix)
        sitk.WriteImage(image, path, useCompression=False)
        return Path(path).read_bytes()


def _image(array_kji: np.ndarray, spacing=None):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array_kji)
    if spacing is not None:
        image.SetSpacing(spacing)
    return image


def valid_nifti_bytes(shape_kji=(20, 28, 24), spacing=(2.0, 2.0, 2.0), seed: int = SEED, dtype=np.float32) -> bytes:
    """A valid uncompressed NIfTI-1 file (352-byte header + voxels)."""
    return _sitk_bytes(_image(smooth_volume(shape_kji, seed).astype(dtype), spacing), ".nii")


def patch_nifti(data: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(data)
    struct.pack_into("<" + fmt, out, offset, *values)
    return bytes(out)


def nrrd_header(fields: list, keyvalues: list = ()) -> bytes:
    lines = ["NRRD0004"] + [f"{k}: {v}" for k, v in fields] + [f"{k}:={v}" for k, v in keyvalues]
    return ("\n".join(lines) + "\n\n").encode("latin-1")


def valid_nrrd_bytes(shape_kji=(10, 14, 12), seed: int = SEED, encoding: str = "raw") -> bytes:
    """A valid attached NRRD file (int16 voxels, LPS, oblique-free)."""
    array = (smooth_volume(shape_kji, seed) * 10).astype("<i2")
    body = array.tobytes()
    if encoding == "gzip":
        body = _gz(body)
    fields = [("type", "short"), ("dimension", 3), ("space", "left-posterior-superior"),
              ("sizes", " ".join(str(n) for n in shape_kji[::-1])),
              ("space directions", "(1.5,0,0) (0,1.5,0) (0,0,2.5)"), ("kinds", "domain domain domain"),
              ("endian", "little"), ("encoding", encoding), ("space origin", "(-10,-12,5)")]
    return nrrd_header(fields) + body


def _segment_keyvalues(layers=(0,), extent="0 23 0 27 0 19", label=1, names=("Lesion",)):
    kv = []
    for index, name in enumerate(names):
        layer = layers[index] if index < len(layers) else 0
        kv += [(f"Segment{index}_ID", f"Segment_{index + 1}"), (f"Segment{index}_Name", name),
               (f"Segment{index}_NameAutoGenerated", "0"), (f"Segment{index}_Color", "0.9 0.2 0.15"),
               (f"Segment{index}_ColorAutoGenerated", "0"), (f"Segment{index}_LabelValue", str(label)),
               (f"Segment{index}_Layer", str(layer)), (f"Segment{index}_Extent", extent),
               (f"Segment{index}_Tags", "|")]
    kv += [("Segmentation_MasterRepresentation", "Binary labelmap"),
           ("Segmentation_ContainedRepresentationNames", "Binary labelmap|"),
           ("Segmentation_ReferenceImageExtentOffset", "0 0 0")]
    return kv


def seg_nrrd_bytes(mask_kji: np.ndarray, spacing=2.0, origin=(-23.0, -27.0, -19.0), keyvalues=None,
                   sizes: Optional[str] = None, body: Optional[bytes] = None) -> bytes:
    """A Slicer-style .seg.nrrd (one layer, uint8 labels) of ``mask_kji``."""
    n = mask_kji.shape
    fields = [("type", "unsigned char"), ("dimension", 3), ("space", "left-posterior-superior"),
              ("sizes", sizes or f"{n[2]} {n[1]} {n[0]}"),
              ("space directions", f"({spacing},0,0) (0,{spacing},0) (0,0,{spacing})"),
              ("kinds", "domain domain domain"), ("encoding", "gzip"), ("space origin", "(%g,%g,%g)" % origin)]
    extent = f"0 {n[2] - 1} 0 {n[1] - 1} 0 {n[0] - 1}"
    kv = keyvalues if keyvalues is not None else _segment_keyvalues(extent=extent)
    if body is None:
        body = _gz(mask_kji.astype(np.uint8).tobytes())
    return nrrd_header(fields, kv) + body


def lesion_mask(shape_kji=(20, 28, 24)) -> np.ndarray:
    mask = np.zeros(shape_kji, np.uint8)
    mask[8:12, 10:15, 9:13] = 1
    mask[4:6, 18:21, 14:17] = 1
    return mask


def valid_dicom_dataset(rows: int = 16, columns: int = 16, seed: int = SEED, instance: int = 1):
    """A small valid MR slice (uint16, explicit VR little endian) with fixed UIDs."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    rng = np.random.default_rng(seed + instance)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = f"{UID_ROOT}.3.{instance}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = f"{UID_ROOT}.9"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = f"{UID_ROOT}.1"
    ds.SeriesInstanceUID = f"{UID_ROOT}.2"
    ds.FrameOfReferenceUID = f"{UID_ROOT}.4"
    ds.PatientName = "Test^Bad"
    ds.PatientID = "BAD0001"
    ds.PatientBirthDate = "19700101"
    ds.StudyDate = ds.SeriesDate = "20260101"
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.AccessionNumber = "A0001"
    ds.Modality = "MR"
    ds.SeriesDescription = "T1 bad corpus"
    ds.StudyDescription = "bad inputs"
    ds.SeriesNumber = 7
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [-12.0, -12.0, float(2 * (instance - 1))]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.5, 1.5]
    ds.SliceThickness = 2.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = rng.integers(0, 4000, (rows, columns), dtype=np.uint16).astype("<u2").tobytes()
    return ds


def dicom_bytes(ds) -> bytes:
    from pydicom import config

    buffer = io.BytesIO()
    previous = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        ds.save_as(buffer, enforce_file_format=True)
    finally:
        config.settings.writing_validation_mode = previous
    return buffer.getvalue()


def patch_bytes(data: bytes, placeholder: bytes, replacement: bytes) -> bytes:
    """Replace the one occurrence of ``placeholder`` by ``replacement`` padded to the same length."""
    assert data.count(placeholder) == 1, placeholder
    assert len(replacement) <= len(placeholder), (replacement, placeholder)
    return data.replace(placeholder, replacement + b" " * (len(placeholder) - len(replacement)))


def set_transfer_syntax(data: bytes, syntax: str) -> bytes:
    """Rewrite (0002,0010) of an explicit VR little endian file (the data set stays as it was encoded)."""
    start = data.index(b"\x02\x00\x10\x00UI", 132)
    length = struct.unpack_from("<H", data, start + 6)[0]
    value = syntax.encode("ascii")
    if len(value) % 2:
        value += b"\0"
    element = b"\x02\x00\x10\x00UI" + struct.pack("<H", len(value)) + value
    out = bytearray(data[:start] + element + data[start + 8 + length:])
    group = out.index(b"\x02\x00\x00\x00UL\x04\x00", 132)
    old = struct.unpack_from("<I", out, group + 8)[0]
    struct.pack_into("<I", out, group + 8, old + len(element) - (8 + length))
    return bytes(out)


def _zip(entries: list) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data, compresslevel=9)
    return buffer.getvalue()


def default_sentinel(out_dir: Path) -> Path:
    path = out_dir.parent / (out_dir.name + "_sentinel") / "SENTINEL.raw"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(sentinel_content("SENTINEL-0000000000000000"))
    return path


def sentinel_content(token: str, size: int = SENTINEL_SIZE) -> bytes:
    unit = (token + "|").encode("ascii")
    return (unit * (size // len(unit) + 1))[:size]


def write_good_images(folder: "str | os.PathLike") -> dict:
    """GOOD (24x28x20 float32, 2 mm), GOOD2 (the same head shifted 3 mm), GOODSEG (.seg.nrrd, Lesion)."""
    import SimpleITK as sitk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, shift in (("good.nii.gz", (0.0, 0.0, 0.0)), ("good2.nii.gz", (3.0, -2.0, 1.0))):
        image = _image(smooth_volume(shift_mm=shift, seed=SEED + len(paths)), (2.0, 2.0, 2.0))
        image.SetOrigin((-23.0, -27.0, -19.0))
        path = folder / name
        sitk.WriteImage(image, str(path), useCompression=True)
        paths[name] = path
    seg = folder / "goodseg.seg.nrrd"
    seg.write_bytes(seg_nrrd_bytes(lesion_mask()))
    paths["goodseg.seg.nrrd"] = seg
    return {"GOOD": paths["good.nii.gz"], "GOOD2": paths["good2.nii.gz"], "GOODSEG": seg}


# --- the corpus ----------------------------------------------------------------------------------

def build(out_dir: Path, sentinel: Path) -> dict:
    """{file name: bytes} of every case and auxiliary file (symlinks are made by main)."""
    import SimpleITK as sitk

    files = {}
    shape = (20, 28, 24)
    good = valid_nifti_bytes(shape)
    voxel_bytes = int(np.prod(shape)) * 4
    assert len(good) == 352 + voxel_bytes

    # NIfTI lies
    files["truncated.nii"] = good[:352 + voxel_bytes // 2]
    files["truncated.nii.gz"] = _gz(good[:352 + voxel_bytes // 2])
    files["header_only.nii"] = patch_nifti(good[:348], 108, "f", 348.0)
    files["pixdim_zero.nii"] = patch_nifti(good, 80, "f", 0.0)
    files["pixdim_negative.nii.gz"] = _gz(patch_nifti(good, 84, "f", -1.5))
    files["pixdim_nan.nii"] = patch_nifti(good, 88, "f", float("nan"))
    files["dim_zero.nii"] = patch_nifti(good, 44, "h", 0)
    files["dim_negative.nii"] = patch_nifti(good, 46, "h", -5)
    files["ndim_zero.nii"] = patch_nifti(good, 40, "h", 0)
    nan = float("nan")
    files["qform_nan.nii"] = patch_nifti(patch_nifti(good, 252, "h", 1), 256, "6f", nan, nan, nan, nan, 0.0, nan)
    files["sform_nan.nii.gz"] = _gz(patch_nifti(patch_nifti(good, 254, "h", 1), 280, "4f", nan, 0.0, 0.0, 0.0))
    files["sform_singular.nii"] = patch_nifti(patch_nifti(patch_nifti(good, 252, "h", 0), 254, "h", 2), 280, "12f",
                                              *([0.0] * 12))
    files["vox_offset_huge.nii"] = patch_nifti(good, 108, "f", 1e12)
    files["scl_slope_nan.nii"] = patch_nifti(good, 112, "2f", nan, float("inf"))
    bomb = patch_nifti(good[:352], 40, "8h", 3, 4000, 4000, 4000, 1, 1, 1, 1)
    bomb = patch_nifti(bomb, 70, "2h", 16, 32)
    files["memory_bomb.nii.gz"] = _gz(bomb + bytes(4096))
    files["memory_bomb.nii"] = bomb + bytes(4096)
    # 2000^3 float32 = 32e9 bytes; the gzip trailer (ISIZE, mod 2^32) is forged to match it
    lie = patch_nifti(patch_nifti(good[:352], 40, "8h", 3, 2000, 2000, 2000, 1, 1, 1, 1), 70, "2h", 16, 32)
    stream = bytearray(_gz(lie + bytes(8192)))
    struct.pack_into("<I", stream, len(stream) - 4, (352 + 2000 ** 3 * 4) % 2 ** 32)
    files["gzip_trailer_lie.nii.gz"] = bytes(stream)

    # borderline images
    rng = np.random.default_rng(SEED)
    files["two_d.nii.gz"] = _gz(_sitk_bytes(_image(rng.normal(100, 10, (32, 32)).astype(np.float32), (1.0, 1.0))))
    four = sitk.JoinSeries([_image(smooth_volume((10, 14, 12), SEED + t), (2.0, 2.0, 2.0)) for t in range(3)])
    files["four_d.nii.gz"] = _gz(_sitk_bytes(four))
    files["constant.nii.gz"] = _gz(_sitk_bytes(_image(np.full(shape, 100.0, np.float32), (2.0, 2.0, 2.0))))
    with_nan = smooth_volume(shape)
    flat = with_nan.reshape(-1)
    picks = rng.choice(flat.size, 42, replace=False)
    flat[picks[:37]] = np.nan
    flat[picks[37:]] = np.inf
    files["nan_voxels.nii.gz"] = _gz(_sitk_bytes(_image(with_nan, (2.0, 2.0, 2.0))))
    files["tiny_2x2x2.nii.gz"] = _gz(_sitk_bytes(_image(rng.normal(100, 10, (2, 2, 2)).astype(np.float32),
                                                        (2.0, 2.0, 2.0))))
    files["one_slice.nii.gz"] = _gz(_sitk_bytes(_image(smooth_volume((1, 28, 24)), (2.0, 2.0, 2.0))))
    files["huge_spacing.nii.gz"] = _gz(_sitk_bytes(_image(smooth_volume(shape), (1e6, 1e6, 1e6))))
    files["text_named.nii.gz"] = b"this is not an image, only text named like one\n" * 20
    files["gzip_garbage.nii.gz"] = _gz(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    files["empty.nii.gz"] = b""

    # detached data files
    rel = os.path.relpath(sentinel, out_dir)
    assert rel.startswith(".."), f"the sentinel {sentinel} must lie outside {out_dir}"
    n = SENTINEL_SIZE
    sizes = "8 8 8" if n == 512 else f"{n} 1 1"
    dims = sizes.split()

    def nhdr(data_file: str) -> bytes:
        return nrrd_header([("type", "uint8"), ("dimension", 3), ("sizes", sizes),
                            ("space", "left-posterior-superior"),
                            ("space directions", "(1,0,0) (0,1,0) (0,0,1)"), ("space origin", "(0,0,0)"),
                            ("encoding", "raw"), ("data file", data_file)])

    def mhd(data_file: str) -> bytes:
        return ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                f"DimSize = {' '.join(dims)}\nElementSpacing = 1 1 1\nOffset = 0 0 0\n"
                "TransformMatrix = 1 0 0 0 1 0 0 0 1\nElementType = MET_UCHAR\n"
                f"ElementDataFile = {data_file}\n").encode("latin-1")

    files["abs_datafile.nhdr"] = nhdr(str(sentinel))
    files["escape_datafile.nhdr"] = nhdr(rel)
    files["symlink_datafile.nhdr"] = nhdr("symlink_datafile.raw")  # symlink made by main()
    files["list_datafile.nhdr"] = nhdr("LIST 3").rstrip(b"\n") + b"\n" + str(sentinel).encode() + b"\n\n"
    files["abs_datafile.mhd"] = mhd(str(sentinel))
    files["escape_datafile.mhd"] = mhd(rel)
    small = (smooth_volume((10, 14, 12)) * 10).astype("<i2").tobytes()
    files["nrrd_nan_directions.nrrd"] = nrrd_header(
        [("type", "short"), ("dimension", 3), ("space", "left-posterior-superior"), ("sizes", "12 14 10"),
         ("space directions", "(nan,0,0) (0,1,0) (0,0,nan)"), ("endian", "little"), ("encoding", "raw"),
         ("space origin", "(0,0,0)")]) + small
    files["nrrd_big_gzip.nrrd"] = nrrd_header(
        [("type", "float"), ("dimension", 3), ("space", "left-posterior-superior"), ("sizes", "1024 1024 512"),
         ("space directions", "(1,0,0) (0,1,0) (0,0,1)"), ("endian", "little"), ("encoding", "gzip"),
         ("space origin", "(0,0,0)")]) + _gz(bytes(1 << 16))
    files["nrrd_truncated_raw.nrrd"] = nrrd_header(
        [("type", "short"), ("dimension", 3), ("space", "left-posterior-superior"), ("sizes", "12 14 10"),
         ("space directions", "(2,0,0) (0,2,0) (0,0,2)"), ("endian", "little"), ("encoding", "raw"),
         ("space origin", "(0,0,0)")]) + small[:len(small) // 2]

    # segmentations
    mask = lesion_mask(shape)
    files["seg_absurd_extent.seg.nrrd"] = seg_nrrd_bytes(
        mask, sizes="2147483648 2147483648 2147483648",
        keyvalues=_segment_keyvalues(extent="0 2147483647 0 2147483647 0 2147483647"), body=_gz(bytes(4096)))
    layered = np.stack([mask, np.roll(mask, 3, axis=2)], axis=-1)  # k, j, i, layer
    four_fields = [("type", "unsigned char"), ("dimension", 4), ("space", "left-posterior-superior"),
                   ("sizes", f"2 {shape[2]} {shape[1]} {shape[0]}"),
                   ("space directions", "none (2,0,0) (0,2,0) (0,0,2)"), ("kinds", "list domain domain domain"),
                   ("encoding", "gzip"), ("space origin", "(-23,-27,-19)")]
    body = layered.astype(np.uint8).tobytes()
    files["seg_4d_truncated.seg.nrrd"] = nrrd_header(
        four_fields, _segment_keyvalues(layers=(0, 1), extent="0 23 0 27 0 19", names=("Lesion", "Other"))) + \
        _gz(body[:len(body) // 2])
    whole = seg_nrrd_bytes(mask)
    header_end = whole.index(b"\n\n") + 2
    files["seg_truncated.seg.nrrd"] = whole[:header_end + (len(whole) - header_end) // 2]
    files["seg_bad_extent.seg.nrrd"] = seg_nrrd_bytes(
        mask, keyvalues=_segment_keyvalues(extent="-5 4000 0 27 7 3", label=300))

    # DICOM
    ds = valid_dicom_dataset()
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 100000
    ds.PixelData = bytes(512)
    files["dicom_frames_bomb.dcm"] = dicom_bytes(ds)
    ds = valid_dicom_dataset()
    ds.NumberOfFrames = 100000
    ds.SliceThickness = 0
    files["dicom_frames_jpeg.dcm"] = set_transfer_syntax(dicom_bytes(ds), "1.2.840.10008.1.2.4.50")
    ds = valid_dicom_dataset()
    ds.ImagePositionPatient = [11111.0, 22222.0, 33333.0]
    files["dicom_nan_position.dcm"] = patch_bytes(dicom_bytes(ds), b"11111.0\\22222.0\\33333.0",
                                                  b"NaN\\NaN\\NaN")
    ds = valid_dicom_dataset()
    ds.ImagePositionPatient = [11111.0, 22222.0, 33333.0]
    ds.PixelSpacing = [1111.0, 2222.0]
    ds.ImageOrientationPatient = [0, 0, 0, 0, 0, 0]
    data = patch_bytes(dicom_bytes(ds), b"11111.0\\22222.0\\33333.0", b"1e308\\-1e308\\1e308")
    files["dicom_absurd_geometry.dcm"] = patch_bytes(data, b"1111.0\\2222.0", b"0\\-1")
    ds = valid_dicom_dataset()
    ds.SeriesDescription = "PLACEHOLDER-SERIES-DESC"
    ds.PatientName = "PLACEHOLDER^PATIENT^NAME"
    with warnings.catch_warnings():  # pydicom warns about the invalid CS value: that is the point
        warnings.simplefilter("ignore")
        ds.Modality = "../../x"
    data = dicom_bytes(ds)
    data = patch_bytes(data, b"PLACEHOLDER-SERIES-DESC", b"\xff\xfe\x80T1 \xc3(\xa0\xff\\/..\x00x")
    files["dicom_bad_text.dcm"] = patch_bytes(data, b"PLACEHOLDER^PATIENT^NAME", b"\xff\xff^\xed\xa0\x80^\x1b$B")
    ds = valid_dicom_dataset()
    ds.PixelData = bytes(10)
    files["dicom_short_pixels.dcm"] = dicom_bytes(ds)

    # archives
    files["zip_nhdr_sentinel.zip"] = _zip([
        ("scan/abs.nhdr", nhdr(str(sentinel))), ("scan/escape.nhdr", nhdr("../../" + rel)),
        ("scan/abs.mhd", mhd(str(sentinel))), ("README.txt", b"headers pointing outside the archive\n")])
    escape = ("../" * 24) + str(out_dir / "zip_slip_escaped.dcm").lstrip("/")
    valid = dicom_bytes(valid_dicom_dataset())
    files["zip_slip.zip"] = _zip([(escape, valid), ("/" + str(out_dir / "zip_slip_absolute.dcm").lstrip("/"), valid),
                                  ("series/../../up.dcm", valid)])
    files["zip_bomb.zip"] = _zip([("bomb/a.dcm", bytes(64 << 20)), ("bomb/b.dcm", bytes(64 << 20))])
    return files


def escaped_paths(out_dir: "str | os.PathLike") -> list:
    """Paths a ZIP-slip extraction would create (must never exist after a run)."""
    out_dir = Path(out_dir)
    return [out_dir / "zip_slip_escaped.dcm", out_dir / "zip_slip_absolute.dcm"]


def main(out_dir: "str | os.PathLike", sentinel_path: "str | os.PathLike | None" = None) -> dict:
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    sentinel = Path(sentinel_path).absolute() if sentinel_path else default_sentinel(out_dir)
    if not sentinel.is_file():
        raise SystemExit(f"sentinel {sentinel} does not exist")
    files = build(out_dir, sentinel)
    missing = set(CASES) - set(files)
    assert not missing, missing
    for name, data in files.items():
        assert len(data) < 200_000, (name, len(data))
        (out_dir / name).write_bytes(data)
    link = out_dir / "symlink_datafile.raw"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(sentinel)
    return {name: out_dir / name for name in CASES}


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit("usage: make_bad_corpus.py OUT_DIR [SENTINEL]")
    written = main(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None)
    for path in written.values():
        print(f"{path.stat().st_size:8d}  {path}")
