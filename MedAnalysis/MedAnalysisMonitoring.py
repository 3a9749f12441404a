"""MedAnalysis Monitoring: lesion detection and baseline vs follow-up change with a readable report.

Thin Slicer module: the panel's parameter node (MedAnalysisMonitoringParameterNode, bound to the widgets
as in Slicer's scripted-module template) is read into MonitoringParameters and MonitoringLogic.monitor runs
once; clicking a row of the change table centres the views on that lesion. Research software, not for
clinical use.
"""

import dataclasses
import os

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MedAnalysisLib import gui

try:
    from typing import Annotated

    from slicer.parameterNodeWrapper import Default, WithinRange, parameterNodeWrapper
except ImportError:  # Slicer < 5.4: the panel is stored with gui.saveParameters / gui.loadParameters
    parameterNodeWrapper = None


class MedAnalysisMonitoring(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        gui.describeModule(self.parent, "Lesion monitoring", (
            "Registers the follow-up to the baseline, segments both (or uses your segmentations), detects lesions "
            "(26-connected components), matches them across time and classifies each as new, grown, shrunk, stable "
            "or vanished; writes an HTML report."),
            "Built on SimpleITK, MONAI and 3D Slicer.")


def _defaultReportDir() -> str:
    return os.path.join(slicer.app.temporaryPath, "MedAnalysisReport")


if parameterNodeWrapper is not None:
    def _declared(field: str, scale: float = 1.0):
        """Default from the MonitoringParameters declaration (no default lives in the .ui), imported when the
        parameter node is first created."""
        def generator():
            from MedAnalysisLib.core.monitoring_parameters import MonitoringParameters

            value = getattr(MonitoringParameters(), field)
            return value * scale if scale != 1.0 else value

        return Default(generator=generator)

    @parameterNodeWrapper
    class MedAnalysisMonitoringParameterNode:
        """The panel's inputs, thresholds and report folder, saved with the scene (names differ from the
        MonitoringParameters fields that gui.saveParameters stores on older Slicer)."""

        baselineVolume: slicer.vtkMRMLScalarVolumeNode
        followupVolume: slicer.vtkMRMLScalarVolumeNode
        baselineSegmentation: slicer.vtkMRMLSegmentationNode
        followupSegmentation: slicer.vtkMRMLSegmentationNode
        lesionSegment: Annotated[str, _declared("lesionSegmentName")]
        minLesionMl: Annotated[float, WithinRange(0.0, 10.0), _declared("min_lesion_ml")]
        relativeChangePercent: Annotated[float, WithinRange(0.0, 500.0), _declared("relative_change", 100.0)]
        absoluteChangeMl: Annotated[float, WithinRange(0.0, 10.0), _declared("absolute_change_ml")]
        reportDir: Annotated[str, Default(generator=_defaultReportDir)]
else:
    MedAnalysisMonitoringParameterNode = None


class MedAnalysisMonitoringWidget(gui.ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self.outputs = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.ui = gui.loadPanel(self, "MedAnalysisMonitoring")
        self.logic = MedAnalysisMonitoringLogic()
        # the parameter node is reset when the scene closes
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.openReportButton.connect("clicked(bool)", self.onOpenReport)
        self.ui.changeTableWidget.connect("cellClicked(int,int)", self.onRowClicked)
        if MedAnalysisMonitoringParameterNode is None:  # Slicer without parameterNodeWrapper
            for selector in (self.ui.baselineSelector, self.ui.followupSelector):
                selector.connect("currentNodeChanged(vtkMRMLNode*)", self._checkCanApply)
            self.ui.reportDirLineEdit.text = _defaultReportDir()
            self.restoreParameters()
        self.initializeParameterNode()

    def initializeParameterNode(self):
        """Ensure the parameter node exists and is observed; select the first two volumes when none are."""
        if MedAnalysisMonitoringParameterNode is None:
            self._checkCanApply()
            return
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        volumes = gui.sceneNodes("vtkMRMLScalarVolumeNode")
        if not p.baselineVolume and volumes:
            p.baselineVolume = volumes[0]
        if not p.followupVolume:
            others = [volume for volume in volumes if volume is not p.baselineVolume]
            if others:
                p.followupVolume = others[0]

    def _parameters(self):
        """The panel's parameters: the parameter node or, on Slicer without parameterNodeWrapper, the widgets'
        values by the same names."""
        return self._parameterNode or gui.panelValues(self.ui)

    def _checkCanApply(self, caller=None, event=None):
        p = self._parameters()
        if not p.baselineVolume or not p.followupVolume:
            missing = "Select the baseline and the follow-up volume."
        elif p.baselineVolume is p.followupVolume:
            missing = "Select two different volumes."
        else:
            missing = ""
        gui.enableButton(self.ui.applyButton, missing)
        hasReport = self.outputs is not None and self.outputs.reportPath is not None
        gui.enableButton(self.ui.openReportButton, "" if hasReport else "Run the monitoring first (with a report folder).")

    def restoreParameters(self):
        """Slicer without parameterNodeWrapper: the widgets show the stored parameters, else the declared
        defaults (no default lives in the .ui)."""
        from MedAnalysisLib.logic.monitoringlogic import MonitoringParameters

        parameters = gui.loadParameters(self.logic.getParameterNode(), MonitoringParameters)
        self.ui.lesionSegmentLineEdit.text = parameters.lesionSegmentName
        self.ui.minLesionSpinBox.value = parameters.min_lesion_ml
        self.ui.relativeChangeSpinBox.value = parameters.relative_change * 100.0
        self.ui.absoluteChangeSpinBox.value = parameters.absolute_change_ml

    def readParameters(self):
        from MedAnalysisLib.logic.monitoringlogic import MonitoringParameters

        p = self._parameters()
        # the settings the panel does not show: declared defaults (older Slicer: as stored by the last Apply)
        stored = (MonitoringParameters() if self._parameterNode
                  else gui.loadParameters(self.logic.getParameterNode(), MonitoringParameters))
        return dataclasses.replace(stored, lesionSegmentName=p.lesionSegment.strip() or "Lesion",
                                   min_lesion_ml=p.minLesionMl, relative_change=p.relativeChangePercent / 100.0,
                                   absolute_change_ml=p.absoluteChangeMl).validate()

    def onApplyButton(self):
        p = self._parameters()
        parameters = self.readParameters()
        if self._parameterNode is None:
            gui.saveParameters(self.logic.getParameterNode(), parameters)
        outputs = gui.runWithProgress("Lesion monitoring", lambda progress, cancel: self.logic.monitor(
            p.baselineVolume, p.followupVolume, parameters, p.baselineSegmentation, p.followupSegmentation,
            reportDir=p.reportDir.strip() or None, progress=progress, cancel=cancel))
        if outputs is None:
            return
        self.outputs = outputs
        self._checkCanApply()
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


class MedAnalysisMonitoringLogic(ScriptedLoadableModuleLogic):
    """Slicer logic wrapper around MedAnalysisLib.logic.monitoringlogic.MonitoringLogic (imported lazily
    so that the module loads before torch/MONAI are installed)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        from MedAnalysisLib.logic.monitoringlogic import MonitoringLogic

        self._logic = MonitoringLogic(slicer.mrmlScene)

    def getParameterNode(self):
        """The module's parameter node: typed (MedAnalysisMonitoringParameterNode) where Slicer has
        parameterNodeWrapper, else the plain vtkMRMLScriptedModuleNode."""
        node = ScriptedLoadableModuleLogic.getParameterNode(self)
        return MedAnalysisMonitoringParameterNode(node) if MedAnalysisMonitoringParameterNode else node

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
