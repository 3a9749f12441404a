"""Lesion detection, matching, change classification, report; monitoring logic and CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.paths import REPO
from MedAnalysisLib import mrml, resources
from Training import phantom
from MedAnalysisLib.core.errors import InputError
from MedAnalysisLib.core.labels import SegmentSpec
from MedAnalysisLib.core.longitudinal import MonitoringThresholds, classify_change, match_lesions
from MedAnalysisLib.core.quantify import measure_lesions
from MedAnalysisLib.logic.monitoringlogic import MonitoringLogic, MonitoringParameters


@pytest.fixture(scope="module")
def template():
    t1 = sitk.ReadImage(str(resources.samplePath("mni152_t1.nii.gz")), sitk.sitkFloat32)
    tissue = sitk.ReadImage(str(resources.samplePath("mni152_tissue_labels.nii.gz")))
    return t1, tissue


def test_measure_lesions_volume_centroid_diameter():
    array = np.zeros((40, 40, 40), np.uint8)
    zz, yy, xx = np.mgrid[:40, :40, :40]
    array[(zz - 20) ** 2 + (yy - 15) ** 2 + (xx - 25) ** 2 <= 36] = 1     # sphere radius 6 voxels
    array[2:4, 2:4, 2:4] = 1                                              # 8 voxels
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.5, 0.5))
    image.SetOrigin((10.0, 20.0, 30.0))
    lesions, components = measure_lesions(image, min_volume_ml=0.0)
    assert [l.id for l in lesions] == ["L1", "L2"]
    big = lesions[0]
    assert abs(big.volume_ml - big.voxels * 0.125 / 1000) < 1e-6
    assert abs(big.volume_ml - 4 / 3 * np.pi * 3.0 ** 3 / 1000) / big.volume_ml < 0.1
    expected_lps = np.array([10 + 25 * 0.5, 20 + 15 * 0.5, 30 + 20 * 0.5])
    assert np.allclose(big.centroid_ras, expected_lps * [-1, -1, 1], atol=1e-6)
    assert abs(big.max_diameter_mm - 6.5) < 0.6
    assert measure_lesions(image, min_volume_ml=0.01)[0][-1].id == "L1"  # the 8-voxel one (0.001 mL) is dropped


def test_classification_thresholds():
    thresholds = MonitoringThresholds(relative_change=0.25, absolute_change_ml=0.05)
    assert classify_change(1.0, 1.3, thresholds) == "grown"
    assert classify_change(1.0, 1.2, thresholds) == "stable"
    assert classify_change(1.0, 0.7, thresholds) == "shrunk"
    assert classify_change(0.1, 0.14, thresholds) == "stable"  # +40 % but below the absolute threshold


def _components(shape, boxes):
    array = np.zeros(shape, np.uint8)
    for value, box in boxes:
        array[box] = value
    return sitk.GetImageFromArray(array)


def test_merge_and_split_are_reported():
    shape = (30, 30, 60)
    baseline = _components(shape, [(1, np.s_[10:15, 10:15, 5:12]), (2, np.s_[10:15, 10:15, 14:21]),
                                   (3, np.s_[10:20, 10:20, 35:55])])
    followup = _components(shape, [(1, np.s_[10:15, 10:15, 5:21]), (2, np.s_[10:20, 10:20, 35:43]),
                                   (3, np.s_[10:20, 10:20, 47:55])])
    b, bc = measure_lesions(baseline, min_volume_ml=0)
    f, fc = measure_lesions(followup, min_volume_ml=0)
    result = match_lesions(b, bc, f, fc, sitk.Transform(3, sitk.sitkIdentity))
    events = sorted(e["event"] for e in result["lesions"] if e["event"])
    assert events == ["merge", "split"]
    assert result["summary"]["merges"] == 1 and result["summary"]["splits"] == 1


def run_pair(scene, pair, tmp_path=None):
    baseline = mrml.volumeNodeFromImage(pair.baseline, scene, name="baseline")
    followup = mrml.volumeNodeFromImage(pair.followup, scene, name="followup")
    lesion = [SegmentSpec(1, "Lesion")]
    baselineSeg = mrml.segmentationNodeFromLabelmap(sitk.Cast(pair.baseline_lesions > 0, sitk.sitkUInt8), scene,
                                                    segments=lesion)
    followupSeg = mrml.segmentationNodeFromLabelmap(sitk.Cast(pair.followup_lesions > 0, sitk.sitkUInt8), scene,
                                                    segments=lesion)
    return MonitoringLogic(scene).monitor(baseline, followup, MonitoringParameters(), baselineSeg, followupSeg,
                                          reportDir=tmp_path)


def test_monitoring_on_generated_pair(scene, template, tmp_path):
    t1, tissue = template
    pair = phantom.make_study_pair(t1, tissue, seed=21, n_lesions=10)
    outputs = run_pair(scene, pair, tmp_path / "report")
    f1, volume_errors, centroid_errors, failures = phantom.score_monitoring(outputs.result, pair.truth)
    assert f1 >= 0.9, failures
    assert max(volume_errors) <= 0.05 and max(centroid_errors) <= 1.5
    assert outputs.tableNode.GetTable().GetNumberOfRows() == len(outputs.result["lesions"])
    assert outputs.markupsNode.GetNumberOfControlPoints() == len(outputs.result["lesions"])
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Research use only" in html and html.count("data:image/png;base64,") >= 2 + len(pair.truth)
    assert (tmp_path / "report" / "lesions.csv").read_text().count("\n") == len(outputs.result["lesions"]) + 1


@pytest.mark.slow
def test_monitoring_accuracy_thirty_lesions(template, tmp_path):
    """>= 30 lesions over three pairs, sizes 0.1-5 mL, including near-threshold changes."""
    t1, tissue = template
    totals = {"correct": 0, "f1": [], "volume": [], "centroid": [], "failures": []}
    for seed in (101, 102, 103):
        scene = mrml.newScene()
        fates = ["grown", "shrunk", "stable", "vanished", "new", "grown", "shrunk", "stable", "grown", "shrunk", "new"]
        pair = phantom.make_study_pair(t1, tissue, seed=seed, fates=fates, growth=(1.35, 2.5), shrinkage=(0.3, 0.7))
        outputs = run_pair(scene, pair)
        f1, volume, centroid, failures = phantom.score_monitoring(outputs.result, pair.truth)
        totals["f1"].append(f1)
        totals["volume"] += volume
        totals["centroid"] += centroid
        totals["failures"] += failures
    print(json.dumps({"f1_per_pair": totals["f1"], "max_volume_error": max(totals["volume"]),
                      "max_centroid_error_mm": max(totals["centroid"]), "failures": totals["failures"]}))
    assert np.mean(totals["f1"]) >= 0.95
    assert max(totals["volume"]) <= 0.05 and max(totals["centroid"]) <= 1.5


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "MedAnalysisLib.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def small_pair_files(template, tmp_path_factory):
    t1, tissue = template
    folder = tmp_path_factory.mktemp("pair")
    shrink = [2, 2, 2]
    baseline = sitk.Shrink(t1, shrink)
    sitk.WriteImage(baseline, str(folder / "baseline.nii.gz"))
    moved = sitk.Resample(baseline, baseline, sitk.Euler3DTransform((0, 0, 0), 0.03, 0.0, 0.02, (2.0, -1.0, 1.0)),
                          sitk.sitkLinear)
    sitk.WriteImage(moved, str(folder / "followup.nii.gz"))
    empty = sitk.Image(baseline.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(baseline)
    sitk.WriteImage(empty, str(folder / "empty.nii.gz"))
    return folder


def test_cli_no_lesions_reports_so(small_pair_files, tmp_path):
    folder = small_pair_files
    result = run_cli("monitor", folder / "baseline.nii.gz", folder / "followup.nii.gz", "-o", tmp_path / "r",
                     "--baseline-seg", folder / "empty.nii.gz", "--followup-seg", folder / "empty.nii.gz", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["lesions"] == [] and summary["summary"]["burden_baseline_ml"] == 0
    assert "No lesions were found" in (tmp_path / "r" / "report.html").read_text()


def test_cli_non_overlapping_fields_of_view(small_pair_files, tmp_path):
    folder = small_pair_files
    far = sitk.ReadImage(str(folder / "followup.nii.gz"))
    far.SetOrigin(tuple(np.array(far.GetOrigin()) + [500.0, 0.0, 0.0]))
    sitk.WriteImage(far, str(tmp_path / "far.nii.gz"))
    existing = tmp_path / "r"
    existing.mkdir()
    (existing / "report.html").write_text("previous")
    result = run_cli("monitor", folder / "baseline.nii.gz", tmp_path / "far.nii.gz", "-o", existing,
                     "--baseline-seg", folder / "empty.nii.gz", "--followup-seg", folder / "empty.nii.gz")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "overlap" in result.stderr.lower()
    assert (existing / "report.html").read_text() == "previous"


def test_different_patient_keys_warn(scene, small_pair_files):
    folder = small_pair_files
    baseline = mrml.loadVolumeNode(folder / "baseline.nii.gz", scene)
    followup = mrml.loadVolumeNode(folder / "followup.nii.gz", scene)
    baseline.SetAttribute("MedAnalysis.PatientKey", "P-aaaa")
    followup.SetAttribute("MedAnalysis.PatientKey", "P-bbbb")
    empty = mrml.segmentationNodeFromLabelmap(sitk.ReadImage(str(folder / "empty.nii.gz")), scene)
    outputs = MonitoringLogic(scene).monitor(baseline, followup, MonitoringParameters(), empty, empty)
    assert any("patient keys" in w for w in outputs.warnings)


@pytest.mark.parametrize("choice", ["auto", "off"])
def test_brain_mask_choice_reaches_segmentation(scene, small_pair_files, monkeypatch, choice):
    from MedAnalysisLib.logic import segmentationlogic

    seen = []

    def segment(self, volumeNode, parameters, **kwargs):
        seen.append(parameters.brainMask)
        raise KeyboardInterrupt  # stop here: only the hand-over is under test

    monkeypatch.setattr(segmentationlogic.SegmentationLogic, "segment", segment)
    baseline = mrml.loadVolumeNode(small_pair_files / "baseline.nii.gz", scene)
    followup = mrml.loadVolumeNode(small_pair_files / "followup.nii.gz", scene)
    with pytest.raises(KeyboardInterrupt):
        MonitoringLogic(scene).monitor(baseline, followup, MonitoringParameters(brainMask=choice).validate())
    assert seen == [choice]


def test_unknown_brain_mask_choice_is_refused(small_pair_files, tmp_path):
    with pytest.raises(InputError, match="brainMask"):
        MonitoringParameters(brainMask="maybe").validate()
    folder = small_pair_files
    result = run_cli("monitor", folder / "baseline.nii.gz", folder / "followup.nii.gz", "-o", tmp_path / "r",
                     "--brain-mask", "maybe")
    assert result.returncode == 2 and "--brain-mask" in result.stderr and not (tmp_path / "r").exists()


def test_cancelled_monitoring_leaves_the_scene_as_it_was(scene, small_pair_files):
    from MedAnalysisLib.core.errors import OperationCancelled
    from MedAnalysisLib.core.progress import CancelToken

    baseline = mrml.loadVolumeNode(small_pair_files / "baseline.nii.gz", scene)
    followup = mrml.loadVolumeNode(small_pair_files / "followup.nii.gz", scene)
    before = scene.GetNumberOfNodes()
    token, messages = CancelToken(), []

    def progress(fraction, message):
        messages.append(message)
        if message.startswith("segmenting follow-up"):  # the baseline's segmentation node exists by now
            token.cancel()

    with pytest.raises(OperationCancelled):
        MonitoringLogic(scene).monitor(baseline, followup, MonitoringParameters(brainMask="off"),
                                       progress=progress, cancel=token)
    assert any(m.startswith("segmenting baseline") for m in messages)
    assert scene.GetNumberOfNodes() == before
    assert not scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems()


def test_segmentation_on_another_grid_and_missing_patient_key_warn(scene, small_pair_files, tmp_path):
    folder = small_pair_files
    empty = sitk.ReadImage(str(folder / "empty.nii.gz"))
    coarse = sitk.Resample(empty, [s // 2 for s in empty.GetSize()], sitk.Transform(), sitk.sitkNearestNeighbor,
                           empty.GetOrigin(), [2 * v for v in empty.GetSpacing()], empty.GetDirection())
    sitk.WriteImage(coarse, str(tmp_path / "coarse.nii.gz"))
    baseline = mrml.loadVolumeNode(folder / "baseline.nii.gz", scene)
    followup = mrml.loadVolumeNode(folder / "followup.nii.gz", scene)
    baseline.SetAttribute("MedAnalysis.PatientKey", "P-1")
    same = mrml.loadSegmentationOrMask(folder / "empty.nii.gz", scene, "Lesion")
    other = mrml.loadSegmentationOrMask(tmp_path / "coarse.nii.gz", scene, "Lesion")
    warnings = MonitoringLogic(scene).monitor(baseline, followup, MonitoringParameters(), same, other).warnings
    assert any("follow-up segmentation (coarse.nii.gz) is on another grid" in w for w in warnings), warnings
    assert not any("baseline segmentation" in w for w in warnings), warnings
    assert any("follow-up carries no patient key" in w for w in warnings), warnings
