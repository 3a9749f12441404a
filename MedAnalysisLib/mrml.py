"""The bridge between MRML nodes and SimpleITK (the only MRML-side geometry code).

* Volumes: MRML stores voxels in a vtkImageData (i fastest) and an IJKToRAS matrix;
  SimpleITK stores origin/spacing/direction in LPS. Conversions go through
  :mod:`MedAnalysisLib.core.geometry` and are exact up to float64 round-off.
* Segmentations: labelmap image <-> segmentation node through Slicer's own
  ``vtkSlicerSegmentationsModuleLogic`` (segment names, colours, terminology tags);
  ``.seg.nrrd`` through ``vtkMRMLSegmentationStorageNode``.
* Transforms: an ITK transform maps fixed-space (output) points to moving-space points
  in LPS. Slicer's *from-parent* transform of a node is that same point map in RAS
  (``F @ T_lps @ F``, ``F = diag(-1,-1,1,1)``), so a moving volume placed under the node
  appears aligned to the fixed volume, and the *to-parent* transform is its inverse.
  Linear transforms are converted in memory; non-linear ones (B-spline, displacement
  field, composite) go through Slicer's ``vtkMRMLTransformStorageNode`` reading/writing an
  ITK ``.h5`` file, which is how Slicer itself exchanges them with ITK.
* Tables: rows (list of dicts) <-> ``vtkMRMLTableNode``.

Every function takes the scene explicitly; inside Slicer ``scene=None`` means ``slicer.mrmlScene``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

import slicer
import vtk

from .core import geometry, imageio
from .core.errors import InputError
from .core.labels import SegmentSpec, generic_segments
from .core.progress import atomic_output
from .core.provenance import PROVENANCE_ATTRIBUTE, provenance_json

LABEL_VALUE_TAG = "MedAnalysis.LabelValue"

# numpy dtypes a Slicer scalar volume can hold (vtkImageData scalar types Slicer displays).
_SUPPORTED_DTYPES = {np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32,
                                           np.float32, np.float64)}


def defaultScene(scene=None):
    """``scene``, or ``slicer.mrmlScene`` inside the Slicer application."""
    if scene is not None:
        return scene
    appScene = getattr(slicer, "mrmlScene", None)
    if appScene is None:
        raise ValueError("no MRML scene given: pass scene=slicer.vtkMRMLScene() when running headless")
    return appScene


def newScene():
    """A new headless MRML scene with Slicer's default colour tables (as the application has)."""
    scene = slicer.vtkMRMLScene()
    colorLogic = slicer.vtkMRMLColorLogic()
    colorLogic.SetMRMLScene(scene)  # adds the default colour nodes that display nodes look up
    colorLogic.SetMRMLScene(None)
    return scene


def setProvenance(node, record: dict) -> None:
    node.SetAttribute(PROVENANCE_ATTRIBUTE, provenance_json(record))


def getProvenance(node) -> Optional[dict]:
    text = node.GetAttribute(PROVENANCE_ATTRIBUTE)
    return json.loads(text) if text else None


# --- matrices ---------------------------------------------------------------------------------

def vtkMatrixFromArray(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row, column]))
    return matrix


def arrayFromVtkMatrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijkToRasArray(volumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return arrayFromVtkMatrix(matrix)


# --- volumes ----------------------------------------------------------------------------------

def _volumeArray(image: sitk.Image, subject: str) -> np.ndarray:
    dimension = image.GetDimension()
    if dimension == 2:  # a new image: copy its voxels so that nothing points into it afterwards
        return np.array(_volumeArray(sitk.JoinSeries(image), subject))
    if dimension != 3:
        raise InputError(subject, f"{dimension}-D image cannot be stored in a volume node (3-D only; "
                                  "split 4-D series into separate volumes)")
    # a view (no copy): updateVolumeFromArray deep-copies into VTK; the caller keeps `image` alive
    array = geometry.array_view(image)
    if array.dtype not in _SUPPORTED_DTYPES:
        if array.dtype.kind in "iu" and array.size and array.min() >= np.iinfo(np.int32).min \
                and array.max() <= np.iinfo(np.int32).max:
            array = array.astype(np.int32)
        elif array.dtype.kind in "iu":
            array = array.astype(np.float64)
        else:
            raise InputError(subject, f"pixel type {array.dtype} is not supported by Slicer volumes")
    return array


def volumeNodeFromImage(image: sitk.Image, scene=None, name: str = "Volume", node=None,
                        labelmap: bool = False, provenance: Optional[dict] = None, createDisplay: bool = True):
    """Scalar (or vector, for multi-component images) volume node holding ``image``.

    With ``node`` given, that node is updated in place; otherwise a new node is added
    to the scene. The geometry is exact: IJKToRAS = LPS->RAS flip of the image's
    direction * spacing and origin.
    """
    scene = defaultScene(scene)
    subject = name
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    array = _volumeArray(image, subject)
    components = image.GetNumberOfComponentsPerPixel()
    if node is None:
        if components > 1:
            className = "vtkMRMLVectorVolumeNode"
        else:
            className = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
        node = scene.AddNewNodeByClass(className, name)
    elif components > 1 and not node.IsA("vtkMRMLVectorVolumeNode"):
        raise InputError(subject, f"{components}-component image cannot go into scalar volume node '{node.GetName()}'")
    slicer.util.updateVolumeFromArray(node, array)
    node.SetIJKToRASMatrix(vtkMatrixFromArray(geometry.ijk_to_ras(image)))
    if createDisplay and node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    if provenance is not None:
        setProvenance(node, provenance)
    return node


def updateVolumeNodeFromArray(volumeNode, array_kji: np.ndarray, ijkToRas: Optional[np.ndarray] = None) -> None:
    """Set voxels (k, j, i order) of a scalar volume node, refusing arrays a scalar node cannot hold."""
    array_kji = np.asarray(array_kji)
    isVectorNode = volumeNode.IsA("vtkMRMLVectorVolumeNode")
    if array_kji.ndim != 3 and not (isVectorNode and array_kji.ndim == 4):
        raise InputError(volumeNode.GetName(), f"{array_kji.ndim}-D array {array_kji.shape} cannot be stored in a "
                                               "scalar volume node (needs a 3-D array in k, j, i order)")
    slicer.util.updateVolumeFromArray(volumeNode, array_kji)
    if ijkToRas is not None:
        volumeNode.SetIJKToRASMatrix(vtkMatrixFromArray(ijkToRas))


def imageFromVolumeNode(volumeNode) -> sitk.Image:
    """SimpleITK image (LPS) with the node's voxels and geometry (the node's own IJKToRAS;
    parent transforms are not applied)."""
    if volumeNode is None or volumeNode.GetImageData() is None:
        name = volumeNode.GetName() if volumeNode is not None else "volume"
        raise InputError(name, "volume node has no image data")
    array = slicer.util.arrayFromVolume(volumeNode)
    isVector = array.ndim == 4
    # GetImageFromArray copies the voxels, so the VTK-owned view needs no copy of its own
    return geometry.image_from_array(array, ijkToRasArray(volumeNode), is_vector=isVector)


def saveVolumeNode(volumeNode, path: "str | os.PathLike", compress: bool = True) -> Path:
    """Write a volume with Slicer's volume storage node (NRRD, NIfTI, MHA...), atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(tmp))
        storage.SetUseCompression(bool(compress))
        if not storage.WriteData(volumeNode):
            raise RuntimeError(f"{path}: Slicer could not write the volume")
    return path


def loadVolumeNode(path: "str | os.PathLike", scene=None, name: Optional[str] = None, labelmap: bool = False):
    """Read an image file with SimpleITK (clear errors) into a new volume node."""
    from .core.imageio import read_image

    image = read_image(path)
    try:
        node = volumeNodeFromImage(image, scene, name=name or Path(path).name.split(".")[0], labelmap=labelmap)
    except InputError as error:
        raise InputError(path, error.problem) from None
    node.SetAttribute(SOURCE_ATTRIBUTE, Path(path).name)
    return node


SOURCE_ATTRIBUTE = "MedAnalysis.LoadedFrom"  # file name, for messages (CLI and batch loads only)


def subjectOf(node) -> str:
    """What a message about ``node`` should name: the file it was loaded from, else its name."""
    return node.GetAttribute(SOURCE_ATTRIBUTE) or node.GetName()


# --- segmentations ----------------------------------------------------------------------------

_convertersRegistered = False


def ensureSegmentationConverters() -> None:
    """Register the binary labelmap <-> closed surface converter rules once (as the
    Segmentations module does at start-up in the Slicer application)."""
    global _convertersRegistered
    if _convertersRegistered:
        return
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    existing = {type(rule).__name__ for rule in _iterRules(factory)}
    for ruleClass in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
                      slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
                      slicer.vtkClosedSurfaceToFractionalLabelmapConversionRule,
                      slicer.vtkFractionalLabelmapToClosedSurfaceConversionRule):
        if ruleClass.__name__ not in existing:
            factory.RegisterConverterRule(ruleClass())
    _convertersRegistered = True


def _iterRules(factory) -> Iterable[Any]:
    rules = factory.GetConverterRules() if hasattr(factory, "GetConverterRules") else []
    try:
        return list(rules)
    except TypeError:
        return []


def segmentationNodeFromLabelmap(labelImage: sitk.Image, scene=None, name: str = "Segmentation",
                                 segments: Optional[Sequence[SegmentSpec]] = None,
                                 provenance: Optional[dict] = None):
    """Segmentation node with one segment per non-zero label of ``labelImage``.

    Segment names, colours and terminology come from ``segments`` (by label value);
    labels without a spec get generic names. Each segment remembers its label value
    (tag ``MedAnalysis.LabelValue``) so that :func:`labelmapFromSegmentationNode`
    restores the same values. The labelmap's grid becomes the segmentation's reference
    geometry.
    """
    scene = defaultScene(scene)
    ensureSegmentationConverters()
    if labelImage.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(name, "a labelmap must have one component per voxel")
    array = geometry.array_view(labelImage)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise InputError(name, "labelmap has non-integer values")
    values = [int(v) for v in np.unique(array) if v != 0]
    specs = {s.label: s for s in (segments or [])}
    fallback = {s.label: s for s in generic_segments([v for v in values if v not in specs])}

    top = max(values) if values else 0
    pixelType = sitk.sitkUInt8 if top < 256 else (sitk.sitkInt16 if top < 32768 else sitk.sitkInt32)
    if labelImage.GetPixelID() != pixelType:  # compact type: large labelmaps dominate memory
        labelImage = sitk.Cast(labelImage, pixelType)
    labelNode = volumeNodeFromImage(labelImage, scene, name=f"{name}_labelmap_import", labelmap=True,
                                    createDisplay=False)
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentationNode.CreateDefaultDisplayNodes()
    try:
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(labelNode)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if values and not logic.ImportLabelmapToSegmentationNode(labelNode, segmentationNode):
            raise RuntimeError("Slicer could not import the labelmap into the segmentation node")
        segmentation = segmentationNode.GetSegmentation()
        importedIds = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        for segmentId in importedIds:
            segment = segmentation.GetSegment(segmentId)
            value = int(segment.GetLabelValue())
            spec = specs.get(value) or fallback[value]
            _applySpec(segment, spec)
    finally:
        scene.RemoveNode(labelNode)
    if provenance is not None:
        setProvenance(segmentationNode, provenance)
    return segmentationNode


def _applySpec(segment, spec: SegmentSpec) -> None:
    segment.SetName(spec.name)
    segment.SetColor(*spec.color)
    segment.SetTag(LABEL_VALUE_TAG, str(spec.label))
    entry = spec.terminology_entry()
    if entry:
        segment.SetTag(segment.GetTerminologyEntryTagName(), entry)


def segmentSpecs(segmentationNode) -> list[SegmentSpec]:
    """Specs (label value, name, colour, terminology) of every segment, in segment order."""
    from .core.labels import parse_terminology_entry

    segmentation = segmentationNode.GetSegmentation()
    specs = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        value = vtk.mutable("")
        label = int(str(value)) if segment.GetTag(LABEL_VALUE_TAG, value) and str(value) else index + 1
        entry = vtk.mutable("")
        codes = parse_terminology_entry(str(entry)) if segment.GetTag(segment.GetTerminologyEntryTagName(), entry) else {}
        specs.append(SegmentSpec(label, segment.GetName(), tuple(segment.GetColor()),
                                 codes.get("category"), codes.get("type")))
    return specs


def labelmapFromSegmentationNode(segmentationNode, referenceImage: Optional[sitk.Image] = None,
                                 segmentIds: Optional[Sequence[str]] = None) -> sitk.Image:
    """Labelmap image of the segments (each segment's remembered label value, else its
    1-based index), on ``referenceImage``'s grid or the segmentation's reference geometry."""
    ensureSegmentationConverters()
    scene = segmentationNode.GetScene()
    segmentation = segmentationNode.GetSegmentation()
    if segmentIds is None:
        segmentIds = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    allIds = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    specs = segmentSpecs(segmentationNode)
    labelOf = {allIds[i]: specs[i].label for i in range(len(allIds))}

    idArray = vtk.vtkStringArray()
    for segmentId in segmentIds:
        idArray.InsertNextValue(segmentId)
    labelNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "_medanalysis_export")
    referenceNode = None
    try:
        if referenceImage is not None:
            referenceNode = volumeNodeFromImage(sitk.Cast(referenceImage, sitk.sitkUInt8) if referenceImage.GetNumberOfComponentsPerPixel() == 1
                                                else sitk.VectorIndexSelectionCast(referenceImage, 0, sitk.sitkUInt8),
                                                scene, name="_medanalysis_reference", createDisplay=False)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        ok = logic.ExportSegmentsToLabelmapNode(segmentationNode, idArray, labelNode, referenceNode,
                                                slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        if not ok:
            raise RuntimeError("Slicer could not export the segments to a labelmap")
        exported = imageFromVolumeNode(labelNode)
    finally:
        scene.RemoveNode(labelNode)
        if referenceNode is not None:
            scene.RemoveNode(referenceNode)
    # Exported values are 1..N in the order of segmentIds: map them back to label values.
    lookup = np.zeros(len(segmentIds) + 1, dtype=np.int32)
    for index, segmentId in enumerate(segmentIds):
        lookup[index + 1] = labelOf[segmentId]
    array = lookup[geometry.array_view(exported).astype(np.int64)]
    dtype = np.uint8 if lookup.max() < 256 else (np.uint16 if lookup.max() < 65536 else np.int32)
    result = geometry.image_from_array(array.astype(dtype), reference=exported)
    return result


def saveSegmentation(segmentationNode, path: "str | os.PathLike") -> Path:
    """Write ``.seg.nrrd`` with Slicer's segmentation storage node (atomic: temp file + rename)."""
    ensureSegmentationConverters()
    path = Path(path)
    with atomic_output(path) as tmp:
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(tmp))
        storage.SetUseCompression(True)
        if not storage.WriteData(segmentationNode):
            raise RuntimeError(f"{path}: Slicer could not write the segmentation")
    return path


def loadSegmentation(path: "str | os.PathLike", scene=None, name: Optional[str] = None):
    """Read a ``.seg.nrrd`` into a new segmentation node with Slicer's storage node."""
    scene = defaultScene(scene)
    ensureSegmentationConverters()
    path = Path(path)
    imageio.read_image_header(path)  # exists, data beside the header, fits memory, usable geometry
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or path.name.split(".")[0])
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(segmentationNode):
        scene.RemoveNode(segmentationNode)
        raise InputError(path, "not a readable segmentation file")
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.SetAttribute(SOURCE_ATTRIBUTE, path.name)
    return segmentationNode


def segmentationOnVolumeGrid(segmentationNode, volumeNode) -> bool:
    """True when the segmentation's reference geometry has the volume's axes and spacing and its
    voxel centres fall on the volume's (True as well when the segmentation records no geometry)."""
    text = segmentationNode.GetSegmentation().GetConversionParameter("Reference image geometry") or ""
    values = [v for v in text.split(";") if v.strip()]
    if len(values) < 16:
        return True
    segmentationIjkToRas = np.array([float(v) for v in values[:16]]).reshape(4, 4)
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    volumeIjkToRas = arrayFromVtkMatrix(matrix)
    if not np.allclose(segmentationIjkToRas[:3, :3], volumeIjkToRas[:3, :3], atol=1e-3):
        return False
    offset = np.linalg.solve(volumeIjkToRas[:3, :3], segmentationIjkToRas[:3, 3] - volumeIjkToRas[:3, 3])
    return bool(np.allclose(offset, np.round(offset), atol=1e-2))


def loadSegmentationOrMask(path: "str | os.PathLike", scene, segmentName: str):
    """A segmentation node from a ``.seg.nrrd``, or from a mask labelmap whose every non-zero voxel
    becomes the one segment ``segmentName`` (as the monitor command and batch step take them)."""
    if str(path).lower().endswith(".seg.nrrd"):
        return loadSegmentation(path, scene)
    from .core.imageio import check_3d, check_finite, read_image

    image = read_image(path)
    check_3d(image, path, "a lesion mask")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"{image.GetNumberOfComponentsPerPixel()}-component image: a mask needs one value "
                               "per voxel")
    check_finite(image, path)
    mask = sitk.Cast(image != 0, sitk.sitkUInt8)
    node = segmentationNodeFromLabelmap(mask, scene, name=Path(path).name.split(".")[0],
                                        segments=[SegmentSpec(1, segmentName, (0.9, 0.2, 0.15))])
    node.SetAttribute(SOURCE_ATTRIBUTE, Path(path).name)
    return node


# --- transforms -------------------------------------------------------------------------------

def transformNodeFromSitk(transform: sitk.Transform, scene=None, name: str = "Transform", node=None,
                          provenance: Optional[dict] = None):
    """Transform node whose from-parent transform is the ITK (fixed->moving, LPS) map in RAS.

    Put the *moving* volume under this node to see it aligned with the fixed volume.
    """
    scene = defaultScene(scene)
    if transform.IsLinear():
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
        matrix = geometry.conjugate_lps_ras(geometry.linear_matrix_lps(transform))
        node.SetMatrixTransformFromParent(vtkMatrixFromArray(matrix))
    else:
        if node is None:
            className = "vtkMRMLBSplineTransformNode" if _isBSpline(transform) else "vtkMRMLGridTransformNode"
            node = scene.AddNewNodeByClass(className, name)
        with tempfile.TemporaryDirectory(prefix="medanalysis-tfm-") as folder:
            filename = os.path.join(folder, "transform.h5")
            sitk.WriteTransform(transform, filename)
            storage = slicer.vtkMRMLTransformStorageNode()
            storage.SetFileName(filename)
            if not storage.ReadData(node):
                raise RuntimeError("Slicer could not read the transform written by SimpleITK")
        _useItkInterpolation(node)
    if provenance is not None:
        setProvenance(node, provenance)
    return node


def _useItkInterpolation(node) -> None:
    """ITK interpolates displacement fields linearly; Slicer's grid transforms default to cubic."""
    vtkTransform = node.GetTransformFromParent()
    if vtkTransform is not None and hasattr(vtkTransform, "SetInterpolationModeToLinear"):
        vtkTransform.SetInterpolationModeToLinear()


def _isBSpline(transform: sitk.Transform) -> bool:
    try:
        return "BSpline" in transform.GetName()
    except Exception:  # noqa: BLE001 - composite transforms have no single name
        return False


def sitkTransformFromNode(transformNode) -> sitk.Transform:
    """ITK transform (fixed->moving, LPS) equal to the node's from-parent transform."""
    if transformNode.IsLinear():
        matrix = vtk.vtkMatrix4x4()
        transformNode.GetMatrixTransformFromParent(matrix)
        return geometry.affine_from_matrix_lps(geometry.conjugate_lps_ras(arrayFromVtkMatrix(matrix)))
    with tempfile.TemporaryDirectory(prefix="medanalysis-tfm-") as folder:
        filename = os.path.join(folder, "transform.h5")
        _writeTransformNode(transformNode, filename)
        return sitk.ReadTransform(filename)


def _writeTransformNode(transformNode, filename: str) -> None:
    storage = slicer.vtkMRMLTransformStorageNode()
    storage.SetFileName(filename)
    if not storage.WriteData(transformNode):
        raise RuntimeError(f"{filename}: Slicer could not write the transform")


def saveTransformNode(transformNode, path: "str | os.PathLike") -> Path:
    """Write the node as an ITK ``.tfm``/``.h5`` file (fixed->moving, LPS), atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        _writeTransformNode(transformNode, str(tmp))
    return path


def transformPointsFromParent(transformNode, pointsRas: np.ndarray) -> np.ndarray:
    """Apply the node's from-parent transform to (N, 3) RAS points."""
    return _applyVtkTransform(transformNode.GetTransformFromParent(), pointsRas)


def transformPointsToParent(transformNode, pointsRas: np.ndarray) -> np.ndarray:
    """Apply the node's to-parent transform to (N, 3) RAS points."""
    return _applyVtkTransform(transformNode.GetTransformToParent(), pointsRas)


def _applyVtkTransform(transform, pointsRas: np.ndarray) -> np.ndarray:
    return np.array([transform.TransformPoint(tuple(float(v) for v in p)) for p in np.asarray(pointsRas)])


# --- markups ---------------------------------------------------------------------------------

def markupsFromPoints(pointsRas: Sequence[Sequence[float]], labels: Sequence[str], scene=None,
                      name: str = "Points", node=None):
    """Markups point list with one control point per RAS point (mm), labelled."""
    scene = defaultScene(scene)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    node.RemoveAllControlPoints()
    for point, label in zip(pointsRas, labels):
        node.AddControlPoint(vtk.vtkVector3d(*(float(v) for v in point)), str(label))
    return node


def pointsFromMarkups(markupsNode) -> tuple[np.ndarray, list[str]]:
    count = markupsNode.GetNumberOfControlPoints()
    points = np.array([markupsNode.GetNthControlPointPosition(i) for i in range(count)]).reshape(count, 3)
    return points, [markupsNode.GetNthControlPointLabel(i) for i in range(count)]


# --- tables -----------------------------------------------------------------------------------

def tableNodeFromRows(rows: Sequence[dict], scene=None, name: str = "Table", columns: Optional[Sequence[str]] = None,
                      node=None):
    """Table node with one column per key; numeric columns become double arrays."""
    scene = defaultScene(scene)
    if columns is None:
        columns = []
        for row in rows:
            for key in row:
                if key not in columns:
                    columns.append(key)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = node.GetTable()
    table.Initialize()
    for column in columns:
        values = [row.get(column) for row in rows]
        numeric = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                      for v in values if v is not None) and any(v is not None for v in values)
        array = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        array.SetName(str(column))
        for value in values:
            if numeric:
                array.InsertNextValue(float("nan") if value is None else float(value))
            else:
                array.InsertNextValue("" if value is None else str(value))
        table.AddColumn(array)
    node.Modified()
    return node


def rowsFromTableNode(tableNode) -> list[dict]:
    table = tableNode.GetTable()
    columns = [table.GetColumn(c) for c in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for column in columns:
            value = column.GetValue(r)
            row[column.GetName()] = float(value) if isinstance(column, vtk.vtkDataArray) else str(value)
        rows.append(row)
    return rows
