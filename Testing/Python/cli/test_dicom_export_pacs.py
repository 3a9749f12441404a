"""DICOM SEG / SR export and PACS exchange (issue 17).

The SEG is written from a label map on another grid than the oblique, shuffled source series and
checked against an independent reference: the label map resampled (nearest neighbour) onto the
series as GDCM reads it, slice by slice at the source positions. The PACS is pynetdicom's own
Query/Retrieve SCP (``python -m pynetdicom qrscp``) on 127.0.0.1 with a free port.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from helpers.dicomgen import oblique_mni, write_image_series, write_slices

highdicom = pytest.importorskip("highdicom")
from MedAnalysisLib.core import dicom_seg, geometry  # noqa: E402
from MedAnalysisLib.core.labels import BRAIN_TISSUE_SEGMENTS  # noqa: E402

CLI = [sys.executable, "-m", "MedAnalysisLib.cli"]


def run_cli(*args, cwd=None):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("[")]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """An oblique MR series (files and instance numbers shuffled) and a 4-label map of it on an
    axis-aligned 1.5 mm grid (another grid than the series)."""
    base = tmp_path_factory.mktemp("seg")
    image = oblique_mni(size=(64, 72, 28), spacing=(2.0, 2.0, 3.0))
    write_image_series(image, base / "series", rng=np.random.default_rng(17))
    grid = geometry.axis_aligned_grid(image, (1.5, 1.5, 1.5))
    values = sitk.GetArrayFromImage(geometry.resample_to_grid(sitk.Cast(image, sitk.sitkFloat32), grid))
    labels = np.zeros(values.shape, np.uint8)
    labels[values > 20] = 1
    labels[values > 50] = 2
    labels[values > 70] = 3
    k = np.arange(values.shape[0])[:, None, None]
    labels[(values > 72) & (k % 9 < 2)] = 4
    label_image = geometry.image_on_grid(labels, grid)
    sitk.WriteImage(label_image, str(base / "labels.nii.gz"))
    return {"base": base, "folder": base / "series", "labels": base / "labels.nii.gz", "image": image}


def expected_frames(label_path: Path, folder: Path) -> dict:
    """{SOP Instance UID: (rows, columns) labels} from GDCM's reading of the series (independent of
    our DICOM reader): the label map resampled onto it, slice k <-> the file at position k."""
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(names)
    volume = reader.Execute()
    labels = sitk.Resample(sitk.ReadImage(str(label_path)), volume, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                           sitk.sitkUInt8)
    array = sitk.GetArrayFromImage(labels)
    return {str(pydicom.dcmread(name, stop_before_pixels=True).SOPInstanceUID): array[k]
            for k, name in enumerate(names)}


def dciodvfy_errors(path: Path) -> list:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_seg_round_trip_on_oblique_shuffled_series(series, tmp_path):
    out = tmp_path / "out"
    result = run_cli("export-dicom", series["labels"], "--reference", series["folder"], "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [s["name"] for s in summary["segments"]] == ["Segment_1", "Segment_2", "Segment_3", "Segment_4"]
    seg = highdicom.seg.segread(out / "seg.dcm")
    plain = pydicom.dcmread(out / "seg.dcm")
    assert plain.SOPClassUID == dicom_seg.SEG_SOP_CLASS and plain.SegmentationType == "BINARY"
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): pydicom.dcmread(p)
               for p in series["folder"].iterdir()}
    first = next(iter(sources.values()))
    assert plain.StudyInstanceUID == first.StudyInstanceUID and plain.FrameOfReferenceUID == first.FrameOfReferenceUID
    referenced = {str(item.ReferencedSOPInstanceUID) for item in
                  plain.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert plain.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert referenced == set(sources)
    frames = dicom_seg.segment_frames_by_source(seg)
    expected = expected_frames(series["labels"], series["folder"])
    compared = 0
    for uid, labels in expected.items():
        for number in range(1, 5):
            got = frames.get((uid, 1), {}).get(number, np.zeros(labels.shape, bool))
            assert np.array_equal(got, labels == number), f"segment {number} differs on instance {uid}"
            compared += int((labels == number).sum())
    assert compared > 10000
    for item in plain.PerFrameFunctionalGroupsSequence:  # each frame sits at its source slice position
        source = sources[str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, [float(v) for v in source.ImagePositionPatient], atol=1e-3)
    assert not dciodvfy_errors(out / "seg.dcm")


def test_seg_from_model_output_carries_names_codes_and_algorithm(series, tmp_path):
    """A labelmap written by 'segment' (provenance sidecar with segments and model hash)."""
    labels = tmp_path / "tissue.nii.gz"
    shutil.copy(series["labels"], labels)
    record = {"operation": "segment", "version": "x", "model_sha256": "ab" * 32,
              "parameters": {"model": "brain-tissue-lesion"},
              "segments": [s.to_dict() for s in BRAIN_TISSUE_SEGMENTS]}
    Path(str(labels) + ".provenance.json").write_text(json.dumps(record))
    result = run_cli("export-dicom", labels, "--reference", series["folder"], "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    seg = pydicom.dcmread(tmp_path / "out" / "seg.dcm")
    names = [item.SegmentLabel for item in seg.SegmentSequence]
    assert names == ["Cerebrospinal fluid", "Gray matter", "White matter", "Lesion"]
    lesion = seg.SegmentSequence[3]
    assert lesion.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    assert lesion.SegmentAlgorithmType == "AUTOMATIC"
    assert lesion.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "ab" * 32
    lab = [int(v) for v in lesion.RecommendedDisplayCIELabValue]
    assert highdicom.color.CIELabColor.from_dicom_value(lab).to_rgb()[0] > 200  # red stays red


def test_seg_from_slicer_segmentation_file(series, tmp_path, scene):
    """A .seg.nrrd (Slicer's storage node) keeps its segment names and terminology."""
    from MedAnalysisLib import mrml

    labels = sitk.ReadImage(str(series["labels"]))
    node = mrml.segmentationNodeFromLabelmap(labels, scene, segments=BRAIN_TISSUE_SEGMENTS)
    path = mrml.saveSegmentation(node, tmp_path / "tissue.seg.nrrd")
    result = run_cli("export-dicom", path, "--reference", series["folder"], "-o", tmp_path / "out", "--json")
    assert result.returncode == 0, result.stderr
    seg = highdicom.seg.segread(tmp_path / "out" / "seg.dcm")
    assert [item.SegmentLabel for item in seg.SegmentSequence] == [s.name for s in BRAIN_TISSUE_SEGMENTS]
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "389081007"  # gray matter
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"  # no provenance: not claimed as ours
    frames = dicom_seg.segment_frames_by_source(seg)
    expected = expected_frames(series["labels"], series["folder"])
    for uid, labels_k in expected.items():
        got = frames.get((uid, 1), {}).get(3, np.zeros(labels_k.shape, bool))
        assert np.array_equal(got, labels_k == 3)


def monitoring_report(folder: Path, centroid_ras) -> Path:
    folder.mkdir(parents=True)
    lesions = [{"id": "L1", "status": "grown", "centroid_ras": list(centroid_ras), "volume_baseline_ml": 0.5,
                "volume_followup_ml": 0.9},
               {"id": "L2", "status": "new", "centroid_ras": [c + 5 for c in centroid_ras], "volume_baseline_ml": 0.0,
                "volume_followup_ml": 0.2}]
    (folder / "summary.json").write_text(json.dumps({
        "lesions": lesions, "summary": {"lesions_baseline": 1, "lesions_followup": 2},
        "provenance": {"inputs_sha256": {"a": "1", "b": "2"}, "created_utc": "2026-12-02T00:00:00Z"}}))
    return folder


def test_sr_references_seg_with_stable_tracking(series, tmp_path):
    labels = tmp_path / "tissue.nii.gz"
    shutil.copy(series["labels"], labels)
    Path(str(labels) + ".provenance.json").write_text(json.dumps({
        "operation": "segment", "model_sha256": "cd" * 32, "parameters": {"model": "m"},
        "segments": [s.to_dict() for s in BRAIN_TISSUE_SEGMENTS]}))
    centre = geometry.lps_to_ras_points(np.array([series["image"].TransformContinuousIndexToPhysicalPoint(
        [(s - 1) / 2 for s in series["image"].GetSize()])]))[0]
    report = monitoring_report(tmp_path / "report", [round(float(v), 2) for v in centre])
    uids = {}
    for time_point in ("baseline", "followup"):
        out = tmp_path / time_point
        result = run_cli("export-dicom", labels, "--reference", series["folder"], "-o", out, "--report", report,
                         "--time-point", time_point, "--json")
        assert result.returncode == 0, result.stderr
        seg = pydicom.dcmread(out / "seg.dcm")
        sr = highdicom.sr.srread(out / "sr.dcm")
        groups = sr.content.get_volumetric_roi_measurement_groups()
        assert [g.tracking_identifier for g in groups] == ["Lesion L1", "Lesion L2"]
        uids[time_point] = [g.tracking_uid for g in groups]
        volumes = [[m.value for m in g.get_measurements() if m.name.meaning == "Volume"] for g in groups]
        assert volumes == ([[0.5], [0.0]] if time_point == "baseline" else [[0.9], [0.2]])
        statuses = [[q.value.meaning for q in g.get_qualitative_evaluations() if q.name.meaning == "Changed status"]
                    for g in groups]
        assert statuses == [["Increased"], ["New"]]
        reference = groups[0].referenced_segment
        assert reference is not None
        plain = pydicom.dcmread(out / "sr.dcm")
        text = str(plain)
        assert seg.SOPInstanceUID in text  # the SR references the SEG instance
        if time_point == "baseline":
            assert "111010" in text and "POINT" in text  # centroid as a 3-D point
        assert plain.PatientID == seg.PatientID and plain.StudyInstanceUID == seg.StudyInstanceUID
        assert not dciodvfy_errors(out / "sr.dcm")
    assert uids["baseline"] == uids["followup"]  # tracking UIDs stay the same across time points


def test_anonymized_export_attaches_to_deidentified_import(series, tmp_path):
    key = tmp_path / "deid.key"
    imported = run_cli("import", series["folder"], "-o", tmp_path / "anon.nii.gz", "--anonymize", "--deid-key", key,
                       "--export-dicom", tmp_path / "deid")
    assert imported.returncode == 0, imported.stderr
    assert key.stat().st_mode & 0o077 == 0
    exported_files = list((tmp_path / "deid").rglob("*.dcm"))
    deid = pydicom.dcmread(exported_files[0], stop_before_pixels=True)
    result = run_cli("export-dicom", series["labels"], "--reference", series["folder"], "-o", tmp_path / "out",
                     "--anonymize", "--deid-key", key)
    assert result.returncode == 0, result.stderr
    seg = pydicom.dcmread(tmp_path / "out" / "seg.dcm")
    assert seg.PatientID == deid.PatientID and seg.PatientName == deid.PatientName
    assert seg.PatientID.startswith("ANON-")
    assert seg.StudyInstanceUID == deid.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == deid.SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in exported_files}
    assert "Synthetic" not in str(seg) and "SYN0001" not in str(seg)
    missing = run_cli("export-dicom", series["labels"], "--reference", series["folder"], "-o", tmp_path / "o2",
                      "--anonymize")
    assert "--deid-key" in one_error_line(missing) or "deidKey" in one_error_line(missing)


# --- bad input ------------------------------------------------------------------------------------

def assert_no_files(folder: Path) -> None:
    assert not folder.exists() or not [p for p in folder.rglob("*") if p.is_file()], list(folder.rglob("*"))


def test_label_map_that_does_not_overlap(series, tmp_path):
    labels = sitk.ReadImage(str(series["labels"]))
    labels.SetOrigin([v + 2000.0 for v in labels.GetOrigin()])
    path = tmp_path / "far.nii.gz"
    sitk.WriteImage(labels, str(path))
    result = run_cli("export-dicom", path, "--reference", series["folder"], "-o", tmp_path / "out")
    assert "does not overlap" in one_error_line(result)
    assert_no_files(tmp_path / "out")


def test_reference_without_dicom(series, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no DICOM here")
    result = run_cli("export-dicom", series["labels"], "--reference", empty, "-o", tmp_path / "out")
    line = one_error_line(result)
    assert "empty" in line and "DICOM" in line
    assert_no_files(tmp_path / "out")


def test_several_series_need_series(series, tmp_path):
    both = tmp_path / "both"
    shutil.copytree(series["folder"], both / "a")
    write_slices(both / "b", [np.zeros((8, 8), np.int16)] * 3, [[0, 0, z] for z in range(3)],
                 [1, 0, 0, 0, 1, 0], [1, 1])
    result = run_cli("export-dicom", series["labels"], "--reference", both, "-o", tmp_path / "out")
    assert "--series" in one_error_line(result)
    assert_no_files(tmp_path / "out")
    uid = pydicom.dcmread(next((both / "a").iterdir()), stop_before_pixels=True).SeriesInstanceUID
    chosen = run_cli("export-dicom", series["labels"], "--reference", both, "-o", tmp_path / "out", "--series", uid)
    assert chosen.returncode == 0, chosen.stderr


def test_existing_output_kept_when_export_fails(series, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "seg.dcm").write_bytes(b"previous")
    result = run_cli("export-dicom", series["labels"], "--reference", series["folder"], "-o", out, "--report",
                     tmp_path / "no-report")
    assert "summary.json" in one_error_line(result) or "report" in one_error_line(result)
    assert (out / "seg.dcm").read_bytes() == b"previous"
    assert sorted(p.name for p in out.iterdir()) == ["seg.dcm"]


# --- PACS -------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def pacs(tmp_path):
    """pynetdicom's qrscp on 127.0.0.1 (a fresh database), stopped after the test."""
    pytest.importorskip("sqlalchemy")
    port, move_port = free_port(), free_port()
    config = tmp_path / "qrscp.ini"
    config.write_text(f"""[DEFAULT]
    ae_title: QRSCP
    port: {port}
    max_pdu: 16382
    acse_timeout: 30
    dimse_timeout: 30
    network_timeout: 30
    bind_address: 127.0.0.1
    instance_location: {tmp_path / 'instances'}
    database_location: {tmp_path / 'instances.sqlite'}
    log_identifier: False

[MEDANALYSIS]
    address: 127.0.0.1
    port: {move_port}
""")
    process = subprocess.Popen([sys.executable, "-m", "pynetdicom", "qrscp", "-c", str(config), "-q"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("qrscp did not start")
    yield {"to": f"QRSCP@127.0.0.1:{port}", "move_port": move_port}
    process.terminate()
    process.wait(timeout=10)


def pixel_data_by_uid(folder: Path) -> dict:
    result = {}
    for path in folder.rglob("*"):
        if path.is_file():
            dataset = pydicom.dcmread(path)
            result[str(dataset.SOPInstanceUID)] = bytes(dataset.PixelData)
    return result


def test_pacs_round_trip(series, pacs, tmp_path):
    assert run_cli("pacs", "echo", "--to", pacs["to"]).returncode == 0
    exported = run_cli("export-dicom", series["labels"], "--reference", series["folder"], "-o", tmp_path / "seg")
    assert exported.returncode == 0, exported.stderr
    sent = run_cli("pacs", "send", series["folder"], tmp_path / "seg" / "seg.dcm", "--to", pacs["to"], "--json")
    assert sent.returncode == 0, sent.stderr
    count = len(list(series["folder"].iterdir())) + 1
    assert json.loads(sent.stdout)["sent"] == count
    found = run_cli("pacs", "find", "--to", pacs["to"], "--json")
    assert found.returncode == 0, found.stderr
    studies = json.loads(found.stdout)["studies"]
    assert len(studies) == 1
    modalities = sorted(s["modality"] for s in studies[0]["series"])
    assert modalities == ["MR", "SEG"]
    only_seg = json.loads(run_cli("pacs", "find", "--to", pacs["to"], "--modality", "SEG", "--json").stdout)
    assert [s["modality"] for s in only_seg["studies"][0]["series"]] == ["SEG"]
    study = studies[0]["study_uid"]
    got = run_cli("pacs", "get", study, "--to", pacs["to"], "-o", tmp_path / "back", "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["received"] == count
    originals = pixel_data_by_uid(series["folder"])
    originals.update(pixel_data_by_uid(tmp_path / "seg"))
    assert pixel_data_by_uid(tmp_path / "back") == originals  # every instance back, pixel data byte-identical
    mr_series = next(s["series_uid"] for s in studies[0]["series"] if s["modality"] == "MR")
    moved = run_cli("pacs", "get", study, "--series", mr_series, "--to", pacs["to"], "-o", tmp_path / "moved",
                    "--move-port", pacs["move_port"], "--json")
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["received"] == count - 1


def test_pacs_unreachable_and_refusing(tmp_path):
    port = free_port()  # nothing listens there
    line = one_error_line(run_cli("pacs", "echo", "--to", f"QRSCP@127.0.0.1:{port}"))
    assert "refused" in line and f"127.0.0.1:{port}" in line
    line = one_error_line(run_cli("pacs", "get", "1.2.3", "--to", f"QRSCP@127.0.0.1:{port}", "-o", tmp_path / "o"))
    assert "refused" in line
    assert not (tmp_path / "o").exists()
    assert "AET@HOST:PORT" in one_error_line(run_cli("pacs", "echo", "--to", "nonsense"))


@pytest.fixture()
def failing_pacs():
    """A PACS that answers every C-STORE, C-FIND and C-GET with a failure status (0xA700, out of
    resources), and rejects associations called anything but FAILING."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import (CTImageStorage, MRImageStorage, SegmentationStorage,
                                      StudyRootQueryRetrieveInformationModelFind,
                                      StudyRootQueryRetrieveInformationModelGet, Verification)

    def failed(event):
        return 0xA700

    def failed_query(event):
        yield 0xA700, None

    def failed_get(event):
        yield 1  # the number of sub-operations comes first
        yield 0xA700, None

    ae = AE(ae_title="FAILING")
    ae.require_called_aet = True
    for uid in (Verification, CTImageStorage, MRImageStorage, SegmentationStorage,
                StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelGet):
        ae.add_supported_context(uid)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, failed), (evt.EVT_C_FIND, failed_query),
                                           (evt.EVT_C_GET, failed_get)])
    yield port
    server.shutdown()


def test_pacs_failed_status(series, failing_pacs, tmp_path):
    to = f"FAILING@127.0.0.1:{failing_pacs}"
    line = one_error_line(run_cli("pacs", "send", series["folder"], "--to", to))
    assert "C-STORE failed" in line and "0xA700" in line
    line = one_error_line(run_cli("pacs", "find", "--to", to))
    assert "C-FIND" in line and "0xA700" in line
    line = one_error_line(run_cli("pacs", "get", "1.2.3", "--to", to, "-o", tmp_path / "o"))
    assert "0xA700" in line and "none kept" in line
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.part")]
    line = one_error_line(run_cli("pacs", "echo", "--to", f"WRONG@127.0.0.1:{failing_pacs}"))
    assert "rejected" in line


def test_intensity_image_given_as_segmentation(series, tmp_path):
    path = tmp_path / "intensity.nii.gz"
    image = sitk.Cast(sitk.RescaleIntensity(series["image"], 0, 255), sitk.sitkUInt8)
    sitk.WriteImage(image, str(path))
    result = run_cli("export-dicom", path, "--reference", series["folder"], "-o", tmp_path / "out")
    assert "intensity image" in one_error_line(result)
    assert_no_files(tmp_path / "out")


def test_seg_on_a_multiframe_source_matches_the_single_frame_series(series, tmp_path):
    """The same series as one enhanced multi-frame object (highdicom's legacy conversion): the SEG
    references its frames, and each frame's mask equals the one made on the single-frame files."""
    import warnings

    datasets = [pydicom.dcmread(p) for p in sorted(series["folder"].iterdir())]
    for dataset in datasets:
        for keyword in ("PatientBirthDate", "PatientSex", "StudyTime", "ReferringPhysicianName", "StudyID",
                        "AccessionNumber"):
            if keyword not in dataset:
                setattr(dataset, keyword, "")
        if "SliceThickness" not in dataset:
            dataset.SliceThickness = "3"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        multiframe = highdicom.legacy.LegacyConvertedEnhancedMRImage(
            legacy_datasets=datasets, series_instance_uid=highdicom.UID(), series_number=7,
            sop_instance_uid=highdicom.UID(), instance_number=1)
    (tmp_path / "mf").mkdir()
    multiframe.save_as(tmp_path / "mf" / "mf.dcm")
    for reference, out in ((series["folder"], tmp_path / "single"), (tmp_path / "mf", tmp_path / "multi")):
        result = run_cli("export-dicom", series["labels"], "--reference", reference, "-o", out)
        assert result.returncode == 0, result.stderr
    single = highdicom.seg.segread(tmp_path / "single" / "seg.dcm")
    multi = highdicom.seg.segread(tmp_path / "multi" / "seg.dcm")
    assert multi.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
        multiframe.SOPInstanceUID
    by_position = {tuple(round(float(v), 3) for v in d.ImagePositionPatient): str(d.SOPInstanceUID) for d in datasets}
    numbers = [int(item.SegmentNumber) for item in single.SegmentSequence]
    labelled = 0
    for frame, group in enumerate(multiframe.PerFrameFunctionalGroupsSequence, start=1):
        position = tuple(round(float(v), 3) for v in group.PlanePositionSequence[0].ImagePositionPatient)
        got = multi.get_pixels_by_source_frame(str(multiframe.SOPInstanceUID), [frame], segment_numbers=numbers,
                                               assert_missing_frames_are_empty=True)[0]
        expected = single.get_pixels_by_source_instance([by_position[position]], segment_numbers=numbers,
                                                        assert_missing_frames_are_empty=True)[0]
        assert np.array_equal(got, expected), f"frame {frame}"
        labelled += int(expected.sum())
    assert labelled > 10000
    assert not dciodvfy_errors(tmp_path / "multi" / "seg.dcm")
