"""ImportLogic on the real headless MRML scene: volume nodes, geometry, attributes, display,
anonymized names, NIfTI through the same entry point, cancel leaves the scene unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from helpers.dicomgen import oblique_mni, write_image_series, write_slices
from MedAnalysisLib import mrml
from MedAnalysisLib.core import geometry
from MedAnalysisLib.core.errors import OperationCancelled
from MedAnalysisLib.core.progress import CancelToken
from MedAnalysisLib.logic.importlogic import ImportLogic, ImportParameters


@pytest.fixture(scope="module")
def source_image():
    return oblique_mni(size=(60, 70, 24), spacing=(1.8, 1.8, 3.0))


@pytest.fixture(scope="module")
def series_folder(tmp_path_factory, source_image):
    folder = tmp_path_factory.mktemp("series")
    write_image_series(source_image, folder, slope=1.0, intercept=-1024.0, modality="CT", series_number=4,
                       rng=np.random.default_rng(5),
                       edit=lambda ds, k: (setattr(ds, "WindowCenter", "40"), setattr(ds, "WindowWidth", "400"),
                                           setattr(ds, "ConvolutionKernel", "B30f")))
    return folder


def volume_nodes(scene):
    return [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]


def test_load_creates_scalar_node_with_geometry_and_metadata(scene, series_folder, source_image):
    logic = ImportLogic(scene)
    [node] = logic.load(series_folder)
    assert node.IsA("vtkMRMLScalarVolumeNode")
    assert node.GetName() == "4: synthetic series"
    image = mrml.imageFromVolumeNode(node)
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(source_image))
    assert np.allclose(mrml.ijkToRasArray(node), geometry.ijk_to_ras(source_image), atol=1e-6)
    assert node.GetAttribute("DICOM.Modality") == "CT"
    assert node.GetAttribute("DICOM.ConvolutionKernel") == "B30f"
    assert node.GetAttribute("DICOM.SeriesDescription") == "synthetic series"
    assert node.GetAttribute("DICOM.PatientName") is None and node.GetAttribute("DICOM.PatientID") is None
    assert len(node.GetAttribute("DICOM.instanceUIDs").split()) == 24
    qa = ImportLogic.qa(node)
    assert qa["uniform_spacing"] is True and qa["slices"] == 24
    assert ImportLogic.warnings(node) == []
    assert mrml.getProvenance(node)["operation"] == "import"
    display = node.GetDisplayNode()
    assert display.GetWindow() == pytest.approx(400) and display.GetLevel() == pytest.approx(40)


def test_anonymized_name_and_attributes(scene, series_folder):
    logic = ImportLogic(scene)
    [node] = logic.load(series_folder, ImportParameters(anonymize=True))
    assert node.GetName() == "CT_4"
    attributes = {name: node.GetAttribute(name) for name in node.GetAttributeNames()}
    assert "DICOM.SeriesDescription" not in attributes
    assert attributes["MedAnalysis.PatientKey"].startswith("ANON-")
    assert attributes["DICOM.SeriesInstanceUID"].startswith("2.25.")
    text = json.dumps(attributes)
    for identifier in ("Synthetic", "Phantom", "SYN0001", "synthetic series", "20260101"):
        assert identifier not in text
    # Same run, same series: same pseudonyms.
    [again] = logic.load(series_folder, ImportParameters(anonymize=True))
    assert again.GetAttribute("DICOM.SeriesInstanceUID") == attributes["DICOM.SeriesInstanceUID"]
    assert again.GetAttribute("MedAnalysis.PatientKey") == attributes["MedAnalysis.PatientKey"]


def test_cancel_leaves_scene_unchanged(scene, series_folder):
    logic = ImportLogic(scene)
    before = scene.GetNumberOfNodes()
    cancel = CancelToken()
    seen = []

    def progress(fraction, message):
        seen.append(fraction)
        if fraction > 0.5:
            cancel.cancel()

    with pytest.raises(OperationCancelled):
        logic.load(series_folder, progress=progress, cancel=cancel)
    assert scene.GetNumberOfNodes() == before
    assert seen and max(seen) <= 1.0


def test_nifti_through_the_same_entry_point(scene, tmp_path, source_image):
    path = tmp_path / "brain_t1.nii.gz"
    sitk.WriteImage(source_image, str(path))
    logic = ImportLogic(scene)
    [node] = logic.load(path)
    assert node.GetName() == "brain_t1"
    assert np.allclose(mrml.ijkToRasArray(node), geometry.ijk_to_ras(source_image), atol=1e-5)
    [anonymous] = logic.load(path, ImportParameters(anonymize=True))
    assert anonymous.GetName() == "Image"
    assert anonymous.GetAttribute("MedAnalysis.SourceFile") is None


def test_monochrome1_display_inverted_and_colour_vector_node(scene, tmp_path):
    values = (np.arange(3 * 8 * 9).reshape(3, 8, 9) % 200).astype(np.int16)
    positions = [(0.0, 0.0, 2.0 * k) for k in range(3)]
    write_slices(tmp_path / "m1", list(values), positions, [1, 0, 0, 0, 1, 0], (1.0, 1.0),
                 edit=lambda ds, k: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"))
    logic = ImportLogic(scene)
    [node] = logic.load(tmp_path / "m1")
    assert node.GetAttribute("MedAnalysis.InvertDisplay") == "1"
    assert node.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeInvertedGrey"
    rgb = np.stack([values, values, values], axis=-1).astype(np.uint8)

    def as_rgb(ds, k):
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = rgb[k].tobytes()

    write_slices(tmp_path / "rgb", list(values), positions, [1, 0, 0, 0, 1, 0], (1.0, 1.0), edit=as_rgb)
    [vector] = logic.load(tmp_path / "rgb")
    assert vector.IsA("vtkMRMLVectorVolumeNode")


def test_series_selection_and_baseline_followup_keys(scene, tmp_path):
    values = (np.arange(4 * 6 * 7).reshape(4, 6, 7) % 90).astype(np.int16)
    positions = [(0.0, 0.0, 2.0 * k) for k in range(4)]
    patient = dict(edit=lambda ds, k: (setattr(ds, "PatientID", "P-77"), setattr(ds, "PatientName", "Doe^Jane")))
    baseline = write_slices(tmp_path / "base", list(values), positions, [1, 0, 0, 0, 1, 0], (1.0, 1.0),
                            series_number=2, **patient)
    write_slices(tmp_path / "base", list(values), positions, [1, 0, 0, 0, 1, 0], (1.0, 1.0), series_number=3,
                 study_uid=generate_uid(), names=[f"other{k}" for k in range(4)])
    write_slices(tmp_path / "follow", list(values), positions, [1, 0, 0, 0, 1, 0], (1.0, 1.0), series_number=2,
                 **patient)
    logic = ImportLogic(scene)
    import pydicom

    uid = pydicom.dcmread(baseline[0]).SeriesInstanceUID
    [first] = logic.load(tmp_path / "base", ImportParameters(series_uid=uid, anonymize=True))
    [second] = logic.load(tmp_path / "follow", ImportParameters(anonymize=True))
    assert first.GetName() == "MR_2"
    assert first.GetAttribute("MedAnalysis.PatientKey") == second.GetAttribute("MedAnalysis.PatientKey")
    assert len(logic.load(tmp_path / "base")) == 2
