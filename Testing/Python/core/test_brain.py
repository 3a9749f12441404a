"""Brain extraction (deepbet): mask geometry on any grid, hash check, bad input, use in segmentation."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.images import make_oblique_image
from helpers.paths import REPO
from MedAnalysisLib import mrml
from MedAnalysisLib.core import brain, geometry
from MedAnalysisLib.core.errors import InputError
from MedAnalysisLib.logic.brainlogic import BrainExtractionLogic, BrainExtractionParameters

SAMPLE = REPO / "Resources" / "SampleData"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.logical_and(a, b).sum() / max(int(a.sum()) + int(b.sum()), 1))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "MedAnalysisLib.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO)


@pytest.fixture(scope="module")
def template():
    return sitk.ReadImage(str(SAMPLE / "mni152_t1.nii.gz"))


@pytest.fixture(scope="module")
def reference_brain():
    return sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / "mni152_tissue_labels.nii.gz"))) > 0


@pytest.fixture(scope="module")
def extraction(template):
    """The logic on a real MRML scene: the template and a rotated (20 deg), 1x1x2 mm copy of it."""
    scene = mrml.newScene()
    logic = BrainExtractionLogic(scene)
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(0.349, 0.0, 0.1)
    direction = np.array(rotation.GetMatrix()).reshape(3, 3) @ np.array(template.GetDirection()).reshape(3, 3)
    size, spacing = np.array([197, 233, 95]), np.array([1.0, 1.0, 2.0])
    center = np.array(template.TransformContinuousIndexToPhysicalPoint([s / 2 for s in template.GetSize()]))
    grid = {"size": [int(v) for v in size], "spacing": tuple(spacing), "direction": tuple(direction.ravel()),
            "origin": tuple(center - direction @ (size * spacing / 2))}
    oblique = geometry.resample_to_grid(sitk.Cast(template, sitk.sitkFloat32), grid, sitk.sitkLinear, 0.0)
    nodes = {"straight": mrml.volumeNodeFromImage(template, scene, name="straight"),
             "oblique": mrml.volumeNodeFromImage(oblique, scene, name="oblique")}
    outputs = {name: logic.extractBrain(node, BrainExtractionParameters(device="cpu", maskedVolume=True))
               for name, node in nodes.items()}
    return scene, nodes, outputs


def mask_of(outputs, node):
    return BrainExtractionLogic.maskImage(outputs.segmentationNode, mrml.imageFromVolumeNode(node))


def test_template_mask_matches_its_brain_region(extraction, reference_brain):
    scene, nodes, outputs = extraction
    mask = sitk.GetArrayFromImage(mask_of(outputs["straight"], nodes["straight"])) > 0
    assert dice(mask, reference_brain) >= 0.97
    assert outputs["straight"].volumeMl == pytest.approx(mask.sum() / 1000.0, rel=1e-6)


def test_oblique_anisotropic_input_gets_the_same_mask_on_its_own_grid(extraction, template):
    scene, nodes, outputs = extraction
    oblique_image = mrml.imageFromVolumeNode(nodes["oblique"])
    oblique_mask = mask_of(outputs["oblique"], nodes["oblique"])
    assert geometry.same_grid(oblique_mask, oblique_image, 1e-4)
    straight = sitk.GetArrayFromImage(mask_of(outputs["straight"], nodes["straight"])) > 0
    back = sitk.Resample(oblique_mask, template, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    assert dice(sitk.GetArrayFromImage(back) > 0, straight) >= 0.97


def test_segment_node_masked_volume_and_provenance(extraction):
    scene, nodes, outputs = extraction
    out = outputs["straight"]
    segmentation = out.segmentationNode.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    assert segmentation.GetNthSegment(0).GetName() == "Brain"
    assert mrml.segmentSpecs(out.segmentationNode)[0].type == ("SCT", "12738006", "Brain")
    record = mrml.getProvenance(out.segmentationNode)
    assert record["operation"] == "brain-mask" and record["network"]["sha256"] == brain.DEEPBET_SHA256
    masked = slicer_array(out.maskedVolumeNode)
    mask = sitk.GetArrayFromImage(mask_of(out, nodes["straight"])) > 0
    original = slicer_array(nodes["straight"])
    assert np.array_equal(masked[mask], original[mask]) and np.all(masked[~mask] == original.min())


def slicer_array(node):
    import slicer

    return slicer.util.arrayFromVolume(node).copy()


def test_model_files_with_another_hash_are_refused(tmp_path):
    source = brain.deepbet_model_dir()
    for name in brain.DEEPBET_SHA256:
        shutil.copy(source / name, tmp_path / name)
    assert set(brain.verify_model_files(tmp_path)) == set(brain.DEEPBET_SHA256)
    with open(tmp_path / "model.pt", "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(brain.BrainModelError, match="SHA-256 mismatch"):
        brain.BrainExtractor("cpu", model_dir=tmp_path)
    shutil.copy(source / "model.pt", tmp_path / "model.pt")
    (tmp_path / "bbox_model.pt").unlink()
    with pytest.raises(brain.BrainModelError, match="missing"):
        brain.verify_model_files(tmp_path)


def bad_inputs(folder):
    rng = np.random.default_rng(5)
    head = rng.normal(100, 10, (60, 60, 60)).astype(np.float32)
    cases = {}
    cases["flat2d"] = sitk.GetImageFromArray(head[30])
    four = sitk.JoinSeries([sitk.GetImageFromArray(head)] * 2)
    cases["series4d"] = four
    nan = head.copy()
    nan[10, 10, 10] = np.nan
    cases["nan"] = sitk.GetImageFromArray(nan)
    cases["constant"] = sitk.GetImageFromArray(np.full((60, 60, 60), 7.0, np.float32))
    cases["tiny"] = sitk.GetImageFromArray(head[:10, :10, :10])
    paths = {}
    for name, image in cases.items():
        paths[name] = folder / f"{name}.nrrd"  # NRRD keeps NaN (ITK's NIfTI reader turns it into 0)
        sitk.WriteImage(image, str(paths[name]))
    return paths


def test_cli_bad_inputs_exit_2_with_one_line_and_keep_existing_outputs(tmp_path):
    output = tmp_path / "mask.nii.gz"
    output.write_bytes(b"previous result")
    for name, path in bad_inputs(tmp_path).items():
        result = run_cli("brain-mask", path, "-o", output)
        assert result.returncode == 2, (name, result.stderr)
        lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("[")]
        assert len(lines) == 1 and path.name in lines[0] and "Traceback" not in result.stderr, (name, result.stderr)
        assert output.read_bytes() == b"previous result", name


def test_cli_refuses_to_replace_its_input(tmp_path):
    source = tmp_path / "head.nii.gz"
    shutil.copy(SAMPLE / "mni152_t1.nii.gz", source)
    before = source.read_bytes()
    result = run_cli("brain-mask", source, "-o", tmp_path / "." / "head.nii.gz")
    assert result.returncode == 2 and "would replace the input" in result.stderr
    assert source.read_bytes() == before


def test_bad_parameters_are_refused():
    with pytest.raises(InputError, match="threshold"):
        BrainExtractionParameters(threshold=1.5).validate()
    with pytest.raises(InputError, match="device"):
        BrainExtractionParameters(device="tpu").validate()


def test_segmentation_stays_inside_a_given_brain_mask(scene, rng, tmp_path):
    """A brain mask given to the segmentation logic: no label outside it, the rest unchanged in kind."""
    from helpers.tiny_model import tiny_config  # the tiny random network of the segmentation tests
    from MedAnalysisLib.core.segment import netconfig
    from MedAnalysisLib.logic.segmentationlogic import SegmentationLogic, SegmentationParameters
    import json
    import torch
    from safetensors.torch import save_file

    array = rng.normal(0, 5, size=(40, 48, 48)).astype(np.float32)
    array[5:35, 6:42, 8:40] += 100
    image = make_oblique_image(array, spacing=(1.5, 1.2, 2.0))
    mask_array = np.zeros(array.shape, np.uint8)
    mask_array[10:30, 12:36, 14:34] = 1
    mask = geometry.image_from_array(mask_array, reference=image)
    config = tiny_config()
    torch.manual_seed(0)
    network = netconfig.build_network(config)
    weights = tmp_path / "tiny_brain_test.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(weights))
    weights.with_suffix(".json").write_text(json.dumps(config))
    try:
        volume = mrml.volumeNodeFromImage(image, scene, name="head")
        maskNode = mrml.volumeNodeFromImage(mask, scene, name="brain", labelmap=True)
        parameters = SegmentationParameters(model=str(weights), device="cpu", threads=1, lesionMinMl=0.0)
        out = SegmentationLogic(scene).segment(volume, parameters, brainMaskNode=maskNode)
        labels = sitk.GetArrayFromImage(mrml.labelmapFromSegmentationNode(out.segmentationNode, referenceImage=image))
        assert labels[mask_array == 0].max() == 0
        assert labels[mask_array == 1].max() > 0
        empty = mrml.volumeNodeFromImage(geometry.image_from_array(np.zeros_like(mask_array), reference=image),
                                         scene, name="empty", labelmap=True)
        with pytest.raises(InputError, match="empty"):
            SegmentationLogic(scene).segment(volume, parameters, brainMaskNode=empty)
    finally:
        weights.unlink()
        weights.with_suffix(".json").unlink()


def test_batch_brain_mask_step_writes_the_mask_artifact(tmp_path, template, reference_brain):
    from MedAnalysisLib import batch

    assert "brain-mask" in batch.resolveSteps(None, batch.STEPS)
    source = str(SAMPLE / "mni152_t1.nii.gz")
    case = batch.CaseSpec(caseId="c1", input=source, followup=None, parameters={}, row=2)
    result = batch.brainMaskStep(case, {"image": source}, {"device": "cpu"}, tmp_path)
    mask = sitk.ReadImage(result["outputs"]["brain_mask"])
    assert geometry.same_grid(mask, template, 1e-4)
    assert dice(sitk.GetArrayFromImage(mask) > 0, reference_brain) >= 0.97
    assert result["metrics"]["brain_volume_ml"] == pytest.approx((sitk.GetArrayFromImage(mask) > 0).sum() / 1000, 0.01)
    with pytest.raises(InputError, match="device"):
        batch.brainMaskStep(case, {"image": source}, {"device": "gpu0"}, tmp_path)
