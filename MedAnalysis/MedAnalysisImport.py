"""MedAnalysis Import: DICOM folders, ZIP archives, DICOMDIRs and NIfTI / NRRD / MHA files into
volumes, with geometry QA and optional de-identification.

Thin Slicer module: the panel reads its widgets into ImportParameters and calls ImportLogic
(scan, then load). Research software, not for clinical use.
"""

import json

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MedAnalysisLib import gui
from MedAnalysisLib.logic.importlogic import ImportLogic, ImportParameters

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


class MedAnalysisImportWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.ui = gui.loadPanel(self, "MedAnalysisImport")
        self.logic = MedAnalysisImportLogic()
        self.ui.seriesTableWidget.setColumnCount(len(COLUMNS))
        self.ui.seriesTableWidget.setHorizontalHeaderLabels(COLUMNS)
        self.ui.chooseFolderButton.connect("clicked(bool)", self.onChooseFolder)
        self.ui.chooseFileButton.connect("clicked(bool)", self.onChooseFile)
        self.ui.scanButton.connect("clicked(bool)", self.onScanButton)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        parameters = gui.loadParameters(self.logic.getParameterNode(), ImportParameters)
        self.ui.anonymizeCheckBox.checked = parameters.anonymize
        self.ui.regularizeCheckBox.checked = parameters.regularize_geometry
        self.ui.exportPathLineEdit.currentPath = parameters.export_dicom_dir

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
        source = self.ui.sourcePathLineEdit.currentPath
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

    def onApplyButton(self):
        source = self.ui.sourcePathLineEdit.currentPath
        parameters = ImportParameters(series_uid=" ".join(self.selectedIds()),
                                      anonymize=self.ui.anonymizeCheckBox.checked,
                                      regularize_geometry=self.ui.regularizeCheckBox.checked,
                                      export_dicom_dir=self.ui.exportPathLineEdit.currentPath
                                      if self.ui.anonymizeCheckBox.checked else "")
        gui.saveParameters(self.logic.getParameterNode(), parameters)
        nodes = gui.runWithProgress("Import", lambda progress, cancel: self.logic.load(
            source, parameters, progress=progress, cancel=cancel))
        if not nodes:
            return
        slicer.util.setSliceViewerLayers(background=nodes[0], fit=True)
        self.ui.statusLabel.text = f"Loaded {len(nodes)} volume(s): " + ", ".join(n.GetName() for n in nodes)
        self.ui.warningsTextEdit.setPlainText("\n".join(self.logic.lastWarnings) or "No geometry warnings.")

    def onReload(self):
        gui.reloadLibrary()
        ScriptedLoadableModuleWidget.onReload(self)


class MedAnalysisImportLogic(ScriptedLoadableModuleLogic, ImportLogic):
    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        ImportLogic.__init__(self, slicer.mrmlScene)


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
