"""De-identification (PS3.15 Annex E basic profile): a series whose every listed attribute, a
private tag and the free-text fields carry marker strings; after ``--anonymize`` no marker is
left in any exported file's bytes, the node attributes, the logs or ``--json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from helpers.dicomgen import write_slices
from helpers.paths import REPO
from MedAnalysisLib.core.dicom_deid import Deidentifier, annex_e_table, profile_action

MARKER_UID_ROOT = "1.2.826.0.1.3680043.9.7777"
DATE_MARKER, DATETIME_MARKER, TIME_MARKER = "19020304", "19020304235959", "235959.987654"
DS_MARKER, IS_MARKER = "31415.9265", "2718281"


def text_marker(number: int) -> str:
    return f"MRK{number:04d}Q"


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "MedAnalysisLib.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


def mark_dataset(ds: Dataset, index: int, markers: set) -> None:
    """Put a marker in every Annex E attribute (and a private tag, overlay comments)."""
    exact, _ = annex_e_table()
    for number, tag in enumerate(sorted(exact)):
        if tag >> 16 in (0x0000, 0x0002):  # command and file meta groups cannot go in a data set
            continue
        vr = dictionary_VR(tag).split(" ")[0] if dictionary_has_tag(tag) else "LO"
        value = None
        if vr in ("LO", "SH", "CS", "AE", "PN", "LT", "ST", "UT", "UC"):
            value = text_marker(number)
        elif vr == "UR":
            value = f"http://{text_marker(number).lower()}.example"
        elif vr == "DA":
            value = DATE_MARKER
        elif vr == "DT":
            value = DATETIME_MARKER
        elif vr == "TM":
            value = TIME_MARKER
        elif vr == "DS":
            value = DS_MARKER
        elif vr == "IS":
            value = IS_MARKER
        elif vr == "AS":
            value = "099Y"
        elif vr == "UI":
            value = f"{MARKER_UID_ROOT}.{number}" + (f".{index}" if tag == 0x00080018 else "")
        elif vr == "SQ":
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator = text_marker(number), "99MRK"
            item.CodeMeaning = f"{text_marker(number)} meaning"
            value = Sequence([item])
        elif vr in ("US", "SS"):
            value = 4242
        elif vr in ("OB", "UN"):
            value = b"MRKBINARY" + b"\0"
        if value is None:
            continue
        ds.add_new(tag, vr, value)
        if vr not in ("US", "SS", "SQ", "OB", "UN"):
            markers.add(str(value).lower() if vr == "UR" else str(value))
        elif vr == "SQ":
            markers.add(text_marker(number))
    block = ds.private_block(0x0009, "MARKER CREATOR", create=True)
    block.add_new(0x01, "LO", "MRKPRIVATE-SECRET")
    ds.add_new(0x60004000, "LT", "MRKOVERLAY-COMMENT")
    markers.update({"MRKPRIVATE-SECRET", "MRKOVERLAY-COMMENT", "MARKER CREATOR", MARKER_UID_ROOT})


@pytest.fixture(scope="module")
def marked_series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("marked") / "series"
    markers: set = set()
    values = (np.arange(3 * 16 * 18).reshape(3, 16, 18) % 300).astype(np.int16)
    positions = [(-10.0, 5.0, 2.5 * k) for k in range(3)]
    # Image geometry and pixel attributes are not in Annex E: the series must still load.
    write_slices(folder, list(values), positions, [1, 0, 0, 0, 1, 0], (0.8, 0.8), modality="MR", series_number=9,
                 study_uid=f"{MARKER_UID_ROOT}.1.1", series_uid=f"{MARKER_UID_ROOT}.1.2",
                 frame_uid=f"{MARKER_UID_ROOT}.1.3", edit=lambda ds, k: mark_dataset(ds, k, markers))
    return folder, sorted(markers), values


def found(data: bytes, markers) -> list:
    lowered = data.lower()
    return [m for m in markers if m.lower().encode() in lowered]


def test_table_covers_the_profile():
    exact, masked = annex_e_table()
    assert len(exact) > 600 and masked
    assert profile_action(0x00100010) == "Z" and profile_action(0x00100020) == "Z/D"
    assert profile_action(0x0008103E) == "X" and profile_action(0x00204000) == "X"
    assert profile_action(0x00080018) == "U" and profile_action(0x60024000) == "X"
    assert profile_action(0x00280010) is None  # Rows: kept


def test_markers_are_in_the_source(marked_series):
    folder, markers, _ = marked_series
    data = b"".join(p.read_bytes() for p in folder.iterdir())
    missing = [m for m in markers if m.lower().encode() not in data.lower()]
    assert missing == []
    assert len(markers) > 300


def test_cli_anonymize_leaves_no_marker(tmp_path, marked_series):
    folder, markers, values = marked_series
    out = tmp_path / "out" / "anon.nii.gz"
    exported = tmp_path / "exported"
    result = run_cli("import", folder, "-o", out, "--anonymize", "--export-dicom", exported, "--json")
    assert result.returncode == 0, result.stderr
    assert found(result.stdout.encode(), markers) == []
    assert found(result.stderr.encode(), markers) == []
    report = json.loads(result.stdout)
    [output] = report["outputs"]
    assert output["name"] == "MR_9" and output["series_uid"].startswith("2.25.")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    dicom_files = [p for p in files if p.suffix == ".dcm"]
    assert len(dicom_files) == 3 and out.exists() and (out.parent / "anon.nii.gz.provenance.json").exists()
    for path in files:
        assert found(path.read_bytes(), markers) == [], path.name
    # The exported series is valid, de-identified DICOM that loads back to the same voxels.
    for path in dicom_files:
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientID == output["patient_key"] and ds.PatientName == output["patient_key"]
        assert ds.SeriesInstanceUID == output["series_uid"]
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert not any(element.tag.is_private for element in ds)
        for element in ds.iterall():
            if element.VR in ("US", "SS") and element.tag not in (0x00280010, 0x00280011, 0x00280002, 0x00280100,
                                                                    0x00280101, 0x00280102, 0x00280103):
                assert element.value in (None, 0, "") or profile_action(element.tag) is None, element
    again = run_cli("import", exported, "-o", tmp_path / "again.nii.gz", "--json")
    assert again.returncode == 0, again.stderr
    import SimpleITK as sitk

    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "again.nii.gz"))), values)


def test_node_attributes_carry_no_marker(scene, marked_series):
    from MedAnalysisLib.logic.importlogic import ImportLogic, ImportParameters

    folder, markers, _ = marked_series
    [node] = ImportLogic(scene).load(folder, ImportParameters(anonymize=True))
    attributes = {name: node.GetAttribute(name) for name in node.GetAttributeNames()}
    text = (node.GetName() + json.dumps(attributes)).encode()
    assert found(text, markers) == []
    assert node.GetName() == "MR_9"


def test_pseudonyms_consistent_across_studies_of_one_patient():
    deidentifier = Deidentifier()

    def study(date, study_uid, series_uid, sop_uid, referenced):
        ds = Dataset()
        ds.PatientID, ds.PatientName, ds.PatientBirthDate = "P-123", "Doe^John", "19700101"
        ds.StudyDate, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = date, study_uid, series_uid, sop_uid
        ds.StudyDescription = "Doe follow-up head"
        ds.ImageComments = "patient John Doe, P-123"
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", referenced
        ds.ReferencedImageSequence = Sequence([ref])
        return ds

    first_sop = generate_uid()
    baseline = study("20200101", generate_uid(), generate_uid(), first_sop, generate_uid())
    followup = study("20200301", generate_uid(), generate_uid(), generate_uid(), first_sop)
    deidentifier.deidentify(baseline)
    deidentifier.deidentify(followup)
    assert baseline.PatientID == followup.PatientID and baseline.PatientID.startswith("ANON-")
    assert "PatientBirthDate" not in baseline or not baseline.PatientBirthDate
    import datetime

    def day(text):
        return datetime.date(int(text[:4]), int(text[4:6]), int(text[6:8]))

    assert (day(followup.StudyDate) - day(baseline.StudyDate)).days == 60
    assert baseline.StudyDate != "20200101"
    # The follow-up's reference to a baseline image points at the baseline image's new UID.
    assert followup.ReferencedImageSequence[0].ReferencedSOPInstanceUID == baseline.SOPInstanceUID
    assert "StudyDescription" not in baseline and "ImageComments" not in followup
    other_run = Deidentifier()
    assert other_run.map_uid(first_sop) != deidentifier.map_uid(first_sop)
    assert len(deidentifier.map_uid(first_sop)) <= 64


def test_free_text_scrubbed_outside_the_table():
    ds = Dataset()
    ds.PatientID, ds.PatientName = "ZX-998877", "Smithson^Alicia"
    ds.add_new(0x00181030, "LO", "protocol for Smithson")  # ProtocolName: in the table (X/D)
    ds.add_new(0x00321060, "LO", "Smithson ZX-998877 brain")  # RequestedProcedureDescription
    ds.add_new(0x00400254, "LO", "ok text")  # PerformedProcedureStepDescription
    ds.add_new(0x00089215, "SQ", Sequence())
    Deidentifier().deidentify(ds)
    text = str(ds)
    assert "Smithson" not in text and "ZX-998877" not in text and "Alicia" not in text
