"""MedAnalysis Monitoring: lesion detection and baseline vs follow-up change with a readable report.

Thin Slicer module: the panel reads its widgets into MonitoringParameters and calls
MonitoringLogic.monitor once; clicking a row of the change table centres the views on that
lesion. Research software, not for clinical use.
"""

import dataclasses
import os

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MedAnalysisLib import gui


class MedAnalysisMonitoring(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        gui.describeModule(self.parent, "Lesion monitoring", (
            "Registers the follow-up to the baseline, segments both (or uses your segmentations), detects lesions "
            "(26-connected components), matches them across time and classifies each as new, grown, shrunk, stable "
            "or vanished; writes an HTML report."),
            "Built on SimpleITK, MONAI and 3D Slicer.")


class MedAnalysisMonitoringWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.outputs = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.ui = gui.loadPanel(self, "MedAnalysisMonitoring")
        self.ui.reportDirLineEdit.text = os.path.join(slicer.app.temporaryPath, "MedAnalysisReport")
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.openReportButton.connect("clicked(bool)", self.onOpenReport)
        self.ui.changeTableWidget.connect("cellClicked(int,int)", self.onRowClicked)
        self.restoreParameters()

    def restoreParameters(self):
        """The widgets show the stored parameters, else the declared defaults (no default lives in the .ui)."""
        from MedAnalysisLib.logic.monitoringlogic import MonitoringParameters

        if self.logic is None:
            self.logic = MedAnalysisMonitoringLogic()
        parameters = gui.loadParameters(self.logic.getParameterNode(), MonitoringParameters)
        self.ui.lesionSegmentLineEdit.text = parameters.lesionSegmentName
        self.ui.minLesionSpinBox.value = parameters.min_lesion_ml
        self.ui.relativeChangeSpinBox.value = parameters.relative_change * 100.0
        self.ui.absoluteChangeSpinBox.value = parameters.absolute_change_ml

    def readParameters(self):
        from MedAnalysisLib.logic.monitoringlogic import MonitoringParameters

        stored = gui.loadParameters(self.logic.getParameterNode() if self.logic else None, MonitoringParameters)
        return dataclasses.replace(stored, lesionSegmentName=self.ui.lesionSegmentLineEdit.text.strip() or "Lesion",
                                   min_lesion_ml=self.ui.minLesionSpinBox.value,
                                   relative_change=self.ui.relativeChangeSpinBox.value / 100.0,
                                   absolute_change_ml=self.ui.absoluteChangeSpinBox.value).validate()

    def onApplyButton(self):
        if self.logic is None:
            self.logic = MedAnalysisMonitoringLogic()
        parameters = self.readParameters()
        gui.saveParameters(self.logic.getParameterNode(), parameters)
        outputs = gui.runWithProgress("Lesion monitoring", lambda progress, cancel: self.logic.monitor(
            self.ui.baselineSelector.currentNode(), self.ui.followupSelector.currentNode(), parameters,
            self.ui.baselineSegmentationSelector.currentNode(), self.ui.followupSegmentationSelector.currentNode(),
            reportDir=self.ui.reportDirLineEdit.text, progress=progress, cancel=cancel))
        if outputs is None:
            return
        self.outputs = outputs
        self.showTable(outputs.result["lesions"])
        summary = outputs.result["summary"]
        self.ui.statusLabel.text = (f"{summary['lesions_baseline']} -> {summary['lesions_followup']} lesions, burden "
                                    f"{summary['burden_baseline_ml']:.2f} -> {summary['burden_followup_ml']:.2f} mL. "
                                    + " ".join(outputs.warnings))

    def showTable(self, lesions):
        columns = ["id", "status", "volume_baseline_ml", "volume_followup_ml", "volume_change_ml"]
        table = self.ui.changeTableWidget
        table.setColumnCount(len(columns))
        table.setHorizontalHeaderLabels(columns)
        table.setRowCount(len(lesions))
        for row, lesion in enumerate(lesions):
            for column, key in enumerate(columns):
                table.setItem(row, column, qt.QTableWidgetItem(str(lesion[key])))

    def onRowClicked(self, row, column):
        if self.outputs is None:
            return
        position = self.outputs.result["lesions"][row]["centroid_ras"]
        slicer.modules.markups.logic().JumpSlicesToLocation(*position, True)

    def onOpenReport(self):
        if self.outputs is not None and self.outputs.reportPath is not None:
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(self.outputs.reportPath)))

    def onReload(self):
        gui.reloadLibrary()
        ScriptedLoadableModuleWidget.onReload(self)


class MedAnalysisMonitoringLogic(ScriptedLoadableModuleLogic):
    """Slicer logic wrapper around MedAnalysisLib.logic.monitoringlogic.MonitoringLogic (imported lazily
    so that the module loads before torch/MONAI are installed)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        from MedAnalysisLib.logic.monitoringlogic import MonitoringLogic

        self._logic = MonitoringLogic(slicer.mrmlScene)

    def monitor(self, *args, **kwargs):
        return self._logic.monitor(*args, **kwargs)


class MedAnalysisMonitoringTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_sample_pair_with_truth_segmentations()

    def test_sample_pair_with_truth_segmentations(self):
        import SimpleITK as sitk

        from MedAnalysisLib import mrml, resources
        from MedAnalysisLib.core.labels import SegmentSpec

        scene = slicer.mrmlScene
        baseline = mrml.loadVolumeNode(resources.samplePath("study_baseline_t1.nii.gz"), scene)
        followup = mrml.loadVolumeNode(resources.samplePath("study_followup_t1.nii.gz"), scene)
        segments = []
        for name in ("study_baseline_lesions.nii.gz", "study_followup_lesions.nii.gz"):
            mask = sitk.Cast(sitk.ReadImage(str(resources.samplePath(name))) > 0, sitk.sitkUInt8)
            segments.append(mrml.segmentationNodeFromLabelmap(mask, scene, segments=[SegmentSpec(1, "Lesion")]))
        outputs = MedAnalysisMonitoringLogic().monitor(baseline, followup, None, *segments)
        self.assertGreater(len(outputs.result["lesions"]), 0)
        self.delayDisplay("Monitoring test passed")
