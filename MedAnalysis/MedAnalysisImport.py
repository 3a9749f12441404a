"""MedAnalysis Import: DICOM folders, ZIP archives, DICOMDIRs and NIfTI / NRRD / MHA files into
volumes, with geometry QA and optional de-identification.

Thin Slicer module: the panel's parameter node (MedAnalysisImportParameterNode, bound to the widgets as in
Slicer's scripted-module template) is read into ImportParameters and ImportLogic runs (scan, then load).
Research software, not for clinical use.
"""

import json
import os

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MedAnalysisLib import gui
from MedAnalysisLib.logic.importlogic import ImportLogic, ImportParameters

try:
    from slicer.parameterNodeWrapper import parameterNodeWrapper
except ImportError:  # Slicer < 5.4: the panel is stored with gui.saveParameters / gui.loadParameters
    parameterNodeWrapper = None

COLUMNS = ["Series", "Modality", "Description", "Date", "Files", "Size", "Spacing (mm)", "Warnings"]


class MedAnalysisImport(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        gui.describeModule(self.parent, "Import", (
            "Scan a folder, ZIP archive or DICOMDIR (headers only), pick series and load them as volumes. "
            "Slices are ordered by position; rescale, multi-frame, compressed syntaxes, MONOCHROME1 and colour are "
            "handled; gantry tilt, uneven spacing and missing slices are reported and regularized. Optional "
            "de-identification (DICOM PS3.15 Annex E basic profile). NIfTI / NRRD / MHA files load the same way."),
            "Built on pydicom, dicom-anonymizer's Annex E table, SimpleITK and 3D Slicer.")


if parameterNodeWrapper is not None:
    _DEFAULTS = ImportParameters()

    @parameterNodeWrapper
    class MedAnalysisImportParameterNode:
        """The panel's source and options, saved with the scene (names differ from the ImportParameters
        fields that gui.saveParameters stores on older Slicer). The series picked in the table are not
        kept: they belong to one scan."""

        sourcePath: str = ""  # bound explicitly (ctkPathLineEdit)
        deidentify: bool = _DEFAULTS.anonymize
        regularizeGeometry: bool = _DEFAULTS.regularize_geometry
        exportDicomDir: str = _DEFAULTS.export_dicom_dir  # bound explicitly (ctkPathLineEdit)
else:
    MedAnalysisImportParameterNode = None


class MedAnalysisImportWidget(gui.ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.ui = gui.loadPanel(self, "MedAnalysisImport")
        self.logic = MedAnalysisImportLogic()
        self.ui.seriesTableWidget.setColumnCount(len(COLUMNS))
        self.ui.seriesTableWidget.setHorizontalHeaderLabels(COLUMNS)
        # the parameter node is reset when the scene closes
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.chooseFolderButton.connect("clicked(bool)", self.onChooseFolder)
        self.ui.chooseFileButton.connect("clicked(bool)", self.onChooseFile)
        self.ui.scanButton.connect("clicked(bool)", self.onScanButton)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        if MedAnalysisImportParameterNode is None:  # Slicer without parameterNodeWrapper
            self.ui.sourcePathLineEdit.connect("currentPathChanged(QString)", self._checkCanApply)
            parameters = gui.loadParameters(self.logic.getParameterNode(), ImportParameters)
            self.ui.anonymizeCheckBox.checked = parameters.anonymize
            self.ui.regularizeCheckBox.checked = parameters.regularize_geometry
            self.ui.exportPathLineEdit.currentPath = parameters.export_dicom_dir
        self.initializeParameterNode()

    def initializeParameterNode(self):
        """Ensure the parameter node exists and is observed."""
        if MedAnalysisImportParameterNode is None:
            self._checkCanApply()
            return
        self.setParameterNode(self.logic.getParameterNode())

    def explicitConnectors(self) -> dict:
        """The two path fields are bound explicitly."""
        return {"sourcePath": gui.pathLineEditConnector(self.ui.sourcePathLineEdit),
                "exportDicomDir": gui.pathLineEditConnector(self.ui.exportPathLineEdit)}

    def _parameters(self):
        """The panel's parameters: the parameter node or, on Slicer without parameterNodeWrapper, the widgets'
        values by the same names."""
        return self._parameterNode or gui.panelValues(self.ui, sourcePath=self.ui.sourcePathLineEdit.currentPath,
                                                      exportDicomDir=self.ui.exportPathLineEdit.currentPath)

    def _checkCanApply(self, caller=None, event=None):
        source = self._parameters().sourcePath.strip()
        if not source:
            missing = "Choose a folder, ZIP archive, DICOMDIR or image file."
        elif not os.path.exists(source):
            missing = f"Not found: {source}"
        else:
            missing = ""
        gui.enableButton(self.ui.scanButton, missing)
        gui.enableButton(self.ui.applyButton, missing)

    def onChooseFolder(self):
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "DICOM folder")
        if folder:
            self.ui.sourcePathLineEdit.currentPath = folder
            self.onScanButton()

    def onChooseFile(self):
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "ZIP archive, DICOMDIR or image file", "",
                                              "ZIP, DICOM or images (*.zip *.dcm DICOMDIR *.nii *.nii.gz *.nrrd "
                                              "*.mha *.mhd);;All files (*)")
        if path:
            self.ui.sourcePathLineEdit.currentPath = path
            self.onScanButton()

    def onScanButton(self):
        source = self._parameters().sourcePath.strip()
        report = gui.runWithProgress("Scan", lambda progress, cancel: self.logic.scan(source, progress, cancel))
        table = self.ui.seriesTableWidget
        table.setRowCount(0)
        if report is None:
            return
        rows = []
        for series in report["series"]:
            for volume in series["volumes"]:
                spacing = ", ".join(f"{v:.3g}" for v in volume["spacing_mm"])
                label = f" [{volume['label']}]" if volume["label"] else ""
                rows.append((volume["id"], [f"{series['series_number']}{label}", series["modality"],
                                            series["description"], series["date"], str(series["files"]),
                                            "x".join(str(v) for v in volume["size"]), spacing,
                                            "; ".join(series["warnings"] + volume["warnings"])]))
        for image in report["image_files"]:
            rows.append((image["file"], [image["file"], "image", "", "", "1",
                                         "x".join(str(v) for v in image.get("size", [])), "",
                                         image.get("error", "")]))
        table.setRowCount(len(rows))
        for row, (identifier, cells) in enumerate(rows):
            for column, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                item.setData(qt.Qt.UserRole, identifier)
                table.setItem(row, column, item)
        table.resizeColumnsToContents()
        skipped = len(report["skipped"])
        self.ui.statusLabel.text = (f"{len(rows)} volume(s) in {len(report['series'])} series"
                                    + (f"; {skipped} file(s) skipped" if skipped else ""))

    def selectedIds(self):
        table = self.ui.seriesTableWidget
        rows = sorted({index.row() for index in table.selectionModel().selectedRows()})
        return [table.item(row, 0).data(qt.Qt.UserRole) for row in rows]

    def readParameters(self) -> ImportParameters:
        p = self._parameters()
        return ImportParameters(series_uid=" ".join(self.selectedIds()), anonymize=p.deidentify,
                                regularize_geometry=p.regularizeGeometry,
                                export_dicom_dir=p.exportDicomDir.strip() if p.deidentify else "")

    def onApplyButton(self):
        source = self._parameters().sourcePath.strip()
        parameters = self.readParameters()
        if self._parameterNode is None:
            gui.saveParameters(self.logic.getParameterNode(), parameters)
        nodes = gui.runWithProgress("Import", lambda progress, cancel: self.logic.load(
            source, parameters, progress=progress, cancel=cancel))
        if not nodes:
            return
        slicer.util.setSliceViewerLayers(background=nodes[0], fit=True)
        self.ui.statusLabel.text = f"Loaded {len(nodes)} volume(s): " + ", ".join(n.GetName() for n in nodes)
        self.ui.warningsTextEdit.setPlainText("\n".join(self.logic.lastWarnings) or "No geometry warnings.")


class MedAnalysisImportLogic(ScriptedLoadableModuleLogic, ImportLogic):
    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        ImportLogic.__init__(self, slicer.mrmlScene)

    def getParameterNode(self):
        """The module's parameter node: typed (MedAnalysisImportParameterNode) where Slicer has
        parameterNodeWrapper, else the plain vtkMRMLScriptedModuleNode."""
        node = ScriptedLoadableModuleLogic.getParameterNode(self)
        return MedAnalysisImportParameterNode(node) if MedAnalysisImportParameterNode else node


class MedAnalysisImportTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_load_synthetic_oblique_series()

    def test_load_synthetic_oblique_series(self):
        import tempfile

        import numpy as np
        import pydicom
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid

        values = (np.arange(5 * 12 * 10).reshape(5, 12, 10) % 300).astype(np.int16)
        row, column = np.array([0.8, 0.6, 0.0]), np.array([0.0, 0.0, -1.0])
        normal = np.cross(row, column)
        study, series = generate_uid(), generate_uid()
        with tempfile.TemporaryDirectory() as folder:
            for k in [3, 0, 4, 1, 2]:  # written out of order, InstanceNumber unrelated to position
                ds = Dataset()
                ds.file_meta = FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber = study, series, "MR", 2
                ds.InstanceNumber = 100 - 7 * k
                ds.ImagePositionPatient = [float(v) for v in (np.array([10.0, -5.0, 30.0]) + 2.5 * k * normal)]
                ds.ImageOrientationPatient = [*row, *column]
                ds.PixelSpacing = [0.7, 0.9]
                ds.Rows, ds.Columns = values.shape[1:]
                ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
                ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
                ds.PixelData = values[k].tobytes()
                pydicom.dcmwrite(f"{folder}/file{k * 13 % 7}.dcm", ds, enforce_file_format=True)
            nodes = MedAnalysisImportLogic().load(folder, ImportParameters(anonymize=True))
        self.assertEqual(len(nodes), 1)
        node = nodes[0]
        self.assertEqual(node.GetName(), "MR_2")
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(node), values))
        self.assertTrue(np.allclose(node.GetSpacing(), (0.9, 0.7, 2.5)))
        self.assertEqual(json.loads(node.GetAttribute("MedAnalysis.ImportWarnings")), [])
        self.delayDisplay("Import test passed")
