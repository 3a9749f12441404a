"""Pixels: stored values (uncompressed little-endian data straight from the file, compressed syntaxes
through pydicom's pixel-data plugins, or a bulk ITK read), RescaleSlope/Intercept, resampling of
irregular stacks onto a regular grid, and the memory check done before any of it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..progress import ProgressReporter
from .records import NATIVE_LITTLE_ENDIAN, DicomFile, DicomFrame, DicomVolume, FileProblem, VolumeGeometry
from .stack import volume_geometry


def stored_dtype(record: DicomFile) -> np.dtype:
    """numpy type of the stored values (before rescale) of a file."""
    if record.float_pixels:
        return np.dtype(np.float32 if record.bits_allocated == 32 else np.float64)
    if record.photometric == "PALETTE COLOR":
        return np.dtype(np.uint16 if record.bits_allocated > 8 else np.uint8)
    signed = record.pixel_representation == 1 and not record.is_colour
    if record.bits_allocated <= 8:
        return np.dtype(np.int8 if signed else np.uint8)
    if record.bits_allocated <= 16:
        return np.dtype(np.int16 if signed else np.uint16)
    if record.bits_allocated <= 32:
        return np.dtype(np.int32 if signed else np.uint32)
    return np.dtype(np.int64 if signed else np.uint64)


def _fast_path(record: DicomFile) -> bool:
    return (record.pixel_offset is not None and sys.byteorder == "little" and record.samples == 1
            and record.bits_allocated in (8, 16, 32, 64) and not record.is_colour
            and record.transfer_syntax in NATIVE_LITTLE_ENDIAN)


def _read_native(record: DicomFile, pairs: Sequence[tuple], out: np.ndarray) -> None:
    """Copy frames (frame index, output slice) of an uncompressed file straight into ``out``."""
    frame_bytes = record.frame_bytes
    with open(record.path, "rb", buffering=0) as stream:
        for frame_index, slice_index in pairs:
            stream.seek(record.pixel_offset + frame_index * frame_bytes)
            target = memoryview(out[slice_index]).cast("B")
            if stream.readinto(target) != frame_bytes:
                raise FileProblem(record.path, "truncated pixel data")
    shift = record.bits_allocated - record.bits_stored
    if shift and not record.float_pixels:
        # Unused high bits: mask (unsigned) or sign-extend (signed), as pydicom does.
        for _, slice_index in pairs:
            np.left_shift(out[slice_index], shift, out=out[slice_index])
            np.right_shift(out[slice_index], shift, out=out[slice_index])


def _decode(record: DicomFile) -> np.ndarray:
    """All frames of a file through pydicom's pixel-data handlers: (frames, rows, columns[, 3])."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(record.path, force=True)
            meta = getattr(dataset, "file_meta", None)
            if meta is None or "TransferSyntaxUID" not in meta:
                from pydicom.dataset import FileMetaDataset

                dataset.file_meta = meta if meta is not None else FileMetaDataset()
                dataset.file_meta.TransferSyntaxUID = record.transfer_syntax
            array = dataset.pixel_array
            if record.photometric == "PALETTE COLOR":
                from pydicom.pixels import apply_color_lut

                array = apply_color_lut(array, dataset)
                if array.dtype.itemsize == 2 and record.bits_allocated <= 8:
                    # 16-bit palette entries on an 8-bit image: 8-bit RGB, as GDCM gives it
                    array = (array >> 8 if array.max() > 255 else array).astype(np.uint8)
    except Exception as error:  # noqa: BLE001 - pydicom raises many types on bad pixel data
        message = " ".join(str(error).split())[:160]
        raise FileProblem(record.path, f"pixel data cannot be decoded ({type(error).__name__}: {message})") from None
    array = np.asarray(array)
    colour = array.ndim == (4 if record.number_of_frames > 1 else 3)
    if record.number_of_frames == 1:
        array = array[np.newaxis]
    if array.shape[0] != record.number_of_frames or array.shape[1:3] != (record.rows, record.columns):
        raise FileProblem(record.path, f"decoded pixel array has shape {array.shape}, expected "
                                       f"{record.number_of_frames} frame(s) of {record.rows}x{record.columns}")
    if colour != record.is_colour and not (record.photometric == "PALETTE COLOR" and colour):
        raise FileProblem(record.path, "decoded pixel data does not match SamplesPerPixel")
    return array


@dataclasses.dataclass
class LoadedVolume:
    """A loaded volume: the image (LPS geometry), QA measures and warnings for the user."""

    image: sitk.Image
    volume: DicomVolume
    qa: dict
    warnings: list
    invert_display: bool = False
    window: Optional[tuple] = None


def read_stored_pixels(volume: DicomVolume, report: Optional[ProgressReporter] = None,
                       relative=lambda p: Path(p).name) -> tuple:
    """(stored values array (N, rows, cols[, 3]), indices of frames that could not be read, reasons)."""
    report = report or ProgressReporter()
    frames = volume.frames
    first = frames[0].file
    colour = first.is_colour
    dtypes = {stored_dtype(f.file) for f in frames}
    dtype = np.result_type(*dtypes) if len(dtypes) > 1 else dtypes.pop()
    if colour and first.photometric == "PALETTE COLOR":
        dtype = np.dtype(np.uint16) if first.bits_allocated > 8 else np.dtype(np.uint8)
    shape = (len(frames), first.rows, first.columns) + ((3,) if colour else ())
    out = np.empty(shape, dtype=dtype)
    by_file: dict = {}
    for slice_index, frame in enumerate(frames):
        by_file.setdefault(id(frame.file), (frame.file, []))[1].append((frame.index, slice_index))
    failed, reasons = [], []
    total = len(by_file)
    for number, (record, pairs) in enumerate(by_file.values()):
        if number % 32 == 0:
            report(number / max(total, 1), f"reading pixels {number}/{total}")
        try:
            if _fast_path(record) and stored_dtype(record) == dtype:
                _read_native(record, pairs, out)
            else:
                decoded = _decode(record)
                for frame_index, slice_index in pairs:
                    out[slice_index] = decoded[frame_index]
        except FileProblem as problem:
            failed.extend(slice_index for _, slice_index in pairs)
            reasons.append(f"{relative(record.path)}: {problem.reason}")
        except OSError as error:
            failed.extend(slice_index for _, slice_index in pairs)
            reasons.append(f"{relative(record.path)}: cannot be read ({error.strerror or error})")
    return out, failed, reasons


def _rescale(stored: np.ndarray, frames: Sequence[DicomFrame]) -> np.ndarray:
    """Apply RescaleSlope/Intercept; integer output when every factor is integer, else float32."""
    slopes = np.array([f.slope for f in frames], dtype=float)
    intercepts = np.array([f.intercept for f in frames], dtype=float)
    if stored.ndim == 4 or stored.dtype.kind == "f":
        if np.all(slopes == 1) and np.all(intercepts == 0):
            return stored
        result = stored.astype(np.float32 if stored.dtype.itemsize <= 4 else np.float64)
        result *= slopes.reshape(-1, *([1] * (stored.ndim - 1))).astype(result.dtype)
        result += intercepts.reshape(-1, *([1] * (stored.ndim - 1))).astype(result.dtype)
        return result
    if np.all(slopes == 1) and np.all(intercepts == 0):
        return stored
    uniform = np.all(slopes == slopes[0]) and np.all(intercepts == intercepts[0])
    slope, intercept = float(slopes[0]), float(intercepts[0])
    if uniform and slope.is_integer() and intercept.is_integer():
        low, high = int(stored.min()), int(stored.max())
        ends = [low * slope + intercept, high * slope + intercept]
        for candidate in (stored.dtype, np.dtype(np.int16), np.dtype(np.int32)):
            info = np.iinfo(candidate)
            if info.min <= min(ends) and max(ends) <= info.max:
                result = stored if candidate == stored.dtype else stored.astype(candidate)
                if slope != 1:
                    result *= int(slope)
                if intercept != 0:
                    result += candidate.type(int(intercept))
                return result
    result = stored.astype(np.float32)
    for index in range(result.shape[0]):
        if slopes[index] != 1:
            result[index] *= np.float32(slopes[index])
        if intercepts[index] != 0:
            result[index] += np.float32(intercepts[index])
    return result


def regularize(array: np.ndarray, geometry: VolumeGeometry, fill: float) -> np.ndarray:
    """Resample a stack of parallel slices at arbitrary positions onto ``geometry``'s regular grid.

    Each output voxel takes the bilinear in-plane value of the two acquired slices that
    bracket it along the normal (orthogonal projection onto each slice plane), blended
    linearly by normal distance; voxels outside the acquired slices get ``fill``.
    """
    size_i, size_j, size_k = geometry.size
    spacing_i, spacing_j, spacing_k = (float(v) for v in geometry.spacing)
    low = geometry.in_plane_offsets.min(axis=0)
    shifts = (geometry.in_plane_offsets - low) / np.array([spacing_i, spacing_j])  # slice k's pixel shift
    coordinates = geometry.slice_positions - geometry.slice_positions[0]
    work = np.float64 if array.dtype.itemsize > 4 else np.float32
    out = np.empty((size_k,) + (size_j, size_i) + array.shape[3:], dtype=work)
    cache: dict = {}

    def placed(index: int) -> np.ndarray:
        if index not in cache:
            if len(cache) > 2:
                cache.pop(min(cache))
            cache[index] = _translate(array[index].astype(work), shifts[index], (size_j, size_i), fill)
        return cache[index]

    for k in range(size_k):
        target = k * spacing_k
        upper = int(np.searchsorted(coordinates, target - 1e-6))
        upper = min(max(upper, 0), len(coordinates) - 1)
        if abs(coordinates[upper] - target) <= 1e-6 or upper == 0:
            out[k] = placed(upper)
            continue
        lower = upper - 1
        weight = (target - coordinates[lower]) / (coordinates[upper] - coordinates[lower])
        out[k] = placed(lower) * work(1 - weight) + placed(upper) * work(weight)
    if array.dtype.kind in "iu":
        info = np.iinfo(array.dtype)
        np.rint(out, out=out)
        np.clip(out, info.min, info.max, out=out)
        return out.astype(array.dtype)
    return out.astype(array.dtype, copy=False)


def _translate(image: np.ndarray, shift_ij: np.ndarray, shape_ji: tuple, fill: float) -> np.ndarray:
    """Place a 2-D (rows, cols[, c]) image on a larger canvas shifted by fractional (i, j) pixels (bilinear)."""
    canvas = np.full(shape_ji + image.shape[2:], fill, dtype=image.dtype)
    whole_i, whole_j = int(math.floor(shift_ij[0] + 1e-9)), int(math.floor(shift_ij[1] + 1e-9))
    fraction_i, fraction_j = shift_ij[0] - whole_i, shift_ij[1] - whole_j
    if abs(fraction_i) < 1e-6 and abs(fraction_j) < 1e-6:
        rows, columns = image.shape[:2]
        canvas[whole_j:whole_j + rows, whole_i:whole_i + columns] = image[:shape_ji[0] - whole_j,
                                                                          :shape_ji[1] - whole_i]
        return canvas
    # Sample the image at canvas pixel (j, i) -> image pixel (j - shift_j, i - shift_i), bilinear.
    padded = np.full((image.shape[0] + 2, image.shape[1] + 2) + image.shape[2:], fill, dtype=image.dtype)
    padded[1:-1, 1:-1] = image
    j = np.arange(shape_ji[0]) - shift_ij[1] + 1
    i = np.arange(shape_ji[1]) - shift_ij[0] + 1
    j0 = np.floor(j).astype(int)
    i0 = np.floor(i).astype(int)
    wj = (j - j0).astype(image.dtype)
    wi = (i - i0).astype(image.dtype)
    valid_j = (j0 >= 0) & (j0 + 1 < padded.shape[0])
    valid_i = (i0 >= 0) & (i0 + 1 < padded.shape[1])
    j0c, i0c = np.clip(j0, 0, padded.shape[0] - 2), np.clip(i0, 0, padded.shape[1] - 2)
    top = padded[j0c][:, i0c]
    top_right = padded[j0c][:, i0c + 1]
    bottom = padded[j0c + 1][:, i0c]
    bottom_right = padded[j0c + 1][:, i0c + 1]
    extra = (slice(None),) * 2 + (np.newaxis,) * (image.ndim - 2)
    wi_ = wi[np.newaxis, :][extra]
    wj_ = wj[:, np.newaxis][extra]
    result = (top * (1 - wi_) + top_right * wi_) * (1 - wj_) + (bottom * (1 - wi_) + bottom_right * wi_) * wj_
    mask = valid_j[:, np.newaxis] & valid_i[np.newaxis, :]
    canvas[mask] = result[mask]
    return canvas


_META_TYPES = {(8, 0): "MET_UCHAR", (8, 1): "MET_CHAR", (16, 0): "MET_USHORT", (16, 1): "MET_SHORT",
               (32, 0): "MET_UINT", (32, 1): "MET_INT"}


def _bulk_read_with_itk(volume: DicomVolume) -> Optional[sitk.Image]:
    """The stored values of a plain uncompressed series, read by ITK straight into the image buffer.

    Eligible: one single-frame, native little-endian, grey-scale file per slice, all alike,
    each ending with its pixel data. A MetaImage header listing the files in slice order
    (``ElementDataFile = LIST``, ``HeaderSize = -1``: data at the end of each file) lets
    ITK's reader fill one buffer without an intermediate numpy array, which halves the memory
    traffic of a large series. Returns None when not eligible or when ITK refuses.
    """
    import tempfile

    records = [frame.file for frame in volume.frames]
    first = records[0]
    element_type = _META_TYPES.get((first.bits_allocated, first.pixel_representation))
    if element_type is None or len({id(r) for r in records}) != len(records):
        return None
    for record in records:
        if not (_fast_path(record) and record.number_of_frames == 1 and record.rows == first.rows
                and record.columns == first.columns and record.bits_allocated == first.bits_allocated
                and record.bits_stored == first.bits_stored
                and record.pixel_representation == first.pixel_representation
                and record.pixel_offset + record.frame_bytes == record.size_bytes):
            return None
        name = os.fspath(record.path)
        if "\n" in name or "\r" in name or name != name.strip():
            return None
    header = "\n".join([
        "ObjectType = Image", "NDims = 3", "BinaryData = True", "BinaryDataByteOrderMSB = False",
        f"DimSize = {first.columns} {first.rows} {len(records)}", f"ElementType = {element_type}",
        "HeaderSize = -1", "ElementDataFile = LIST",
        *(os.path.abspath(record.path) for record in records), ""])
    handle, listing = tempfile.mkstemp(prefix="medanalysis-slices-", suffix=".mhd")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(header)
        image = sitk.ReadImage(listing)
    except RuntimeError:
        return None
    finally:
        os.unlink(listing)
    if image.GetSize() != (first.columns, first.rows, len(records)):
        return None
    return image


def _rescale_itk(image: sitk.Image, frames: Sequence[DicomFrame]) -> Optional[sitk.Image]:
    """RescaleSlope/Intercept (uniform over the slices) applied in place on an ITK image, with
    the output type rules of :func:`_rescale`; None when unused high bits are set (the numpy
    path then masks or sign-extends them as pydicom does)."""
    first = frames[0].file
    view = sitk.GetArrayViewFromImage(image)
    low = high = None
    if first.bits_stored < first.bits_allocated:
        low, high = int(view.min()), int(view.max())
        if first.pixel_representation == 1:
            limit = 1 << (first.bits_stored - 1)
            if low < -limit or high >= limit:
                return None
        elif high >= 1 << first.bits_stored:
            return None
    slopes = {frame.slope for frame in frames}
    intercepts = {frame.intercept for frame in frames}
    if len(slopes) != 1 or len(intercepts) != 1:
        return None
    slope, intercept = slopes.pop(), intercepts.pop()
    if slope == 1 and intercept == 0:
        return image
    if float(slope).is_integer() and float(intercept).is_integer():
        if low is None:
            low, high = int(view.min()), int(view.max())
        ends = [low * slope + intercept, high * slope + intercept]
        stored = view.dtype
        for candidate, pixel_id in ((stored, image.GetPixelID()), (np.dtype(np.int16), sitk.sitkInt16),
                                    (np.dtype(np.int32), sitk.sitkInt32)):
            info = np.iinfo(candidate)
            if info.min <= min(ends) and max(ends) <= info.max:
                if pixel_id != image.GetPixelID():
                    image = sitk.Cast(image, pixel_id)
                if slope != 1:
                    image *= int(slope)
                if intercept != 0:
                    image += int(intercept)
                return image
    image = sitk.Cast(image, sitk.sitkFloat32)
    if slope != 1:
        image *= float(slope)
    if intercept != 0:
        image += float(intercept)
    return image


def _load_with_numpy(volume: DicomVolume, report: ProgressReporter, regularize_geometry: bool, relative,
                     warnings_: list) -> tuple:
    """(image, volume, warnings, qa) through numpy: any syntax, left-out files, regularization."""
    stored, failed, reasons = read_stored_pixels(volume, report.sub(0.0, 0.8), relative)
    if failed:
        keep = [index for index in range(len(volume.frames)) if index not in set(failed)]
        if not keep:
            raise InputError(relative(volume.frames[0].file.path),
                             f"no slice of the series could be read ({reasons[0]})")
        for reason in reasons:
            warnings_.append(f"left out {reason}")
        stored = stored[keep]
        frames = [volume.frames[index] for index in keep]
        geometry = volume_geometry(frames, relative)
        warnings_ = [w for w in warnings_ if w not in volume.geometry.warnings] + geometry.warnings
        volume = dataclasses.replace(volume, frames=frames, geometry=geometry, qa=dict(geometry.qa))
    report(0.8, "applying rescale slope/intercept")
    values = _rescale(stored, volume.frames)
    geometry = volume.geometry
    qa = dict(volume.qa)
    qa["left_out_files"] = len(reasons)
    if not geometry.regular:
        if regularize_geometry:
            report(0.85, "resampling onto a regular grid")
            fill = float(values.min()) if values.size else 0.0
            values = regularize(values, geometry, fill)
            qa["fill_value"] = fill
        else:
            qa["regularized"] = False
            geometry = dataclasses.replace(geometry, origin=np.asarray(volume.frames[0].position, dtype=float),
                                           size=(values.shape[2], values.shape[1], values.shape[0]))
            warnings_ = [w for w in warnings_ if "resampled onto a regular grid" not in w]
            warnings_.append("irregular acquisition geometry NOT corrected (regularization off): positions in this "
                             "volume are approximate")
    image = sitk.GetImageFromArray(values, isVector=values.ndim == 4)
    return image, dataclasses.replace(volume, geometry=geometry), warnings_, qa


def check_volume_memory(volume: DicomVolume, relative=lambda p: Path(p).name) -> None:
    """Refuse, before any pixel is decoded, a volume whose stored frames or regularized grid
    would not fit the memory budget (declared frame counts, rows x columns, or slice positions
    that spread a few slices over an enormous grid)."""
    from ..imageguard import MAX_EXTENT_MM, memory_budget_bytes

    first = volume.frames[0].file
    extent = [float(n) * float(d) for n, d in zip(volume.geometry.size, volume.geometry.spacing)]
    if max(extent) > MAX_EXTENT_MM:  # slice positions (or spacings) that no scanner produces
        raise InputError(relative(first.path), f"DICOM volume extent {[round(v, 1) for v in extent]} mm exceeds "
                                               f"{MAX_EXTENT_MM / 1000:g} m along an axis: the slice positions or "
                                               "pixel spacing in the headers are wrong")
    samples = 3 if first.is_colour else 1
    stored = float(len(volume.frames)) * first.rows * first.columns * samples * max(first.bits_allocated // 8, 1)
    grid = float(np.prod([float(v) for v in volume.geometry.size])) * samples * 4  # float32 after rescaling
    needed = stored + grid  # both are held while the image is built
    budget = memory_budget_bytes()
    if needed > budget:
        raise InputError(relative(first.path), f"DICOM volume of {len(volume.frames)} frames of {first.rows}x"
                                               f"{first.columns} on a grid of {list(volume.geometry.size)} voxels needs "
                                               f"{needed / 2**30:.1f} GiB, more than the memory budget of "
                                               f"{budget / 2**30:.1f} GiB (set MEDANALYSIS_MAX_MEMORY to allow more)")


def load_volume(volume: DicomVolume, report: Optional[ProgressReporter] = None, regularize_geometry: bool = True,
                relative=lambda p: Path(p).name) -> LoadedVolume:
    """Read, rescale and (where needed) regularize a planned volume into a SimpleITK image (LPS).

    Files whose pixels cannot be read are left out with a warning naming them; the
    geometry is then measured again on the remaining slices.

    Raises:
        InputError: no slice of the volume could be read.
    """
    report = report or ProgressReporter()
    check_volume_memory(volume, relative)
    warnings_ = list(volume.warnings)
    qa = dict(volume.qa)
    image = None
    if volume.geometry.regular and len({(f.slope, f.intercept) for f in volume.frames}) == 1:
        report(0.0, "reading pixels")
        bulk = _bulk_read_with_itk(volume)
        image = _rescale_itk(bulk, volume.frames) if bulk is not None else None
        del bulk  # in-place arithmetic shares the buffer: a second owner would make SetOrigin copy it all
        qa["left_out_files"] = 0
    if image is None:
        image, volume, warnings_, qa = _load_with_numpy(volume, report, regularize_geometry, relative, warnings_)
    geometry = volume.geometry
    report(0.95, "building the image")
    image.SetOrigin(tuple(float(v) for v in geometry.origin))
    image.SetSpacing(tuple(float(v) for v in geometry.spacing))
    image.SetDirection(tuple(float(v) for v in geometry.direction.ravel()))
    first = volume.frames[0]
    qa["pixel_type"] = image.GetPixelIDTypeAsString()
    qa["rescale"] = {"slope": first.slope, "intercept": first.intercept,
                     "uniform": len({(f.slope, f.intercept) for f in volume.frames}) == 1}
    invert = first.file.photometric == "MONOCHROME1"
    if invert:
        qa["monochrome1"] = True
        warnings_.append("MONOCHROME1: values kept as stored x slope + intercept; display inverted")
    report(1.0, "volume loaded")
    return LoadedVolume(image, volume, qa, warnings_, invert_display=invert, window=first.window)


def summarize_volume(volume: DicomVolume) -> dict:
    """JSON-able description of a planned volume (no patient identifiers)."""
    geometry = volume.geometry
    return {
        "id": volume.volume_id,
        "label": volume.label,
        "slices": len(volume.frames),
        "size": [int(v) for v in geometry.size],
        "spacing_mm": [round(float(v), 6) for v in geometry.spacing],
        "origin_lps_mm": [round(float(v), 6) for v in geometry.origin],
        "orientation": volume.qa.get("orientation", "LPS"),
        "colour": volume.frames[0].file.is_colour,
        "warnings": list(volume.warnings),
        "qa": volume.qa,
    }
