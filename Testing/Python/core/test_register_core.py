"""Registration core: presets, B-spline grid algebra, accuracy on known-transform cases, bad inputs.

Fast tests use the cases at 2 mm; the full-resolution (1 mm) accuracy runs are marked slow.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from MedAnalysisLib.core import geometry
from MedAnalysisLib.core import register as reg
from MedAnalysisLib.core.errors import InputError, OperationCancelled
from MedAnalysisLib.core.progress import CancelToken, ProgressReporter
from helpers.registration_cases import make_case

TRE_LIMITS = {"rigid": 0.3, "affine": 0.5, "deformable": 1.0, "multimodal": 0.5}
PRESET_OF = {"rigid": "rigid", "affine": "affine", "deformable": "bspline", "multimodal": "rigid"}


@pytest.fixture(scope="module")
def results_2mm():
    """One registration per case at 2 mm, shared by the tests of this module."""
    results = {}

    def get(name):
        if name not in results:
            case = make_case(name, 2.0)
            parameters = reg.RegistrationParameters(preset=PRESET_OF[name], threads=2)
            results[name] = (case, reg.register_images(case.fixed, case.moving, parameters))
        return results[name]

    return get


# --- presets ------------------------------------------------------------------------------------

def test_every_preset_resolves_with_mattes_mi_default():
    for name in reg.PRESETS:
        stages = reg.RegistrationParameters(preset=name).stages()
        assert stages and all(stage["metric"] == "mi" for stage in stages)
        assert all(len(stage["samples"]) == len(stage["shrink_factors"]) for stage in stages)
    chain = [s["transform"] for s in reg.RegistrationParameters(preset="rigid+affine+bspline").stages()]
    assert chain == ["rigid", "affine", "bspline"]
    assert [s["transform"] for s in reg.RegistrationParameters(preset="bspline").stages()] == ["affine", "bspline"]


def test_metric_and_overrides_apply_to_stages():
    parameters = reg.RegistrationParameters(preset="bspline", metric="ncc", overrides={
        "bspline": {"grid_spacing_mm": 15.0, "optimizer": {"history": 5}}, "all": {"histogram_bins": 48}})
    affine, bspline = parameters.stages()
    assert affine["metric"] == bspline["metric"] == "ncc"
    assert bspline["grid_spacing_mm"] == 15.0 and affine.get("grid_spacing_mm") is None
    assert bspline["optimizer"] == {"name": "lbfgs", "history": 5, "tolerance_change": 1e-7}
    assert affine["histogram_bins"] == bspline["histogram_bins"] == 48


def test_preset_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"description": "two-level rigid", "stages": [
        {"transform": "rigid", "shrink_factors": [2, 1], "smoothing_sigmas_mm": [1, 0], "samples": 3000,
         "iterations": [50, 20]}]}))
    (stage,) = reg.RegistrationParameters(preset=str(path)).stages()
    assert stage["samples"] == [3000, 3000] and stage["iterations"] == [50, 20]


@pytest.mark.parametrize("parameters,message", [
    (dict(preset="nonsense"), "unknown preset"),
    (dict(metric="cc"), "unknown metric"),
    (dict(overrides={"rigid": {"samples": [1000, 1000]}}), "2 values for 3 pyramid levels"),
    (dict(overrides={"rigid": {"colour": 1}}), "unknown stage key"),
    (dict(overrides={"warp": {}}), "unknown stage type"),
    (dict(preset="bspline", overrides={"bspline": {"grid_schedule": [4, 3, 1]}}), "power of two"),
])
def test_bad_presets_are_input_errors(parameters, message):
    with pytest.raises(InputError, match=message):
        reg.RegistrationParameters(**parameters).stages()


# --- B-spline algebra ---------------------------------------------------------------------------

def test_bspline_refinement_is_exact():
    """Knot insertion keeps the displacement field: checked with SimpleITK at 2,000 points."""
    image = sitk.Image([40, 50, 30], sitk.sitkFloat32)
    image.SetSpacing((1.2, 0.9, 2.0))
    image.SetOrigin((30.0, -20.0, 10.0))
    rotation = sitk.Euler3DTransform((0, 0, 0), 0.2, -0.1, 0.3)
    image.SetDirection(rotation.GetMatrix())
    coarse = reg.bspline_grid(image, [2, 3, 2])
    rng = np.random.default_rng(1)
    coefficients = rng.normal(0, 3.0, size=(3, 5, 6, 5))
    coarse.SetParameters(coefficients.ravel().tolist())
    fine = reg.bspline_grid(image, [4, 6, 4])
    fine.SetParameters(reg.refine_bspline_coefficients(coefficients).ravel().tolist())
    index = rng.uniform(-0.49, np.array(image.GetSize()) - 0.51, size=(2000, 3))
    points = [image.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in index]
    difference = max(np.linalg.norm(np.subtract(coarse.TransformPoint(p), fine.TransformPoint(p))) for p in points)
    assert difference < 1e-9
    moved = max(np.linalg.norm(np.subtract(coarse.TransformPoint(p), p)) for p in points)
    assert moved > 1.0  # the field is not trivially zero


# --- accuracy (2 mm) ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["rigid", "affine", "multimodal", "deformable"])
def test_known_transform_tre_2mm(results_2mm, name):
    case, result = results_2mm(name)
    tre = case.tre_summary(result.transform)
    print(f"{name} 2 mm: TRE {tre}, initial {case.initial_tre_summary()}, {result.seconds:.1f} s")
    assert tre["mean_mm"] <= TRE_LIMITS[name], tre
    assert tre["max_mm"] <= 4 * TRE_LIMITS[name], tre
    assert result.final_metric < result.initial_metric
    summary = result.summary()
    assert summary["iterations"] > 0 and summary["stages"][-1]["levels"][-1]["iterations"] > 0
    assert summary["transform_type"] == ("deformable" if name == "deformable" else "linear")


def test_linear_levels_in_pytorch():
    """The lbfgs optimizer runs linear levels in PyTorch (random continuous sample positions)."""
    case = make_case("affine", 2.0)
    parameters = reg.RegistrationParameters(preset="affine", threads=2, overrides={"affine": {
        "optimizer": [{"name": "conjugate_gradient"}, {"name": "lbfgs"}, {"name": "lbfgs"}],
        "samples": [5000, 20000, 40000], "iterations": [100, 20, 20]}})
    result = reg.register_images(case.fixed, case.moving, parameters)
    assert case.tre_summary(result.transform)["mean_mm"] <= TRE_LIMITS["affine"]
    engines = [level["engine"] for level in result.stages[0]["levels"]]
    assert engines == ["simpleitk", "pytorch", "pytorch"]
    rigid_case = make_case("rigid", 2.0)
    optimizers = [{"name": "conjugate_gradient"}, {"name": "lbfgs"}, {"name": "lbfgs"}]
    rigid = reg.register_images(rigid_case.fixed, rigid_case.moving, reg.RegistrationParameters(
        threads=2, overrides={"rigid": {"optimizer": optimizers}}))
    matrix = geometry.linear_matrix_lps(rigid.transform)[:3, :3]
    assert np.allclose(matrix @ matrix.T, np.eye(3), atol=1e-9)  # still a rotation
    assert rigid_case.tre_summary(rigid.transform)["mean_mm"] <= TRE_LIMITS["rigid"]


def test_deformable_result_is_affine_then_bspline(results_2mm):
    case, result = results_2mm("deformable")
    assert isinstance(result.transform, sitk.CompositeTransform)
    composite = result.transform
    assert composite.GetNumberOfTransforms() == 2
    assert "Affine" in composite.GetNthTransform(0).GetName() and "BSpline" in composite.GetNthTransform(1).GetName()


def test_chain_rigid_affine_bspline():
    """The chain collapses its linear stages into one affine in front of the B-spline."""
    case = make_case("deformable", 2.0)
    quick = {"bspline": {"shrink_factors": [4, 2], "smoothing_sigmas_mm": [1.0, 0.5], "samples": [15000, 30000],
                         "iterations": [30, 20], "grid_schedule": [2, 1]}}
    parameters = reg.RegistrationParameters(preset="rigid+affine+bspline", threads=2, overrides=quick)
    result = reg.register_images(case.fixed, case.moving, parameters)
    assert [stage["transform"] for stage in result.stages] == ["rigid", "affine", "bspline"]
    assert result.transform.GetNumberOfTransforms() == 2
    assert case.tre_summary(result.transform)["mean_mm"] <= TRE_LIMITS["deformable"]


def test_transform_files_round_trip(results_2mm, tmp_path):
    for name, suffix in (("rigid", ".tfm"), ("deformable", ".h5")):
        case, result = results_2mm(name)
        path = reg.write_transform(result.transform, tmp_path / f"{name}{suffix}", provenance={"x": 1})
        read = sitk.ReadTransform(str(path))
        points = case.points_moving_lps[:200]
        assert np.abs(reg.transform_points(read, points) - reg.transform_points(result.transform, points)).max() < 1e-6
        assert (tmp_path / f"{name}{suffix}.provenance.json").exists()
    with pytest.raises(InputError, match="unsupported transform extension"):
        reg.write_transform(sitk.Euler3DTransform(), tmp_path / "t.nii.gz")


def test_masks_and_dice(results_2mm):
    case = make_case("rigid", 2.0)
    parameters = reg.RegistrationParameters(preset="rigid", threads=2)
    result = reg.register_images(case.fixed, case.moving, parameters, case.fixed_mask, case.moving_mask)
    assert case.tre_summary(result.transform)["mean_mm"] <= TRE_LIMITS["rigid"]
    assert result.mask_dice > 0.97 and result.mask_dice > result.mask_dice_initial + 0.05


def test_landmark_initialization():
    case = make_case("rigid", 2.0)
    true_fixed_to_moving = case.moving_to_fixed.GetInverse()
    fixed_points = np.array([[30.0, 20.0, 10.0], [-35.0, 25.0, 5.0], [0.0, -40.0, 20.0], [5.0, 10.0, -30.0]])
    moving_points = reg.transform_points(true_fixed_to_moving, fixed_points)
    start = reg.landmark_transform(fixed_points.tolist(), moving_points.tolist())
    assert case.tre_summary(start)["max_mm"] < 1e-6
    with pytest.raises(InputError, match="at least 3"):
        reg.landmark_transform(fixed_points[:2], moving_points[:2])
    with pytest.raises(InputError, match="correspond"):
        reg.landmark_transform(fixed_points, moving_points[:3])


def test_rotation_search_recovers_a_large_rotation():
    """60 degrees about one axis: out of the local optimizer's reach, found by the coarse search."""
    case = make_case("rigid", 2.0)
    center = sitk.LabelShapeStatisticsImageFilter()
    center.Execute(case.fixed_mask)
    rotation = sitk.Euler3DTransform(center.GetCentroid(1), 0.0, 0.0, math.radians(60.0), (4.0, -3.0, 2.0))
    moving = sitk.Resample(case.fixed, case.fixed, rotation.GetInverse(), sitk.sitkLinear, 0.0)
    # moving(y) = fixed(rotation^-1(y)), so the true fixed -> moving map is the rotation
    points = reg._foreground_points(case.fixed, case.fixed_mask, 500, 3)
    expected = reg.transform_points(rotation, points)
    parameters = reg.RegistrationParameters(preset="rigid", threads=2, rotation_search_deg=90,
                                            rotation_search_step_deg=30)
    result = reg.register_images(case.fixed, moving, parameters)
    error = np.linalg.norm(reg.transform_points(result.transform, points) - expected, axis=1)
    assert error.mean() < 0.3, error.mean()


# --- progress, cancellation, threads ------------------------------------------------------------

def test_progress_per_level_and_cancel():
    case = make_case("rigid", 2.0)
    messages = []
    reg.register_images(case.fixed, case.moving, reg.RegistrationParameters(threads=1),
                        report=ProgressReporter(lambda f, m: messages.append((f, m))))
    assert any("level 1/3" in m and "iteration" in m for _, m in messages)
    assert any("level 3/3" in m for _, m in messages)
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0

    cancel = CancelToken()

    def cancel_at_iteration(fraction, message):
        if "iteration 3" in message:
            cancel.cancel()

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    with pytest.raises(OperationCancelled):
        reg.register_images(case.fixed, case.moving, reg.RegistrationParameters(threads=1),
                            report=ProgressReporter(cancel_at_iteration, cancel))
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before


# --- bad inputs ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_pair():
    case = make_case("rigid", 2.0)
    return case.fixed, case.moving


def test_dimension_mismatch(small_pair):
    fixed, moving = small_pair
    with pytest.raises(InputError, match=r"moving.nii.gz: 2-D image: registration needs 3-D images"):
        reg.register_images(fixed, moving[:, :, 40], subjects={"moving": "moving.nii.gz"})


def test_constant_image(small_pair):
    fixed, moving = small_pair
    constant = sitk.Image(moving.GetSize(), sitk.sitkFloat32) + 7.0
    constant.CopyInformation(moving)
    with pytest.raises(InputError, match=r"flat.nrrd: image is constant \(every voxel is 7\)"):
        reg.register_images(fixed, constant, subjects={"moving": "flat.nrrd"})


def test_empty_mask(small_pair):
    fixed, moving = small_pair
    empty = sitk.Image(fixed.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(fixed)
    with pytest.raises(InputError, match=r"mask.nii.gz: mask is empty"):
        reg.register_images(fixed, moving, fixed_mask=empty, subjects={"fixed_mask": "mask.nii.gz"})


def test_no_overlap_after_initialization_suggests_an_initialization(small_pair, tmp_path):
    fixed, moving = small_pair
    far = tmp_path / "far.tfm"
    sitk.WriteTransform(sitk.TranslationTransform(3, (900.0, 0.0, 0.0)), str(far))
    with pytest.raises(InputError, match=r"does not overlap the fixed image after 'far.tfm' initialization.*--init"):
        reg.register_images(fixed, moving, reg.RegistrationParameters(init=str(far)))
    shifted = sitk.Image(moving)
    shifted.SetOrigin(tuple(np.array(moving.GetOrigin()) + 900.0))
    with pytest.raises(InputError, match=r"after 'identity' initialization.*--init geometry or --init moments"):
        reg.register_images(fixed, shifted, reg.RegistrationParameters(init="identity"))


def test_missing_initial_transform_file(small_pair, tmp_path):
    fixed, moving = small_pair
    with pytest.raises(InputError, match="initial transform file does not exist"):
        reg.register_images(fixed, moving, reg.RegistrationParameters(init=str(tmp_path / "none.tfm")))


def test_diverged_optimization_is_a_failure(small_pair):
    """Gradient ascent makes the metric worse than at the start: reported as failure, not success."""
    fixed, moving = small_pair
    ascent = reg.RegistrationParameters(overrides={"rigid": {
        "optimizer": {"name": "gradient_descent", "learning_rate": -10.0, "estimate_learning_rate": "never"},
        "iterations": [5, 5, 5]}}, threads=1)
    with pytest.raises(reg.RegistrationFailed,
                       match=r"registration failed: the final mi metric .* is worse than the initial"):
        reg.register_images(fixed, moving, ascent, subjects={"moving": "moving.nii.gz"})
    runaway = reg.RegistrationParameters(overrides={"rigid": {
        "optimizer": {"name": "gradient_descent", "learning_rate": 1e6, "estimate_learning_rate": "never"},
        "iterations": [20, 5, 5]}}, threads=1)
    with pytest.raises(reg.RegistrationFailed, match="registration failed"):
        reg.register_images(fixed, moving, runaway)


# --- full resolution (slow) ---------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["rigid", "affine", "multimodal", "deformable"])
def test_known_transform_tre_full_resolution(name):
    case = make_case(name, 1.0)
    result = reg.register_images(case.fixed, case.moving, reg.RegistrationParameters(preset=PRESET_OF[name]))
    tre = case.tre_summary(result.transform)
    print(f"{name} 1 mm: TRE {tre}, initial {case.initial_tre_summary()}, {result.seconds:.1f} s")
    assert tre["mean_mm"] <= TRE_LIMITS[name], tre
