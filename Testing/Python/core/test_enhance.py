"""Enhancement: bias field, denoising, normalization, resampling, bad input (core, logic, CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
import os

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.images import smooth_log_field
from helpers.paths import REPO
from MedAnalysisLib import mrml, resources
from MedAnalysisLib.core import enhance, geometry
from MedAnalysisLib.core.enhance import EnhancementParameters
from MedAnalysisLib.core.errors import InputError
from MedAnalysisLib.logic.enhancementlogic import EnhancementLogic


@pytest.fixture(scope="module")
def t1():
    return sitk.ReadImage(str(resources.samplePath("mni152_t1.nii.gz")), sitk.sitkFloat32)


@pytest.fixture(scope="module")
def labels():
    return sitk.ReadImage(str(resources.samplePath("mni152_tissue_labels.nii.gz")))


def test_tissue_bias_field_recovers_smooth_field(t1):
    array = sitk.GetArrayFromImage(t1)
    brain = array > 0
    true_log = smooth_log_field(array.shape, seed=101, mask=brain)
    biased = geometry.image_from_array((array * np.exp(true_log)).astype(np.float32), reference=t1)
    mask = geometry.image_from_array(brain.astype(np.uint8), reference=t1)
    estimated = enhance.tissue_log_bias_field(biased, mask)
    correlation = np.corrcoef(estimated[brain], true_log[brain])[0, 1]
    assert correlation > 0.85, correlation


def test_bias_correction_output_and_field(t1):
    small = sitk.Shrink(t1, [3, 3, 3])
    array = sitk.GetArrayFromImage(small)
    true_log = smooth_log_field(array.shape, seed=5, mask=array > 0)
    biased = geometry.image_from_array((array * np.exp(true_log)).astype(np.float32), reference=small)
    for method in ("tissue", "n4"):
        result = enhance.enhance_image(biased, EnhancementParameters(bias_correct=True, bias_method=method,
                                                                     bias_shrink_factor=2))
        field = sitk.GetArrayFromImage(result.bias_field)
        corrected = sitk.GetArrayFromImage(result.image)
        inside = sitk.GetArrayFromImage(result.mask) > 0
        assert np.allclose(corrected[inside] * field[inside], array[inside] * np.exp(true_log[inside]), rtol=1e-4)
        assert np.corrcoef(np.log(field[inside]), true_log[inside])[0, 1] > 0.7, method


@pytest.fixture(scope="module")
def noisy_crop(t1, labels):
    clean = sitk.RegionOfInterest(t1, [72, 72, 72], [62, 80, 60])
    array = sitk.GetArrayFromImage(clean)
    wm = sitk.GetArrayFromImage(sitk.RegionOfInterest(labels, [72, 72, 72], [62, 80, 60])) == 3
    sigma = 0.05 * array[wm].mean()
    rng = np.random.default_rng(3)
    noisy = np.sqrt((array + rng.normal(0, sigma, array.shape)) ** 2 + rng.normal(0, sigma, array.shape) ** 2)
    return array, geometry.image_from_array(noisy.astype(np.float32), reference=clean)


@pytest.mark.parametrize("method", enhance.DENOISE_METHODS)
def test_denoising_gains_two_db(noisy_crop, method):
    clean, noisy = noisy_crop
    brain = clean > 0
    peak = np.percentile(clean[brain], 99.9)

    def psnr(x):
        return 10 * np.log10(peak ** 2 / np.mean((x[brain] - clean[brain]) ** 2))

    out = sitk.GetArrayFromImage(enhance.denoise(noisy, method, EnhancementParameters()))
    assert psnr(out) - psnr(sitk.GetArrayFromImage(noisy)) >= 2.0


def test_zscore_ignores_voxels_outside_mask(rng):
    array = rng.normal(100, 20, size=(20, 20, 20)).astype(np.float32)
    mask_array = np.zeros_like(array, dtype=np.uint8)
    mask_array[5:15, 5:15, 5:15] = 1
    image = sitk.GetImageFromArray(array)
    mask = sitk.GetImageFromArray(mask_array)
    first = sitk.GetArrayFromImage(enhance.normalize(image, "zscore", mask, EnhancementParameters()))
    changed = array.copy()
    changed[mask_array == 0] = rng.normal(5000, 900, size=int((mask_array == 0).sum()))
    second = sitk.GetArrayFromImage(enhance.normalize(sitk.GetImageFromArray(changed), "zscore", mask,
                                                      EnhancementParameters()))
    inside = mask_array > 0
    assert np.allclose(first[inside], second[inside], atol=1e-5)
    assert abs(first[inside].mean()) < 1e-4 and abs(first[inside].std() - 1) < 1e-3


def test_percentile_scaling_resists_outliers(rng):
    array = rng.normal(100, 20, size=(30, 30, 30)).astype(np.float32)
    mask = sitk.GetImageFromArray(np.ones_like(array, dtype=np.uint8))
    base = sitk.GetArrayFromImage(enhance.normalize(sitk.GetImageFromArray(array), "percentile", mask,
                                                    EnhancementParameters()))
    spiked = array.copy()
    spiked.flat[rng.choice(array.size, 10, replace=False)] = 1e7
    out = sitk.GetArrayFromImage(enhance.normalize(sitk.GetImageFromArray(spiked), "percentile", mask,
                                                   EnhancementParameters()))
    untouched = spiked < 1e6
    assert np.median(np.abs(out[untouched] - base[untouched])) < 0.01
    minmax = sitk.GetArrayFromImage(enhance.normalize(sitk.GetImageFromArray(spiked), "minmax", mask,
                                                      EnhancementParameters()))
    assert minmax[untouched].max() < 1e-3  # what percentile scaling avoids


def test_histogram_matching_brings_histogram_close(t1):
    small = sitk.Shrink(t1, [2, 2, 2])
    array = sitk.GetArrayFromImage(small)
    brain = array > 0
    changed = np.where(brain, 255 * (array / 255.0) ** 1.8 * 0.6 + 30, 0).astype(np.float32)
    moving = geometry.image_from_array(changed, reference=small)
    mask = geometry.image_from_array(brain.astype(np.uint8), reference=small)
    matched = sitk.GetArrayFromImage(enhance.normalize(moving, "histmatch", mask, EnhancementParameters(),
                                                       reference=small))

    def distance(x):  # 1-D Wasserstein distance of brain intensities, in units of the reference's std
        q = np.linspace(1, 99, 99)
        return np.mean(np.abs(np.percentile(x[brain], q) - np.percentile(array[brain], q))) / array[brain].std()

    assert distance(changed) > 0.5
    assert distance(matched) < 0.1


def test_resampling_to_oblique_grid_keeps_world_positions():
    source = sitk.Image([80, 80, 60], sitk.sitkFloat32)
    source.SetSpacing((1.0, 1.0, 1.2))
    source.SetOrigin((-40.0, -40.0, -36.0))
    landmarks_lps = np.array([[-12.3, 7.9, 4.4], [15.2, -9.6, -10.1], [3.3, 18.8, 12.7]])
    array = np.zeros(sitk.GetArrayFromImage(source).shape, np.float32)
    kji = np.stack(np.meshgrid(*[np.arange(n) for n in array.shape], indexing="ij"), -1).reshape(-1, 3)
    points = geometry.physical_points_lps(source, kji[:, ::-1])
    for landmark in landmarks_lps:
        array.reshape(-1)[:] += np.exp(-np.sum((points - landmark) ** 2, axis=1) / (2 * 1.5 ** 2))
    source = geometry.image_from_array(array, reference=source)
    target = sitk.Image([70, 64, 50], sitk.sitkFloat32)
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(0.3, -0.25, 0.4)
    target.SetDirection(rotation.GetMatrix())
    target.SetSpacing((0.9, 1.1, 1.3))
    target.SetOrigin((-20.0, -45.0, -30.0))
    target.SetOrigin(tuple(np.array([0.0, 0.0, 0.0]) - np.array(rotation.GetMatrix()).reshape(3, 3)
                           @ (np.array([70, 64, 50]) * np.array([0.9, 1.1, 1.3]) / 2)))
    out = enhance.resample_like(source, target, "bspline")
    out_array = sitk.GetArrayFromImage(out)
    out_kji = np.stack(np.meshgrid(*[np.arange(n) for n in out_array.shape], indexing="ij"), -1).reshape(-1, 3)
    out_points = geometry.physical_points_lps(out, out_kji[:, ::-1])
    values = out_array.reshape(-1)
    for landmark in landmarks_lps:
        near = np.linalg.norm(out_points - landmark, axis=1) < 5.0
        weights = np.clip(values[near], 0, None)
        centroid = (out_points[near] * weights[:, None]).sum(0) / weights.sum()
        assert np.linalg.norm(centroid - landmark) < 0.1


def test_resample_to_spacing_keeps_extent(t1):
    grid = geometry.grid_for_spacing(t1, (2.0, 2.5, 3.0))
    out = geometry.resample_to_grid(t1, grid)
    corner_old = np.array(t1.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5)))
    corner_new = np.array(out.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5)))
    assert np.allclose(corner_old, corner_new, atol=1e-6)
    with pytest.raises(ValueError):
        geometry.grid_for_spacing(t1, (1.0, 0.0, 1.0))


@pytest.mark.parametrize("case", ["constant", "nan", "empty_mask", "two_d", "bad_spacing"])
def test_bad_input_is_refused(case):
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(50, 5, (10, 10, 10)).astype(np.float32))
    parameters = EnhancementParameters(denoise="gaussian")
    mask = None
    if case == "constant":
        image = sitk.GetImageFromArray(np.full((10, 10, 10), 7, np.float32))
        match = "constant"
    elif case == "nan":
        array = sitk.GetArrayFromImage(image)
        array[1, 2, 3] = np.nan
        image = sitk.GetImageFromArray(array)
        match = "NaN"
    elif case == "empty_mask":
        mask = sitk.GetImageFromArray(np.zeros((10, 10, 10), np.uint8))
        match = "mask is empty"
    elif case == "two_d":
        image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(10, 10)).astype(np.float32))
        match = "2-D image"
    else:
        parameters = EnhancementParameters(spacing_mm=(1.0, -1.0, 1.0))
        match = "positive"
    with pytest.raises(InputError, match=match):
        enhance.enhance_image(image, parameters, mask=mask)


def test_logic_keeps_input_and_sets_provenance_and_window(scene, t1):
    node = mrml.volumeNodeFromImage(sitk.Shrink(t1, [3, 3, 3]), scene, name="T1")
    before = mrml.imageFromVolumeNode(node)
    outputs = EnhancementLogic(scene).enhance(node, EnhancementParameters(preset="ct-soft-tissue"))
    assert np.array_equal(sitk.GetArrayFromImage(mrml.imageFromVolumeNode(node)), sitk.GetArrayFromImage(before))
    assert outputs.outputVolumeNode is not node and outputs.steps == ["denoise"]
    display = outputs.outputVolumeNode.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == (400.0, 40.0)
    record = mrml.getProvenance(outputs.outputVolumeNode)
    assert record["operation"] == "enhance" and record["inputs_sha256"]["T1"]


def test_logic_cancel_leaves_scene_unchanged(scene, t1):
    from MedAnalysisLib.core.errors import OperationCancelled
    from MedAnalysisLib.core.progress import CancelToken

    node = mrml.volumeNodeFromImage(sitk.Shrink(t1, [3, 3, 3]), scene, name="T1")
    count = scene.GetNumberOfNodes()
    token = CancelToken()
    token.cancel()
    with pytest.raises(OperationCancelled):
        EnhancementLogic(scene).enhance(node, EnhancementParameters(denoise="gaussian"), cancel=token)
    assert scene.GetNumberOfNodes() == count


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "MedAnalysisLib.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_enhance_preset_with_bias_field(tmp_path, t1):
    source = tmp_path / "t1_2mm.nii.gz"
    sitk.WriteImage(sitk.Shrink(t1, [2, 2, 2]), str(source))
    out = tmp_path / "out.nii.gz"
    field = tmp_path / "field.nii.gz"
    result = run_cli("enhance", source, "-o", out, "--preset", "mri-brain-t1", "--bias-field-output", field, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["steps"] == ["bias", "denoise", "normalize"]
    assert out.is_file() and field.is_file() and (tmp_path / "out.nii.gz.provenance.json").is_file()
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert array.shape == sitk.GetArrayFromImage(sitk.Shrink(t1, [2, 2, 2])).shape


def test_cli_bad_input_keeps_existing_output(tmp_path):
    constant = tmp_path / "constant.nrrd"
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkFloat32) + 3.0, str(constant))
    out = tmp_path / "existing.nrrd"
    out.write_bytes(b"precious")
    result = run_cli("enhance", constant, "-o", out, "--denoise", "gaussian")
    assert result.returncode == 2
    assert "constant" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == b"precious"
    result = run_cli("enhance", constant, "-o", out, "--spacing", "1,0,1")
    assert result.returncode == 2 and "spacing" in result.stderr and len(result.stderr.strip().splitlines()) == 1
