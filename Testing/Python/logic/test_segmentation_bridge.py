"""Labelmap <-> segmentation node, .seg.nrrd through Slicer's storage node; table nodes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.images import make_oblique_image
from MedAnalysisLib import mrml
from MedAnalysisLib.core import geometry
from MedAnalysisLib.core.labels import BRAIN_TISSUE_SEGMENTS


@pytest.fixture
def four_label_image(rng):
    array = np.zeros((20, 24, 28), dtype=np.uint8)
    array[2:8, 3:10, 4:12] = 1
    array[8:15, 3:10, 4:12] = 2
    array[3:12, 12:20, 14:25] = 3
    array[14:18, 15:19, 5:9] = 4
    return make_oblique_image(array)


def test_labelmap_segmentation_round_trip(scene, four_label_image):
    node = mrml.segmentationNodeFromLabelmap(four_label_image, scene, segments=BRAIN_TISSUE_SEGMENTS)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 4
    names = [segmentation.GetNthSegment(i).GetName() for i in range(4)]
    assert names == ["Cerebrospinal fluid", "Gray matter", "White matter", "Lesion"]
    colors = [tuple(round(c, 3) for c in segmentation.GetNthSegment(i).GetColor()) for i in range(4)]
    assert colors == [tuple(round(c, 3) for c in s.color) for s in BRAIN_TISSUE_SEGMENTS]
    back = mrml.labelmapFromSegmentationNode(node)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(four_label_image))
    assert geometry.same_grid(back, four_label_image, 1e-6)


def test_seg_nrrd_keeps_names_colours_terminology(scene, four_label_image, tmp_path):
    node = mrml.segmentationNodeFromLabelmap(four_label_image, scene, segments=BRAIN_TISSUE_SEGMENTS)
    path = mrml.saveSegmentation(node, tmp_path / "tissues.seg.nrrd")
    loaded = mrml.loadSegmentation(path, scene)
    specs = mrml.segmentSpecs(loaded)
    assert [s.name for s in specs] == [s.name for s in BRAIN_TISSUE_SEGMENTS]
    assert [s.label for s in specs] == [1, 2, 3, 4]
    for got, want in zip(specs, BRAIN_TISSUE_SEGMENTS):
        assert np.allclose(got.color, want.color, atol=1e-3)
        assert got.type == want.type and got.category == want.category
    back = mrml.labelmapFromSegmentationNode(loaded)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(four_label_image))
    assert geometry.same_grid(back, four_label_image, 1e-5)


def test_unknown_labels_get_generic_segments_and_keep_values(scene):
    array = np.zeros((6, 7, 8), dtype=np.int16)
    array[1:3, 1:3, 1:3] = 7
    array[3:5, 4:6, 4:7] = 300
    image = sitk.GetImageFromArray(array)
    node = mrml.segmentationNodeFromLabelmap(image, scene)
    assert [s.name for s in mrml.segmentSpecs(node)] == ["Segment_7", "Segment_300"]
    assert np.array_equal(sitk.GetArrayFromImage(mrml.labelmapFromSegmentationNode(node)), array)


def test_labelmap_resampled_onto_reference_grid(scene, four_label_image):
    node = mrml.segmentationNodeFromLabelmap(four_label_image, scene, segments=BRAIN_TISSUE_SEGMENTS)
    back = mrml.labelmapFromSegmentationNode(node, referenceImage=four_label_image)
    assert geometry.same_grid(back, four_label_image, 1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(four_label_image))


def test_table_rows_round_trip(scene):
    rows = [{"id": "L1", "volume_ml": 1.25, "status": "new"}, {"id": "L2", "volume_ml": 0.5, "status": "stable"}]
    node = mrml.tableNodeFromRows(rows, scene, name="Lesions")
    assert node.GetTable().GetNumberOfRows() == 2
    assert mrml.rowsFromTableNode(node) == rows


def test_provenance_attribute(scene, four_label_image):
    record = {"operation": "test", "version": "x"}
    node = mrml.volumeNodeFromImage(four_label_image, scene, provenance=record)
    assert mrml.getProvenance(node) == record
