"""MedAnalysis Segmentation: MONAI deep-learning segmentation into a segmentation node.

Thin Slicer module: the panel reads its widgets into SegmentationParameters and calls
SegmentationLogic.segment once. torch comes from the PyTorch extension (PyTorchUtils).
Research software, not for clinical use.
"""

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MedAnalysisLib import gui


class MedAnalysisSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        gui.describeModule(self.parent, "Segmentation (deep learning)", (
            "Segments brain MR volumes into cerebrospinal fluid, gray matter, white matter and lesions with the "
            "shipped MONAI model (trained on synthetic data from the MNI ICBM152 template), or with your own model "
            "(safetensors + JSON config; TorchScript and MONAI bundles only when marked trusted). The result is an "
            "editable segmentation. Brain extraction (deepbet, trained on real T1 scans) runs first by default "
            "and is available on its own as a brain mask segmentation."),
            "Built on MONAI, PyTorch and 3D Slicer.")


class MedAnalysisSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.ui = gui.loadPanel(self, "MedAnalysisSegmentation")
        from MedAnalysisLib import resources
        from MedAnalysisLib.core.segment.models import load_catalog

        for entry in load_catalog(resources.modelsDir()).get("models", []):
            self.ui.modelComboBox.addItem(entry["name"])
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.brainButton.connect("clicked(bool)", self.onBrainButton)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicomButton)

    def readParameters(self):
        from MedAnalysisLib.logic.segmentationlogic import SegmentationParameters

        path = self.ui.modelPathLineEdit.text.strip()
        return SegmentationParameters(model=path or self.ui.modelComboBox.currentText,
                                      device=self.ui.deviceComboBox.currentText, tta=self.ui.ttaCheckBox.checked,
                                      trusted=self.ui.trustedCheckBox.checked,
                                      probabilities=self.ui.probabilitiesCheckBox.checked,
                                      brainMask=self.ui.brainMaskComboBox.currentText)

    def onBrainButton(self):
        from MedAnalysisLib import dependencies
        from MedAnalysisLib.logic.brainlogic import BrainExtractionLogic, BrainExtractionParameters

        if not dependencies.ensureDependencies(needTorch=True):
            return
        parameters = BrainExtractionParameters(device=self.ui.deviceComboBox.currentText,
                                               maskedVolume=self.ui.maskedVolumeCheckBox.checked)
        outputs = gui.runWithProgress("Brain extraction", lambda progress, cancel: BrainExtractionLogic(
            slicer.mrmlScene).extractBrain(self.ui.inputSelector.currentNode(), parameters, progress=progress,
                                           cancel=cancel))
        if outputs is not None:
            self.ui.statusLabel.text = f"Brain volume {outputs.volumeMl:.1f} mL ({outputs.device})."

    def onExportDicomButton(self):
        from MedAnalysisLib import dependencies
        from MedAnalysisLib.logic.dicomexportlogic import DicomExportLogic, DicomExportParameters

        if not dependencies.ensureDependencies():
            return
        parameters = DicomExportParameters(seriesUid=self.ui.referenceSeriesLineEdit.text.strip(),
                                           reportDir=self.ui.reportDirLineEdit.text.strip())
        logic = DicomExportLogic(slicer.mrmlScene)
        result = gui.runWithProgress("DICOM export", lambda progress, cancel: logic.exportSegmentation(
            self.ui.outputSelector.currentNode(), self.ui.referenceDirLineEdit.text.strip(),
            self.ui.exportDirLineEdit.text.strip(), parameters, progress=progress, cancel=cancel))
        if result is None:
            return
        if self.ui.loadExportCheckBox.checked:
            logic.loadIntoSlicerDicomDatabase([result[key] for key in ("seg", "sr") if key in result])
        self.ui.statusLabel.text = (f"Wrote {result['seg']} ({len(result['segments'])} segments, {result['frames']} "
                                    "frames)" + (f" and {result['sr']}" if "sr" in result else "") + ".")

    def onApplyButton(self):
        from MedAnalysisLib import dependencies

        if not dependencies.ensureDependencies(needTorch=True):
            return
        if self.logic is None:
            self.logic = MedAnalysisSegmentationLogic()
        parameters = self.readParameters()
        gui.saveParameters(self.logic.getParameterNode(), parameters)
        outputs = gui.runWithProgress("Segmentation", lambda progress, cancel: self.logic.segment(
            self.ui.inputSelector.currentNode(), parameters, outputSegmentationNode=self.ui.outputSelector.currentNode(),
            progress=progress, cancel=cancel))
        if outputs is None:
            return
        self.ui.outputSelector.setCurrentNode(outputs.segmentationNode)
        self.ui.statusLabel.text = (f"{outputs.modelName} on {outputs.device}: "
                                    f"{sum(outputs.seconds.values()):.1f} s. " + " ".join(outputs.messages))

    def onReload(self):
        gui.reloadLibrary()
        ScriptedLoadableModuleWidget.onReload(self)


def _segmentationLogicClass():
    from MedAnalysisLib.logic.segmentationlogic import SegmentationLogic

    return SegmentationLogic


class MedAnalysisSegmentationLogic(ScriptedLoadableModuleLogic):
    """Slicer logic wrapper; the work is done by MedAnalysisLib.logic.segmentationlogic.SegmentationLogic
    (imported lazily so that the module loads before torch/MONAI are installed)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._logic = _segmentationLogicClass()(slicer.mrmlScene)

    def segment(self, *args, **kwargs):
        return self._logic.segment(*args, **kwargs)


class MedAnalysisSegmentationTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_default_model_on_sample()

    def test_default_model_on_sample(self):
        import numpy as np

        from MedAnalysisLib import mrml, resources

        node = mrml.loadVolumeNode(resources.samplePath("mni152_t1.nii.gz"), slicer.mrmlScene)
        outputs = MedAnalysisSegmentationLogic().segment(node)
        names = [s.name for s in mrml.segmentSpecs(outputs.segmentationNode)]
        self.assertIn("White matter", names)
        labels = slicer.util.arrayFromSegmentBinaryLabelmap(
            outputs.segmentationNode, outputs.segmentationNode.GetSegmentation().GetSegmentIdBySegmentName("White matter"), node)
        self.assertGreater(int(np.count_nonzero(labels)), 100000)
        self.delayDisplay("Segmentation test passed")
