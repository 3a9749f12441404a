"""Segmentation engine, safe model loading, logic and CLI (tiny random model: fast, no training)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers.images import make_oblique_image
from helpers.paths import REPO
from helpers.tiny_model import tiny_config
from MedAnalysisLib import mrml
from MedAnalysisLib.core import geometry
from MedAnalysisLib.core.errors import InputError
from MedAnalysisLib.core.segment import models, netconfig
from MedAnalysisLib.core.segment.engine import segment_image
from MedAnalysisLib.core.segment.parameters import SegmentationParameters
from MedAnalysisLib.logic.segmentationlogic import SegmentationLogic, SegmentationParameters


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("model")
    config = tiny_config()
    torch.manual_seed(0)
    network = netconfig.build_network(config)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(folder / "tiny.safetensors"))
    (folder / "tiny.json").write_text(json.dumps(config))
    return folder / "tiny.safetensors"


@pytest.fixture
def head_image(rng):
    array = rng.normal(0, 5, size=(30, 36, 40)).astype(np.float32)
    array[5:25, 6:30, 8:32] += 100
    array[10:20, 12:24, 14:26] += 60
    return make_oblique_image(array, spacing=(1.5, 1.2, 2.0))


def test_labels_come_back_on_input_grid(tiny_model, head_image):
    loaded = models.load_model(str(tiny_model), REPO / "Resources" / "Models")
    result = segment_image(head_image, loaded.network, loaded.config,
                           SegmentationParameters(device="cpu", threads=1, refine=False))
    assert geometry.same_grid(result.labels, head_image, 1e-6)
    labels = sitk.GetArrayFromImage(result.labels)
    assert labels.dtype == np.uint8 and labels.max() <= 4


def test_single_pass_equals_plain_monai_and_slabs_stay_close(tiny_model, head_image):
    from monai.inferers import sliding_window_inference

    from MedAnalysisLib.core.segment.engine import preprocess

    loaded = models.load_model(str(tiny_model), REPO / "Resources" / "Models")
    # plain MONAI on the whole preprocessed volume, labels brought back the same way
    model_grid, array = preprocess(head_image, loaded.config)
    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(array)[None, None], roi_size=[32, 32, 32],
                                          sw_batch_size=1, predictor=loaded.network, overlap=0.25, mode="gaussian")
    plain = logits.argmax(1)[0].numpy().astype(np.uint8)
    ours = segment_image(head_image, loaded.network, loaded.config,
                         SegmentationParameters(device="cpu", lesionMinMl=0, refine=False))
    plain_image = geometry.set_geometry(geometry.image_from_array(plain), model_grid["origin"], model_grid["spacing"],
                                        model_grid["direction"])
    plain_on_input = geometry.resample_to_grid(plain_image, geometry.grid_of(head_image), sitk.sitkNearestNeighbor)
    assert np.mean(sitk.GetArrayFromImage(plain_on_input) == sitk.GetArrayFromImage(ours.labels)) > 0.97
    # slabs (memory-bounded mode) see other windows; instance norm makes a random net sensitive to that
    thin = segment_image(head_image, loaded.network, loaded.config,
                         SegmentationParameters(device="cpu", slabVoxels=32, refine=False))
    agreement = np.mean(sitk.GetArrayFromImage(thin.labels) == sitk.GetArrayFromImage(ours.labels))
    assert agreement > 0.9


def test_volume_smaller_than_patch_is_padded(tiny_model):
    small = sitk.GetImageFromArray(np.random.default_rng(1).normal(50, 10, (12, 14, 10)).astype(np.float32))
    loaded = models.load_model(str(tiny_model), REPO / "Resources" / "Models")
    result = segment_image(small, loaded.network, loaded.config)
    assert result.labels.GetSize() == small.GetSize()


def test_probabilities_sum_to_one(tiny_model, head_image):
    loaded = models.load_model(str(tiny_model), REPO / "Resources" / "Models")
    result = segment_image(head_image, loaded.network, loaded.config, SegmentationParameters(probabilities=True,
                                                                                      tta=True, refine=False))
    probabilities = sitk.GetArrayFromImage(result.probabilities)
    assert probabilities.shape[-1] == 5
    assert np.allclose(probabilities.sum(-1), 1.0, atol=1e-4)


@pytest.mark.parametrize("case", ["two_d", "four_d", "nan", "channels"])
def test_bad_input(tiny_model, case):
    loaded = models.load_model(str(tiny_model), REPO / "Resources" / "Models")
    if case == "two_d":
        image, match = sitk.GetImageFromArray(np.ones((10, 10), np.float32)), "2-D"
    elif case == "four_d":
        image, match = sitk.Image([5, 5, 5, 2], sitk.sitkFloat32), "4-D"
    elif case == "nan":
        array = np.ones((10, 10, 10), np.float32)
        array[1, 1, 1] = np.nan
        image, match = sitk.GetImageFromArray(array), "NaN"
    else:
        image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(10, 10, 10, 2)).astype(np.float32),
                                       isVector=True)
        match = "expects 1"
    with pytest.raises(InputError, match=match):
        segment_image(image, loaded.network, loaded.config)


class CodeRunningPayload:
    """Unpickling this object would create a marker file (stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pt"
    torch.save({"weight": CodeRunningPayload(str(marker))}, str(path))
    (tmp_path / "evil.json").write_text(json.dumps(tiny_config()))
    with pytest.raises(InputError, match="refused"):
        models.load_model(str(path), REPO / "Resources" / "Models")
    assert not marker.exists()


def test_config_class_outside_allow_list_is_refused(tmp_path, tiny_model):
    config = tiny_config()
    config["network"]["class"] = "torch.nn.Module"
    path = tmp_path / "model.safetensors"
    path.write_bytes(tiny_model.read_bytes())
    (tmp_path / "model.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="not allowed"):
        models.load_model(str(path), REPO / "Resources" / "Models")


@pytest.mark.parametrize("case", ["deep", "huge_text", "many_values", "too_many_parameters"])
def test_model_configs_are_bounded_before_a_network_is_built(tmp_path, tiny_model, case):
    path = tmp_path / "model.safetensors"
    path.write_bytes(tiny_model.read_bytes())
    config = tiny_config()
    if case == "deep":
        text = json.dumps(config)[:-1] + ', "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
    elif case == "huge_text":
        text = json.dumps({**config, "padding": "x" * (2 << 20)})
    elif case == "many_values":
        config["network"]["args"]["dropout"] = [0.0] * 20_000
        text = json.dumps(config)
    else:
        config["network"]["args"].update(channels=[4096, 8192, 16384], strides=[2, 2])
        text = json.dumps(config)
    (tmp_path / "model.json").write_text(text)
    with pytest.raises(InputError, match="network config") as caught:
        models.load_model(str(path), REPO / "Resources" / "Models")
    assert "\n" not in str(caught.value)


def test_wrong_catalog_hash_is_refused(tmp_path, tiny_model):
    (tmp_path / "w.safetensors").write_bytes(tiny_model.read_bytes())
    (tmp_path / "c.json").write_text(json.dumps(tiny_config()))
    (tmp_path / "catalog.json").write_text(json.dumps({"models": [{"name": "m", "weights": "w.safetensors",
                                                                   "config": "c.json", "sha256": "0" * 64}]}))
    with pytest.raises(InputError, match="SHA-256 mismatch"):
        models.load_model("m", tmp_path)
    assert models.verify_catalog(tmp_path)[0]["ok"] is False


def test_torchscript_needs_trusted(tmp_path, tiny_model):
    network = netconfig.build_network(tiny_config()).eval()
    scripted = torch.jit.trace(network, torch.zeros(1, 1, 32, 32, 32))
    path = tmp_path / "scripted.pt"
    scripted.save(str(path))
    (tmp_path / "scripted.json").write_text(json.dumps(tiny_config()))
    with pytest.raises(InputError, match="--trusted"):
        models.load_model(str(path), REPO / "Resources" / "Models")
    assert models.load_model(str(path), REPO / "Resources" / "Models", trusted=True).network is not None


def test_channel_mismatch_between_weights_and_config(tmp_path, tiny_model):
    config = tiny_config()
    config["network"]["args"]["in_channels"] = 2
    path = tmp_path / "m.safetensors"
    path.write_bytes(tiny_model.read_bytes())
    (tmp_path / "m.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="do not fit"):
        models.load_model(str(path), REPO / "Resources" / "Models")


def test_logic_creates_named_segments_with_provenance(scene, tiny_model, head_image):
    node = mrml.volumeNodeFromImage(head_image, scene, name="head")
    outputs = SegmentationLogic(scene).segment(node, SegmentationParameters(model=str(tiny_model), threads=1))
    names = [s.name for s in mrml.segmentSpecs(outputs.segmentationNode)]
    assert set(names) <= {"Cerebrospinal fluid", "Gray matter", "White matter", "Lesion"}
    record = mrml.getProvenance(outputs.segmentationNode)
    assert record["model_sha256"] == models.file_sha256(tiny_model)


def test_cli_segment_to_seg_nrrd(tmp_path, tiny_model, head_image):
    source = tmp_path / "head.nrrd"
    sitk.WriteImage(head_image, str(source))
    out = tmp_path / "seg.seg.nrrd"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "MedAnalysisLib.cli", "segment", str(source), "-o", str(out),
                             "--model", str(tiny_model), "--device", "cpu", "--json"], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["device"] == "cpu" and out.is_file()
    bad = subprocess.run([sys.executable, "-m", "MedAnalysisLib.cli", "segment", str(source), "-o", str(out),
                          "--model", str(tmp_path / "missing.safetensors")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and out.is_file()


def _run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_lean_monai_import_hides_optional_packages_only_while_importing():
    out = _run_python(
        "import importlib.util, json, sys\n"
        "from MedAnalysisLib.lean_monai import import_monai\n"
        "monai = import_monai()\n"
        "from monai.inferers import sliding_window_inference\n"
        "from monai.networks.nets import UNet\n"
        "import torch\n"
        "net = UNet(3, 1, 2, (4, 8), (2,))\n"
        "y = sliding_window_inference(torch.zeros(1, 1, 20, 20, 20), (16, 16, 16), 1, net)\n"
        "loaded = [m for m in ('matplotlib', 'pandas', 'skimage', 'scipy.signal') if m in sys.modules]\n"
        "later = importlib.util.find_spec('scipy.signal') is not None\n"
        "import scipy.signal\n"
        "print(json.dumps({'shape': list(y.shape), 'loaded': loaded, 'later': later}))\n")
    result = json.loads(out.splitlines()[-1])
    assert result == {"shape": [1, 2, 20, 20, 20], "loaded": [], "later": True}


def test_lean_monai_import_falls_back_to_a_plain_import():
    out = _run_python(
        "import sys\n"
        "from MedAnalysisLib import lean_monai\n"
        "import torch\n"
        "lean_monai.HIDDEN_DURING_IMPORT = lean_monai.HIDDEN_DURING_IMPORT + ('monai.networks.nets',)\n"
        "monai = lean_monai.import_monai()\n"
        "from monai.networks.nets import UNet\n"
        "print(UNet.__name__)\n")
    assert out.splitlines()[-1] == "UNet"


def test_lesions_must_touch_white_matter():
    from MedAnalysisLib.core.segment.engine import postprocess_lesions

    labels = np.zeros((40, 40, 40), np.uint8)
    labels[5:25, 5:25, 5:25] = 3            # white matter
    labels[30:38, 30:38, 30:38] = 2         # grey matter
    labels[10:14, 10:14, 10:14] = 4         # lesion inside white matter: kept
    labels[32:35, 32:35, 32:35] = 4         # lesion inside grey matter: becomes grey matter
    labels[0:3, 35:38, 0:3] = 4             # lesion in the background: becomes background
    config = {"labels": [{"value": v, "name": n} for v, n in
                         enumerate(["background", "cerebrospinal fluid", "gray matter", "white matter", "lesion"])]}
    out = postprocess_lesions(labels, config, (1.0, 1.0, 1.0), 0.0)
    assert (out[10:14, 10:14, 10:14] == 4).all()
    assert (out[32:35, 32:35, 32:35] == 2).all()
    assert (out[0:3, 35:38, 0:3] == 0).all()
    assert (out == 4).sum() == 64
    # small lesions go first; a model without a white-matter label keeps hosted-or-not lesions
    assert (postprocess_lesions(labels, config, (1.0, 1.0, 1.0), 0.1) == 4).sum() == 0
    no_wm = {"labels": [{"value": 4, "name": "lesion"}]}
    assert (postprocess_lesions(labels, no_wm, (1.0, 1.0, 1.0), 0.0) == 4).sum() == 64 + 27 + 27


def test_lesion_threshold_moves_voxels_between_lesion_and_the_best_other_class():
    from MedAnalysisLib.core.segment.engine import SlidingWindowSegmenter

    config = {"labels": [{"value": v, "name": n} for v, n in
                         enumerate(["background", "cerebrospinal fluid", "gray matter", "white matter", "lesion"])],
              "inference": {"roi_size": [8, 8, 8]}, "network": {"args": {"out_channels": 5}}}
    probabilities = torch.tensor([[0.1, 0.1, 0.2, 0.25, 0.35],    # lesion by argmax, below 0.5
                                  [0.05, 0.05, 0.1, 0.2, 0.6],    # lesion either way
                                  [0.1, 0.1, 0.1, 0.4, 0.3],      # white matter by argmax, lesion at 0.3
                                  [0.7, 0.1, 0.1, 0.05, 0.05]]).T  # background
    segmenter = SlidingWindowSegmenter(torch.nn.Identity(), config, SegmentationParameters(device="cpu", refine=False))
    assert segmenter._decide(probabilities)[0].tolist() == [4, 4, 3, 0]
    segmenter.settings = SegmentationParameters(device="cpu", lesionThreshold=0.5, refine=False)
    assert segmenter._decide(probabilities)[0].tolist() == [3, 4, 3, 0]
    segmenter.settings = SegmentationParameters(device="cpu", lesionThreshold=0.3, refine=False)
    assert segmenter._decide(probabilities)[0].tolist() == [4, 4, 4, 0]
    config["inference"]["lesion_threshold"] = 0.5  # the model's default applies when the settings have none
    segmenter.settings = SegmentationParameters(device="cpu", refine=False)
    assert segmenter._decide(probabilities)[0].tolist() == [3, 4, 3, 0]


def test_lesion_peak_rule_drops_components_the_network_is_nowhere_sure_of():
    from MedAnalysisLib.core.segment.engine import lesion_min_peak, postprocess_lesions

    labels = np.zeros((30, 30, 30), np.uint8)
    labels[2:28, 2:28, 2:28] = 3                 # white matter
    labels[5:9, 5:9, 5:9] = 4                    # sure somewhere (one voxel at 0.95): kept whole
    labels[15:19, 15:19, 15:19] = 4              # nowhere above 0.7: becomes white matter
    confidence = np.zeros(labels.shape, np.uint8)
    confidence[5:9, 5:9, 5:9] = round(0.6 * 255)
    confidence[6, 6, 6] = round(0.95 * 255)
    confidence[15:19, 15:19, 15:19] = round(0.7 * 255)
    config = {"labels": [{"value": v, "name": n} for v, n in
                         enumerate(["background", "cerebrospinal fluid", "gray matter", "white matter", "lesion"])],
              "inference": {"lesion_min_peak": 0.9}}
    peak = lesion_min_peak(config)
    assert peak == 0.9 and lesion_min_peak(config, 0.5) == 0.5 and lesion_min_peak({}) is None
    out = postprocess_lesions(labels, config, (1.0, 1.0, 1.0), 0.0, confidence, peak)
    assert (out[5:9, 5:9, 5:9] == 4).all()
    assert (out[15:19, 15:19, 15:19] == 3).all()
    # at 0.7 both stay; without the confidence map the rule does not apply
    assert (postprocess_lesions(labels, config, (1.0, 1.0, 1.0), 0.0, confidence, 0.7) == 4).sum() == 128
    assert (postprocess_lesions(labels, config, (1.0, 1.0, 1.0), 0.0) == 4).sum() == 128


def test_segmenter_keeps_lesion_confidence_only_when_a_peak_rule_applies():
    from MedAnalysisLib.core.segment.engine import SlidingWindowSegmenter
    from MedAnalysisLib.core.progress import ProgressReporter

    config = {"labels": [{"value": v, "name": n} for v, n in
                         enumerate(["background", "cerebrospinal fluid", "gray matter", "white matter", "lesion"])],
              "inference": {"roi_size": [8, 8, 8]}, "network": {"args": {"out_channels": 5}}}

    class Lesion(torch.nn.Module):  # logits: lesion where the intensity is high, background elsewhere
        def forward(self, x):
            return torch.cat([1 - x, 0 * x, 0 * x, 0 * x, 3 * x], dim=1) * 4

    array = np.zeros((12, 12, 12), np.float32)
    array[4:8, 4:8, 4:8] = 1.0
    plain = SlidingWindowSegmenter(Lesion(), config, SegmentationParameters(device="cpu", refine=False))
    labels, _, confidence = plain.segment(array, ProgressReporter())
    assert confidence is None and (labels == 4).sum() == 64
    ruled = SlidingWindowSegmenter(Lesion(), config, SegmentationParameters(device="cpu", refine=False, lesionPeak=0.9))
    labels, _, confidence = ruled.segment(array, ProgressReporter())
    assert confidence.dtype == np.uint8 and confidence.shape == labels.shape
    assert (confidence[labels == 4] > 250).all() and (confidence[labels != 4] == 0).all()
    ruled.settings.slabVoxels = 4  # slab by slab: the same map
    assert np.array_equal(ruled.segment(array, ProgressReporter()).lesion_confidence, confidence)


def test_grey_matter_enclosed_by_white_matter_becomes_lesion():
    from MedAnalysisLib.core.segment.engine import postprocess_lesions

    labels = np.zeros((40, 40, 40), np.uint8)
    labels[2:38, 2:38, 2:30] = 3                 # white matter
    labels[30:38, 2:38, 2:30] = 2                # cortex-like grey matter along one side
    labels[2:38, 2:38, 30:34] = 1                # CSF beyond
    labels[10:14, 10:14, 10:14] = 2              # grey island inside white matter (64 voxels): lesion
    labels[20:23, 20:23, 27:30] = 2              # grey blob touching CSF: stays grey matter
    labels[6:8, 6:8, 6:8] = 2                    # 8 voxels: under the minimum size, stays
    config = {"labels": [{"value": v, "name": n} for v, n in
                         enumerate(["background", "cerebrospinal fluid", "gray matter", "white matter", "lesion"])]}
    out = postprocess_lesions(labels, config, (1.0, 1.0, 1.0), 0.02, islands=True)
    assert (out[10:14, 10:14, 10:14] == 4).all()
    assert (out[20:23, 20:23, 27:30] == 2).all() and (out[30:38, 2:38, 2:30] == 2).all()
    assert (out == 4).sum() == 64
    assert (postprocess_lesions(labels, config, (1.0, 1.0, 1.0), 0.02) == 4).sum() == 0  # off by default here
    # a large enclosed grey structure (over 3 mL, like putamen with pallidum) is left alone
    big = labels.copy()
    big[8:24, 8:24, 8:24] = 2
    assert (postprocess_lesions(big, config, (1.0, 1.0, 1.0), 0.02, islands=True) == 4).sum() == 0
