"""The synthetic DICOM generator (helpers/dicomgen.py) checked against an independent reader:
SimpleITK / GDCM. The import tests trust its geometry, so it must be right on its own."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from helpers.dicomgen import rotation_direction, write_image_series


def test_generator_round_trips_through_gdcm(tmp_path):
    array = (np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) * 3 - 40)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.8, 2.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection(rotation_direction((20.0, 10.0, 5.0)))
    rng = np.random.default_rng(3)
    write_image_series(image, tmp_path, slope=0.5, intercept=-10.0, rng=rng)
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(tmp_path))
    reader.SetFileNames(files)
    loaded = reader.Execute()
    assert loaded.GetSize() == image.GetSize()
    assert np.allclose(loaded.GetOrigin(), image.GetOrigin(), atol=1e-6)
    assert np.allclose(loaded.GetSpacing(), image.GetSpacing(), atol=1e-6)
    assert np.allclose(loaded.GetDirection(), image.GetDirection(), atol=1e-9)
    assert np.array_equal(sitk.GetArrayFromImage(loaded).astype(np.float64), array.astype(np.float64))
