"""Volume node <-> SimpleITK round trips on the real headless MRML scene."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.images import make_oblique_image
from MedAnalysisLib import mrml
from MedAnalysisLib.core import geometry
from MedAnalysisLib.core.errors import InputError


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8, np.uint16, np.int32, np.float64, np.int8])
def test_volume_round_trip_is_exact(scene, rng, dtype):
    if np.dtype(dtype).kind == "f":
        array = rng.normal(100, 30, size=(18, 25, 31)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        array = rng.integers(max(info.min, -2000), min(info.max, 3000), size=(18, 25, 31)).astype(dtype)
    image = make_oblique_image(array)
    node = mrml.volumeNodeFromImage(image, scene, name="oblique")
    back = mrml.imageFromVolumeNode(node)
    assert back.GetPixelID() == image.GetPixelID()
    assert np.array_equal(sitk.GetArrayFromImage(back), array)
    assert np.abs(np.subtract(back.GetOrigin(), image.GetOrigin())).max() <= 1e-6
    assert np.abs(np.subtract(back.GetSpacing(), image.GetSpacing())).max() <= 1e-6
    assert np.abs(np.subtract(back.GetDirection(), image.GetDirection())).max() <= 1e-9


def test_ijk_to_ras_matches_lps_flip(scene, rng):
    image = make_oblique_image(rng.normal(size=(5, 6, 7)).astype(np.float32))
    node = mrml.volumeNodeFromImage(image, scene)
    ijk = rng.uniform(0, 5, size=(50, 3))
    ras_from_node = (ijk @ mrml.ijkToRasArray(node)[:3, :3].T) + mrml.ijkToRasArray(node)[:3, 3]
    lps_from_sitk = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in ijk])
    assert np.abs(ras_from_node - geometry.lps_to_ras_points(lps_from_sitk)).max() < 1e-9


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_saved_by_slicer_nrrd_keeps_geometry(scene, rng, tmp_path, dtype):
    array = (rng.normal(0, 500, size=(12, 14, 16))).astype(dtype)
    image = make_oblique_image(array)
    node = mrml.volumeNodeFromImage(image, scene)
    path = mrml.saveVolumeNode(node, tmp_path / "v.nrrd")
    read = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(read), array)
    assert np.abs(np.subtract(read.GetOrigin(), image.GetOrigin())).max() <= 1e-6
    assert np.abs(np.subtract(read.GetSpacing(), image.GetSpacing())).max() <= 1e-6
    assert np.abs(np.subtract(read.GetDirection(), image.GetDirection())).max() <= 1e-9


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_saved_by_slicer_nifti_keeps_geometry_within_header_precision(scene, rng, tmp_path, dtype):
    array = (rng.normal(0, 500, size=(12, 14, 16))).astype(dtype)
    image = make_oblique_image(array)
    node = mrml.volumeNodeFromImage(image, scene)
    path = mrml.saveVolumeNode(node, tmp_path / "v.nii.gz")
    read = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(read), array)
    assert np.abs(np.subtract(read.GetOrigin(), image.GetOrigin())).max() <= 1e-5
    assert np.abs(np.subtract(read.GetSpacing(), image.GetSpacing())).max() <= 1e-5
    assert np.abs(np.subtract(read.GetDirection(), image.GetDirection())).max() <= 1e-6


def test_vector_image_goes_to_vector_volume_node(scene, rng):
    array = rng.integers(0, 255, size=(4, 5, 6, 3)).astype(np.uint8)
    image = sitk.GetImageFromArray(array, isVector=True)
    node = mrml.volumeNodeFromImage(image, scene)
    assert node.IsA("vtkMRMLVectorVolumeNode")
    back = mrml.imageFromVolumeNode(node)
    assert np.array_equal(sitk.GetArrayFromImage(back), array)


def test_four_d_array_is_refused_for_scalar_node(scene, rng):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "scalar")
    with pytest.raises(InputError, match="4-D array"):
        mrml.updateVolumeNodeFromArray(node, rng.normal(size=(2, 3, 4, 5)))


def test_four_d_image_is_refused(scene):
    image = sitk.Image([3, 4, 5, 2], sitk.sitkFloat32)
    with pytest.raises(InputError, match="4-D image"):
        mrml.volumeNodeFromImage(image, scene, name="fourD")


def test_int64_image_is_narrowed_when_values_fit(scene):
    array = np.arange(60, dtype=np.int64).reshape(3, 4, 5)
    node = mrml.volumeNodeFromImage(sitk.GetImageFromArray(array), scene)
    assert np.array_equal(mrml.imageFromVolumeNode(node) and sitk.GetArrayFromImage(mrml.imageFromVolumeNode(node)), array)


def test_channel_first_round_trip_and_affine(rng):
    array = rng.normal(size=(6, 7, 8)).astype(np.float32)
    image = make_oblique_image(array)
    channel_first, affine = geometry.to_channel_first(image)
    assert channel_first.shape == (1, 8, 7, 6)
    assert np.allclose(affine, geometry.ijk_to_ras(image))
    back = geometry.from_channel_first(channel_first, image)
    assert np.array_equal(sitk.GetArrayFromImage(back), array)
    # voxel (i, j, k) of the channel-first array sits at affine @ (i, j, k, 1) in RAS
    i, j, k = 3, 2, 5
    lps = image.TransformIndexToPhysicalPoint((i, j, k))
    assert np.allclose((affine @ [i, j, k, 1])[:3], geometry.lps_to_ras_points(np.array([lps]))[0])
    assert channel_first[0, i, j, k] == array[k, j, i]
