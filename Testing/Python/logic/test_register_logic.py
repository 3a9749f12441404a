"""RegistrationLogic on a real headless MRML scene: transform nodes, resampled volumes, masks,
landmarks, applying the result, and a scene left unchanged by failed or cancelled runs."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MedAnalysisLib import mrml
from MedAnalysisLib.core import geometry
from MedAnalysisLib.core import register as reg
from MedAnalysisLib.core.errors import InputError, OperationCancelled
from MedAnalysisLib.core.progress import CancelToken
from MedAnalysisLib.logic.registrationlogic import RegistrationLogic, RegistrationParameters
from helpers.registration_cases import make_case

# Lighter pyramids than the presets: these tests check geometry and plumbing, not accuracy
# (test_register_core.py checks accuracy with the presets themselves).
QUICK_RIGID = {"rigid": {"shrink_factors": [4, 2], "smoothing_sigmas_mm": [1.0, 0.5], "samples": [3000, 4000],
                         "iterations": [60, 20]}}
QUICK_BSPLINE = {"affine": {"shrink_factors": [4], "smoothing_sigmas_mm": [1.0], "samples": [3000], "iterations": [60]},
                 "bspline": {"shrink_factors": [4, 2], "smoothing_sigmas_mm": [1.0, 0.5], "samples": [15000, 30000],
                             "iterations": [30, 15], "grid_schedule": [2, 1]}}


def volume_nodes(scene, case):
    fixed = mrml.volumeNodeFromImage(case.fixed, scene, name="fixed")
    moving = mrml.volumeNodeFromImage(case.moving, scene, name="moving")
    return fixed, moving


def node_count(scene):
    return scene.GetNumberOfNodes()


@pytest.mark.parametrize("name,preset,overrides,tolerance,tre_limit", [
    ("rigid", "rigid", QUICK_RIGID, 1e-4, 0.5),
    ("deformable", "bspline", QUICK_BSPLINE, 1e-3, 1.5),
])
def test_transform_node_matches_written_file_and_resampling(scene, tmp_path, name, preset, overrides, tolerance,
                                                             tre_limit):
    case = make_case(name, 2.0)
    fixedNode, movingNode = volume_nodes(scene, case)
    logic = RegistrationLogic(scene)
    parameters = RegistrationParameters(preset=preset, overrides=overrides, threads=2)
    outputs = logic.register(fixedNode, movingNode, parameters)
    transformNode = outputs.transformNode
    assert transformNode.IsLinear() == (name == "rigid")
    assert mrml.getProvenance(transformNode)["operation"] == "register"

    suffix = ".tfm" if name == "rigid" else ".h5"
    path = logic.saveTransform(transformNode, tmp_path / f"result{suffix}")
    written = sitk.ReadTransform(str(path))
    assert case.tre_summary(written)["mean_mm"] <= tre_limit

    # 1,000 brain points (fixed space, RAS): the node's from-parent transform maps them as the file does
    pointsLps = np.array([case.moving_to_fixed.TransformPoint(tuple(p)) for p in case.points_moving_lps])
    pointsRas = geometry.lps_to_ras_points(pointsLps)
    fromNode = mrml.transformPointsFromParent(transformNode, pointsRas)
    fromFile = geometry.transform_points_ras(written, pointsRas)
    assert np.abs(fromNode - fromFile).max() <= tolerance

    # the resampled node equals SimpleITK resampling of the moving image through the written file
    background = float(sitk.GetArrayViewFromImage(case.moving).min())
    expected = sitk.Resample(case.moving, case.fixed, written, sitk.sitkLinear, background, sitk.sitkFloat32)
    resampled = mrml.imageFromVolumeNode(outputs.resampledVolumeNode)
    assert geometry.same_grid(resampled, case.fixed)
    difference = np.abs(sitk.GetArrayViewFromImage(resampled) - sitk.GetArrayViewFromImage(expected))
    assert difference.max() <= 1e-3 * float(sitk.GetArrayViewFromImage(expected).max())

    # applying the result is one call; to-parent then maps the moving points onto the fixed ones
    logic.applyTransform(movingNode, transformNode)
    assert movingNode.GetParentTransformNode() is transformNode
    back = mrml.transformPointsToParent(transformNode, fromNode)
    assert np.abs(back - pointsRas).max() <= (1e-4 if name == "rigid" else 1e-2)


def test_segment_masks_dice_and_qa_volumes(scene):
    case = make_case("rigid", 2.0)
    fixedNode, movingNode = volume_nodes(scene, case)
    fixedSegmentation = mrml.segmentationNodeFromLabelmap(case.fixed_mask, scene, name="fixed brain")
    movingMaskNode = mrml.volumeNodeFromImage(case.moving_mask, scene, name="moving brain", labelmap=True)
    segmentId = fixedSegmentation.GetSegmentation().GetNthSegmentID(0)
    parameters = RegistrationParameters(overrides=QUICK_RIGID, checkerboard=True, difference=True, threads=2)
    outputs = RegistrationLogic(scene).register(fixedNode, movingNode, parameters, fixedMaskNode=fixedSegmentation,
                                                fixedMaskSegmentId=segmentId, movingMaskNode=movingMaskNode)
    assert outputs.qa["mask_dice"] > 0.95 and outputs.qa["mask_dice"] > outputs.qa["mask_dice_initial"]
    assert outputs.qa["final_metric"] < outputs.qa["initial_metric"]
    for node in (outputs.checkerboardVolumeNode, outputs.differenceVolumeNode):
        image = mrml.imageFromVolumeNode(node)
        assert geometry.same_grid(image, case.fixed)
    with pytest.raises(InputError, match="has no segment 'nope'"):
        RegistrationLogic(scene).register(fixedNode, movingNode, parameters, fixedMaskNode=fixedSegmentation,
                                          fixedMaskSegmentId="nope")


def test_landmarks_from_markups_and_initial_transform_node(scene):
    case = make_case("rigid", 2.0)
    fixedNode, movingNode = volume_nodes(scene, case)
    fixedToMoving = case.moving_to_fixed.GetInverse()
    fixedLps = np.array([[30.0, 20.0, 10.0], [-35.0, 25.0, 5.0], [0.0, -40.0, 20.0], [5.0, 10.0, -30.0]])
    movingLps = reg.transform_points(fixedToMoving, fixedLps)
    markups = []
    for name, points in (("F", fixedLps), ("M", movingLps)):
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        for point in geometry.lps_to_ras_points(points):
            node.AddControlPoint(*point)
        markups.append(node)
    logic = RegistrationLogic(scene)
    assert np.allclose(logic.landmarksLps(markups[0]), fixedLps)
    quick = RegistrationParameters(overrides={"rigid": {"shrink_factors": [2], "smoothing_sigmas_mm": [0.5],
                                                        "samples": [4000], "iterations": [20]}}, threads=2)
    outputs = logic.register(fixedNode, movingNode, quick, fixedLandmarksNode=markups[0],
                             movingLandmarksNode=markups[1], createResampledVolume=False)
    assert outputs.resampledVolumeNode is None
    assert case.tre_summary(mrml.sitkTransformFromNode(outputs.transformNode))["mean_mm"] < 0.5
    # the same start from an existing transform node
    startNode = mrml.transformNodeFromSitk(fixedToMoving, scene, name="start")
    outputs = logic.register(fixedNode, movingNode, quick, initialTransformNode=startNode, createResampledVolume=False)
    assert case.tre_summary(mrml.sitkTransformFromNode(outputs.transformNode))["mean_mm"] < 0.5


def test_apply_transform_to_a_segmentation_and_harden(scene):
    case = make_case("rigid", 2.0)
    segmentation = mrml.segmentationNodeFromLabelmap(case.moving_mask, scene, name="moving brain")
    transformNode = mrml.transformNodeFromSitk(case.moving_to_fixed.GetInverse(), scene, name="fixed_to_moving")
    logic = RegistrationLogic(scene)
    logic.applyTransform(segmentation, transformNode)
    assert segmentation.GetParentTransformNode() is transformNode
    volume = mrml.volumeNodeFromImage(case.moving, scene, name="moving")
    logic.applyTransform(volume, transformNode, harden=True)
    assert volume.GetParentTransformNode() is None  # hardened: the geometry now holds the transform
    logic.applyTransform(segmentation, None)
    assert segmentation.GetParentTransformNode() is None


def test_failed_and_cancelled_runs_leave_the_scene_unchanged(scene):
    case = make_case("rigid", 2.0)
    fixedNode, movingNode = volume_nodes(scene, case)
    logic = RegistrationLogic(scene)
    before = node_count(scene)
    ascent = RegistrationParameters(overrides={"rigid": {
        "optimizer": {"name": "gradient_descent", "learning_rate": -10.0, "estimate_learning_rate": "never"},
        "iterations": [5, 5, 5]}}, threads=1)
    with pytest.raises(reg.RegistrationFailed, match="^fixed -> moving: registration failed"):
        logic.register(fixedNode, movingNode, ascent)
    assert node_count(scene) == before
    cancel = CancelToken()

    def progress(fraction, message):
        if "iteration 2" in message:
            cancel.cancel()

    with pytest.raises(OperationCancelled):
        logic.register(fixedNode, movingNode, RegistrationParameters(overrides=QUICK_RIGID, threads=1),
                       progress=progress, cancel=cancel)
    assert node_count(scene) == before
    with pytest.raises(InputError, match="select both"):
        logic.register(fixedNode, None)
