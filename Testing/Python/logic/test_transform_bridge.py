"""SimpleITK transform <-> transform node: the ITK fixed->moving (LPS) convention."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from MedAnalysisLib import mrml
from MedAnalysisLib.core import geometry


def rigid():
    return sitk.Euler3DTransform((4.0, -7.0, 12.0), 0.21, -0.12, 0.27, (8.0, -5.0, 11.0))


def affine():
    transform = sitk.AffineTransform(3)
    transform.SetMatrix((1.08, 0.06, -0.02, 0.03, 0.93, 0.05, -0.04, 0.02, 1.05))
    transform.SetTranslation((3.0, 4.0, -5.0))
    transform.SetCenter((10.0, -2.0, 6.0))
    return transform


def bspline():
    reference = sitk.Image([20, 20, 20], sitk.sitkFloat32)
    reference.SetOrigin((-100.0, -100.0, -100.0))
    reference.SetSpacing((10.0, 10.0, 10.0))
    transform = sitk.BSplineTransformInitializer(reference, [4, 4, 4], 3)
    rng = np.random.default_rng(7)
    transform.SetParameters(rng.normal(0.0, 2.5, size=len(transform.GetParameters())).tolist())
    return transform


CASES = [("rigid", rigid, 1e-4, 1e-4), ("affine", affine, 1e-4, 1e-4), ("bspline", bspline, 1e-4, 1e-3)]


@pytest.fixture
def points_ras():
    return np.random.default_rng(11).uniform(-70.0, 70.0, size=(1000, 3))


@pytest.mark.parametrize("name,factory,tolerance,inverse_tolerance", CASES)
def test_from_parent_is_conjugated_itk_transform(scene, points_ras, name, factory, tolerance, inverse_tolerance):
    transform = factory()
    node = mrml.transformNodeFromSitk(transform, scene, name=name)
    expected = geometry.transform_points_ras(transform, points_ras)
    assert np.abs(mrml.transformPointsFromParent(node, points_ras) - expected).max() <= tolerance
    # to-parent is the inverse
    assert np.abs(mrml.transformPointsToParent(node, expected) - points_ras).max() <= inverse_tolerance


@pytest.mark.parametrize("name,factory,tolerance,inverse_tolerance", CASES)
@pytest.mark.parametrize("suffix", [".tfm", ".h5"])
def test_written_file_is_read_by_simpleitk(scene, tmp_path, points_ras, name, factory, tolerance,
                                            inverse_tolerance, suffix):
    transform = factory()
    node = mrml.transformNodeFromSitk(transform, scene, name=name)
    path = mrml.saveTransformNode(node, tmp_path / f"{name}{suffix}")
    read = sitk.ReadTransform(str(path))
    expected = geometry.transform_points_ras(transform, points_ras)
    assert np.abs(geometry.transform_points_ras(read, points_ras) - expected).max() <= tolerance


@pytest.mark.parametrize("name,factory,tolerance,inverse_tolerance", CASES)
def test_node_to_sitk_round_trip(scene, points_ras, name, factory, tolerance, inverse_tolerance):
    transform = factory()
    node = mrml.transformNodeFromSitk(transform, scene)
    back = mrml.sitkTransformFromNode(node)
    assert np.abs(geometry.transform_points_ras(back, points_ras)
                  - geometry.transform_points_ras(transform, points_ras)).max() <= tolerance


@pytest.mark.parametrize("name,factory,tolerance,inverse_tolerance", CASES)
def test_independent_reference_slicer_storage_node(scene, tmp_path, points_ras, name, factory, tolerance,
                                                   inverse_tolerance):
    """A node read by Slicer's own storage node from a SimpleITK-written file agrees with the bridge."""
    transform = factory()
    path = tmp_path / "written_by_sitk.h5"
    sitk.WriteTransform(transform, str(path))
    reference = scene.AddNewNodeByClass("vtkMRMLTransformNode", "reference")
    storage = slicer.vtkMRMLTransformStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(reference)
    bridged = mrml.transformNodeFromSitk(transform, scene)
    assert np.abs(mrml.transformPointsFromParent(reference, points_ras)
                  - mrml.transformPointsFromParent(bridged, points_ras)).max() <= tolerance


def test_displacement_field_transform(scene, points_ras):
    field = sitk.Image([16, 16, 16], sitk.sitkVectorFloat64, 3)
    field.SetOrigin((-80.0, -80.0, -80.0))
    field.SetSpacing((11.0, 11.0, 11.0))
    rng = np.random.default_rng(3)
    array = sitk.GetArrayFromImage(field)
    array[...] = rng.normal(0.0, 1.5, size=array.shape)
    displacement_image = sitk.GetImageFromArray(array, isVector=True)
    displacement_image.CopyInformation(field)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(displacement_image, sitk.sitkVectorFloat64))
    node = mrml.transformNodeFromSitk(transform, scene)
    inside = points_ras[np.all(np.abs(points_ras) < 60, axis=1)]
    expected = geometry.transform_points_ras(transform, inside)
    assert np.abs(mrml.transformPointsFromParent(node, inside) - expected).max() <= 1e-3
