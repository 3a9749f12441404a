"""DICOM loading accuracy on synthetic series: oblique MNI series, gantry tilt, uneven spacing,
missing slices, multi-volume, mixed sizes, enhanced multi-frame, compressed syntaxes."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from helpers.dicomgen import (ds_values, image_geometry, oblique_mni, rotation_direction, write_image_series,
                                  write_slices)
from MedAnalysisLib.core import dicom
from MedAnalysisLib.core.dicom_import import ImportParameters, ImportSession


def load_all(source, **parameters):
    with ImportSession(source, ImportParameters(**parameters)) as session:
        return [image for item in session.selected() for image in session.load(item)]


def array(image):
    return sitk.GetArrayFromImage(image)


def assert_same_grid(image, expected, origin_mm=1e-4, direction=1e-6):
    assert image.GetSize() == expected.GetSize()
    assert np.max(np.abs(np.subtract(image.GetOrigin(), expected.GetOrigin()))) <= origin_mm
    assert np.max(np.abs(np.subtract(image.GetSpacing(), expected.GetSpacing()))) <= origin_mm
    assert np.max(np.abs(np.subtract(image.GetDirection(), expected.GetDirection()))) <= direction


@pytest.fixture(scope="module")
def oblique_source():
    return oblique_mni(size=(120, 140, 60))


@pytest.fixture(scope="module")
def oblique_series(tmp_path_factory, oblique_source):
    folder = tmp_path_factory.mktemp("oblique")
    write_image_series(oblique_source, folder, slope=0.5, intercept=-1024.0, rng=np.random.default_rng(11),
                       modality="MR", series_number=7)
    return folder


def test_oblique_series_loads_back_exactly(oblique_series, oblique_source):
    names = sorted(p.name for p in oblique_series.iterdir())
    assert all(n.startswith("IM") for n in names)  # shuffled names: no order to be had from them
    [loaded] = load_all(oblique_series)
    image = loaded.image
    assert image.GetPixelID() == sitk.sitkFloat32  # slope 0.5: float output
    assert np.array_equal(array(image), array(oblique_source).astype(np.float32))
    assert_same_grid(image, oblique_source)
    errors = {
        "origin_mm": float(np.max(np.abs(np.subtract(image.GetOrigin(), oblique_source.GetOrigin())))),
        "spacing_mm": float(np.max(np.abs(np.subtract(image.GetSpacing(), oblique_source.GetSpacing())))),
        "direction": float(np.max(np.abs(np.subtract(image.GetDirection(), oblique_source.GetDirection())))),
    }
    print("oblique series geometry errors:", errors)
    assert loaded.summary["qa"]["regularized"] is False
    assert loaded.summary["qa"]["uniform_spacing"] is True


def test_numpy_and_itk_paths_agree(oblique_series, monkeypatch):
    [bulk] = load_all(oblique_series)
    monkeypatch.setattr(dicom.pixels, "_bulk_read_with_itk", lambda volume: None)
    [plain] = load_all(oblique_series)
    assert np.array_equal(array(bulk.image), array(plain.image))
    assert bulk.image.GetPixelID() == plain.image.GetPixelID()
    assert_same_grid(bulk.image, plain.image, 1e-9, 1e-12)


def test_integer_rescale_keeps_integer_type(tmp_path, oblique_source):
    write_image_series(oblique_source, tmp_path, slope=1.0, intercept=-1024.0, modality="CT",
                       rng=np.random.default_rng(2))
    [loaded] = load_all(tmp_path)
    assert loaded.image.GetPixelID() == sitk.sitkInt16
    assert np.array_equal(array(loaded.image), array(oblique_source))


def _grid(size, spacing, direction_columns, origin):
    grid = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    grid.SetSpacing([float(v) for v in spacing])
    grid.SetDirection(np.asarray(direction_columns, dtype=float).ravel().tolist())
    grid.SetOrigin([float(v) for v in origin])
    return grid


def _mni():
    from MedAnalysisLib.resources import samplePath

    return sitk.Cast(sitk.ReadImage(str(samplePath("mni152_t1.nii.gz"))), sitk.sitkFloat32)


def test_gantry_tilt_is_detected_and_regularized(tmp_path):
    """15 degree tilt about the L-R axis, table step 2 mm: the slices shear by exactly one row each,
    so the regular output grid's voxels are the acquired pixels themselves."""
    tilt = np.deg2rad(15.0)
    table_step, columns, rows, count = 2.0, 110, 120, 40
    row_dir = np.array([1.0, 0.0, 0.0])
    column_dir = np.array([0.0, np.cos(tilt), np.sin(tilt)])
    normal = np.cross(row_dir, column_dir)
    pixel = (table_step * np.sin(tilt), 1.0)  # (between rows, between columns) mm
    origin = np.array([-55.0, -40.0, -30.0])
    # Regular grid the loader should produce: axes (row, column, normal), covering every slice.
    grid = _grid((columns, rows + count - 1, count), (pixel[1], pixel[0], table_step * np.cos(tilt)),
                 np.stack([row_dir, column_dir, normal], axis=1), origin)
    expected = array(sitk.Resample(_mni(), grid, sitk.Transform(), sitk.sitkLinear, 0.0))
    stored = np.rint(expected).astype(np.int16)
    slices = [stored[k, k:k + rows, :] for k in range(count)]
    positions = [origin + k * table_step * np.array([0.0, 0.0, 1.0]) for k in range(count)]
    write_slices(tmp_path, slices, positions, [*row_dir, *column_dir], pixel, rng=np.random.default_rng(4))
    [loaded] = load_all(tmp_path)
    qa = loaded.summary["qa"]
    assert abs(qa["gantry_tilt_deg"] - 15.0) < 1e-3
    assert qa["regularized"] is True
    assert any("gantry tilt of 15.00 degrees" in w for w in loaded.warnings)
    assert_same_grid(loaded.image, grid)
    result = array(loaded.image).astype(np.float64)
    valid = np.zeros(result.shape, dtype=bool)
    for k in range(count):
        valid[k, k:k + rows, :] = True
    error = np.abs(result - expected)[valid]
    print(f"gantry tilt: max |loaded - source resampled on the regular grid| = {error.max():.3f} "
          f"(mean {error.mean():.4f}) over {valid.sum()} voxels; tilt measured {qa['gantry_tilt_deg']} deg")
    assert error.max() <= 0.5 + 1e-6  # int16 rounding only
    fill = qa["fill_value"]
    assert np.all(result[~valid] == fill)


def test_gantry_tilt_fractional_shift_error_is_small(tmp_path):
    """Tilt whose per-slice shift is not a whole pixel: interpolation error vs the source, reported."""
    tilt = np.deg2rad(15.0)
    table_step, columns, rows, count = 1.5, 100, 110, 30
    row_dir = np.array([1.0, 0.0, 0.0])
    column_dir = np.array([0.0, np.cos(tilt), np.sin(tilt)])
    origin = np.array([-50.0, -45.0, -20.0])
    source = _mni()
    slices = []
    for k in range(count):
        plane = _grid((columns, rows, 1), (1.0, 1.0, 1.0),
                      np.stack([row_dir, column_dir, np.cross(row_dir, column_dir)], axis=1),
                      origin + k * table_step * np.array([0.0, 0.0, 1.0]))
        slices.append(np.rint(array(sitk.Resample(source, plane, sitk.Transform(), sitk.sitkLinear, 0.0))[0])
                      .astype(np.int16))
    positions = [origin + k * table_step * np.array([0.0, 0.0, 1.0]) for k in range(count)]
    write_slices(tmp_path, slices, positions, [*row_dir, *column_dir], (1.0, 1.0))
    [loaded] = load_all(tmp_path)
    reference = array(sitk.Resample(source, loaded.image, sitk.Transform(), sitk.sitkLinear, 0.0))
    result = array(loaded.image).astype(np.float64)
    inside = reference > 0
    error = np.abs(result - reference)[inside & (result > 0)]
    print(f"gantry tilt (fractional shift): mean |error| {error.mean():.2f} of range 255, "
          f"95th percentile {np.percentile(error, 95):.2f}")
    assert error.mean() < 3.0
    assert abs(loaded.summary["qa"]["gantry_tilt_deg"] - 15.0) < 1e-3


def _fine_stack(spacing_k=0.5, count=120):
    """An oblique grid with fine slices to pick acquired slices from."""
    direction = np.array(rotation_direction((10.0, -8.0, 0.0))).reshape(3, 3)
    size = (90, 100, count)
    spacing = (1.0, 1.0, spacing_k)
    centre = np.array([0.0, -18.0, 18.0])
    origin = centre - direction @ ((np.array(size) - 1) / 2 * np.array(spacing))
    grid = _grid(size, spacing, direction, origin)
    values = np.rint(array(sitk.Resample(_mni(), grid, sitk.Transform(), sitk.sitkLinear, 0.0))).astype(np.int16)
    return grid, values


def test_uneven_spacing_is_regularized(tmp_path):
    from scipy.interpolate import interp1d

    grid, values = _fine_stack()
    picks = np.cumsum([0] + [3, 5] * 11)  # gaps of 1.5 and 2.5 mm
    orientation, pixel, positions = image_geometry(grid)
    write_slices(tmp_path, [values[k] for k in picks], [positions[k] for k in picks], orientation, pixel,
                 rng=np.random.default_rng(8))
    [loaded] = load_all(tmp_path)
    qa = loaded.summary["qa"]
    assert qa["uniform_spacing"] is False and qa["regularized"] is True
    assert qa["acquired_spacing_mm"]["min"] == pytest.approx(1.5) and qa["acquired_spacing_mm"]["max"] == pytest.approx(2.5)
    assert any("non-uniform slice spacing" in w for w in loaded.warnings)
    image = loaded.image
    spacing_k = image.GetSpacing()[2]
    assert image.GetSize()[2] == round((picks[-1] - picks[0]) * 0.5 / 1.5) + 1
    assert np.allclose(image.GetOrigin(), positions[picks[0]], atol=1e-6)
    assert np.allclose(image.GetDirection(), grid.GetDirection(), atol=1e-9)
    # Independent reference: linear interpolation along the normal between the acquired slices.
    acquired = np.array([values[k] for k in picks], dtype=np.float64)
    reference = interp1d(picks * 0.5, acquired, axis=0)(np.arange(image.GetSize()[2]) * spacing_k)
    error = np.abs(array(image) - reference)
    truth = array(sitk.Resample(_mni(), image, sitk.Transform(), sitk.sitkLinear, 0.0))
    print(f"uneven spacing: max |loaded - interpolated acquisition| = {error.max():.3f}; "
          f"mean |loaded - source| = {np.abs(array(image) - truth).mean():.3f} (range 0..255)")
    assert error.max() <= 0.5 + 1e-6


def test_missing_slice_is_reported_and_filled(tmp_path):
    grid, values = _fine_stack(spacing_k=1.5, count=30)
    orientation, pixel, positions = image_geometry(grid)
    keep = [k for k in range(30) if k != 12]
    paths = write_slices(tmp_path, [values[k] for k in keep], [positions[k] for k in keep], orientation, pixel)
    [loaded] = load_all(tmp_path)
    missing = loaded.summary["qa"]["missing_slices"]
    assert missing == [{"after_slice": 11, "gap_mm": 3.0, "missing": 1,
                        "between_files": [paths[11].name, paths[12].name]}]
    assert any("1 missing slice(s) between slice 11 and 12" in w for w in loaded.warnings)
    result = array(loaded.image)
    assert result.shape[0] == 30
    assert np.array_equal(result[:12], values[:12]) and np.array_equal(result[13:], values[13:])
    interpolated = (values[11].astype(float) + values[13]) / 2
    assert np.max(np.abs(result[12] - interpolated)) <= 0.5 + 1e-6


def test_multi_volume_series_splits_into_time_points(tmp_path):
    grid, values = _fine_stack(spacing_k=2.0, count=12)
    orientation, pixel, positions = image_geometry(grid)
    series = dict(study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid())
    second = (values + 100).astype(np.int16)
    for time_point, data in ((1, values), (2, second)):
        write_slices(tmp_path / f"t{time_point}", list(data), positions, orientation, pixel,
                     names=[f"t{time_point}_{k:03d}" for k in range(12)],
                     instance_numbers=[time_point * 100 + k for k in range(12)],
                     edit=lambda ds, k, t=time_point: setattr(ds, "TemporalPositionIdentifier", t), **series)
    with ImportSession(tmp_path) as session:
        report = session.scan_report()
        loaded = [image for item in session.selected() for image in session.load(item)]
    assert report["series"][0]["qa"]["multi_volume"] == {"volumes": 2, "split_by": "TemporalPosition",
                                                         "loaded_as": "separate volumes"}
    assert [len(v["id"].split("#")) for v in report["series"][0]["volumes"]] == [2, 2]
    assert np.array_equal(array(loaded[0].image), values)
    assert np.array_equal(array(loaded[1].image), second)


def test_duplicates_without_distinguishing_attribute_are_dropped(tmp_path):
    grid, values = _fine_stack(spacing_k=2.0, count=10)
    orientation, pixel, positions = image_geometry(grid)
    series = dict(study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid())
    write_slices(tmp_path, list(values), positions, orientation, pixel, **series)
    write_slices(tmp_path, [values[3]], [positions[3]], orientation, pixel, names=["copy_of_3"],
                 instance_numbers=[999], **series)
    [loaded] = load_all(tmp_path)
    assert np.array_equal(array(loaded.image), values)
    assert any("1 duplicate slice(s)" in w and "copy_of_3" in w for w in loaded.warnings)


def test_mixed_slice_sizes_split_into_volumes(tmp_path):
    grid, values = _fine_stack(spacing_k=2.0, count=8)
    orientation, pixel, positions = image_geometry(grid)
    series = dict(study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid())
    write_slices(tmp_path, list(values), positions, orientation, pixel, **series)
    write_slices(tmp_path, [values[k, :50, :40].copy() for k in range(3)], positions[:3], orientation, pixel,
                 names=["small0", "small1", "small2"], **series)
    with ImportSession(tmp_path) as session:
        report = session.scan_report()
    [series_entry] = report["series"]
    assert [v["size"] for v in series_entry["volumes"]] == [[90, 100, 8], [40, 50, 3]]
    assert any("mixes size" in w for w in series_entry["warnings"])


def test_enhanced_multiframe_with_shuffled_frames(tmp_path):
    grid, values = _fine_stack(spacing_k=1.5, count=16)
    orientation, pixel, positions = image_geometry(grid)
    order = np.random.default_rng(3).permutation(16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.SeriesNumber = "MR", 3
    ds.Rows, ds.Columns = values.shape[1:]
    ds.NumberOfFrames = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = ds_values(pixel)
    measures.SliceThickness = "1.5"
    plane = Dataset()
    plane.ImageOrientationPatient = ds_values(orientation)
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = "2", "-100", "US"
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([plane])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for index in order:
        item, position, content = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = ds_values(positions[index])
        content.InStackPositionNumber = int(index) + 1
        item.PlanePositionSequence = Sequence([position])
        item.FrameContentSequence = Sequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.ascontiguousarray(values[order]).tobytes()
    pydicom.dcmwrite(tmp_path / "enhanced.dcm", ds, enforce_file_format=True)
    [loaded] = load_all(tmp_path)
    assert np.array_equal(array(loaded.image), values.astype(np.int32) * 2 - 100)
    assert_same_grid(loaded.image, grid, 1e-4, 1e-6)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_compressed_series(tmp_path, syntax):
    grid, values = _fine_stack(spacing_k=2.0, count=6)
    orientation, pixel, positions = image_geometry(grid)
    write_slices(tmp_path, list(values), positions, orientation, pixel, rng=np.random.default_rng(1),
                 edit=lambda ds, k: ds.compress(syntax))
    assert pydicom.dcmread(next(tmp_path.iterdir())).file_meta.TransferSyntaxUID == syntax
    [loaded] = load_all(tmp_path)
    assert np.array_equal(array(loaded.image), values)
    assert_same_grid(loaded.image, grid, 1e-4, 1e-6)


def test_monochrome1_and_colour(tmp_path):
    grid, values = _fine_stack(spacing_k=2.0, count=4)
    orientation, pixel, positions = image_geometry(grid)
    write_slices(tmp_path / "mono1", list(values), positions, orientation, pixel,
                 edit=lambda ds, k: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"))
    [mono] = load_all(tmp_path / "mono1")
    assert mono.invert_display and np.array_equal(array(mono.image), values)
    rgb = np.clip(np.stack([values, values // 2, 255 - np.clip(values, 0, 255)], axis=-1), 0, 255).astype(np.uint8)

    def as_rgb(ds, k):
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = rgb[k].tobytes()

    write_slices(tmp_path / "rgb", list(values), positions, orientation, pixel, edit=as_rgb)
    [colour] = load_all(tmp_path / "rgb")
    assert colour.image.GetNumberOfComponentsPerPixel() == 3
    assert np.array_equal(array(colour.image), rgb)


def test_multi_echo_series_splits_by_echo(tmp_path):
    grid, values = _fine_stack(spacing_k=2.0, count=6)
    orientation, pixel, positions = image_geometry(grid)
    series = dict(study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid())
    for echo in (1, 2):
        write_slices(tmp_path, list(values * echo), positions, orientation, pixel,
                     names=[f"e{echo}_{k}" for k in range(6)], rng=np.random.default_rng(echo),
                     edit=lambda ds, k, e=echo: (setattr(ds, "EchoNumbers", e), setattr(ds, "EchoTime", 5.0 * e)),
                     **series)
    with ImportSession(tmp_path) as session:
        report = session.scan_report()
        loaded = [image for item in session.selected() for image in session.load(item)]
    assert [v["label"] for v in report["series"][0]["volumes"]] == ["echo 1", "echo 2"]
    assert report["series"][0]["qa"]["split_by"] == ["echo"]
    assert np.array_equal(array(loaded[0].image), values) and np.array_equal(array(loaded[1].image), values * 2)
