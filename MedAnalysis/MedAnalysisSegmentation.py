"""MedAnalysis Segmentation: MONAI deep-learning segmentation into a segmentation node.

Thin Slicer module: the panel's parameter node (MedAnalysisSegmentationParameterNode, bound to the widgets
as in Slicer's scripted-module template) is read into SegmentationParameters and SegmentationLogic.segment
runs once. torch comes from the PyTorch extension (PyTorchUtils). Research software, not for clinical use.
"""

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MedAnalysisLib import gui

try:
    from typing import Annotated

    from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
except ImportError:  # Slicer < 5.4: the parameters are stored with gui.saveParameters
    parameterNodeWrapper = None

# the panel's choices and defaults (the .ui lists them; MedAnalysisLib is imported only when a model runs)
DEVICES = ("auto", "cpu", "cuda")
BRAIN_MASK_MODES = ("auto", "off")


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


if parameterNodeWrapper is not None:
    @parameterNodeWrapper
    class MedAnalysisSegmentationParameterNode:
        """The panel's inputs, outputs and settings (segmentation, brain extraction, DICOM export), saved with
        the scene (names differ from the SegmentationParameters fields that gui.saveParameters stores on
        older Slicer)."""

        inputVolume: slicer.vtkMRMLScalarVolumeNode
        modelName: str = ""  # bound explicitly: the combo box lists the model catalog
        modelPath: str = ""
        trustedModel: bool = False
        brainMaskMode: Annotated[str, Choice(BRAIN_MASK_MODES)] = "auto"
        computeDevice: Annotated[str, Choice(DEVICES)] = "auto"
        flipAugmentation: bool = False
        probabilityMaps: bool = False
        outputSegmentation: slicer.vtkMRMLSegmentationNode
        # brain extraction
        maskedVolumeOutput: bool = False
        # DICOM export
        dicomReferenceDir: str = ""
        dicomSeriesUid: str = ""
        dicomReportDir: str = ""
        dicomExportDir: str = ""
        loadExportedDicom: bool = True
else:
    MedAnalysisSegmentationParameterNode = None


class MedAnalysisSegmentationWidget(gui.ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.ui = gui.loadPanel(self, "MedAnalysisSegmentation")
        from MedAnalysisLib import resources
        from MedAnalysisLib.core.segment.models import load_catalog

        for entry in load_catalog(resources.modelsDir()).get("models", []):
            self.ui.modelComboBox.addItem(entry["name"])
        self.logic = MedAnalysisSegmentationLogic()  # light: the segmentation logic is imported on first use
        # the parameter node is reset when the scene closes
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.brainButton.connect("clicked(bool)", self.onBrainButton)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicomButton)
        if MedAnalysisSegmentationParameterNode is None:  # Slicer without parameterNodeWrapper
            for selector in (self.ui.inputSelector, self.ui.outputSelector):
                selector.connect("currentNodeChanged(vtkMRMLNode*)", self._checkCanApply)
            for lineEdit in (self.ui.referenceDirLineEdit, self.ui.exportDirLineEdit):
                lineEdit.connect("textChanged(QString)", self._checkCanApply)
        self.initializeParameterNode()

    def initializeParameterNode(self):
        """Ensure the parameter node exists and is observed; select the first volume and the first catalog
        model when none is."""
        if MedAnalysisSegmentationParameterNode is None:
            self._checkCanApply()
            return
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.inputVolume:
            volumes = gui.sceneNodes("vtkMRMLScalarVolumeNode")
            if volumes:
                p.inputVolume = volumes[0]
        if not p.modelName and self.ui.modelComboBox.count:
            p.modelName = self.ui.modelComboBox.currentText

    def explicitConnectors(self) -> dict:
        """The model combo box (filled at run time) is bound explicitly."""
        return {"modelName": gui.comboBoxTextConnector(self.ui.modelComboBox)}

    def _parameters(self):
        """The panel's parameters: the parameter node or, on Slicer without parameterNodeWrapper, the widgets'
        values by the same names."""
        return self._parameterNode or gui.panelValues(self.ui, modelName=self.ui.modelComboBox.currentText)

    def _checkCanApply(self, caller=None, event=None):
        p = self._parameters()
        noInput = "" if p.inputVolume else "Select an input volume."
        noModel = "" if p.modelPath.strip() or p.modelName else "Choose a model (catalog or file)."
        gui.enableButton(self.ui.applyButton, noInput or noModel)
        gui.enableButton(self.ui.brainButton, noInput)
        if not p.outputSegmentation:
            missing = "Select the segmentation to export (Outputs)."
        elif not p.dicomReferenceDir.strip():
            missing = "Enter the source DICOM folder."
        elif not p.dicomExportDir.strip():
            missing = "Enter the output folder."
        else:
            missing = ""
        gui.enableButton(self.ui.exportDicomButton, missing)

    def readParameters(self):
        from MedAnalysisLib.logic.segmentationlogic import SegmentationParameters

        p = self._parameters()
        return SegmentationParameters(model=p.modelPath.strip() or p.modelName, device=p.computeDevice,
                                      tta=p.flipAugmentation, trusted=p.trustedModel, probabilities=p.probabilityMaps,
                                      brainMask=p.brainMaskMode)

    def onBrainButton(self):
        from MedAnalysisLib import dependencies
        from MedAnalysisLib.logic.brainlogic import BrainExtractionLogic, BrainExtractionParameters

        if not dependencies.ensureDependencies(needTorch=True):
            return
        p = self._parameters()
        parameters = BrainExtractionParameters(device=p.computeDevice, maskedVolume=p.maskedVolumeOutput)
        outputs = gui.runWithProgress("Brain extraction", lambda progress, cancel: BrainExtractionLogic(
            slicer.mrmlScene).extractBrain(p.inputVolume, parameters, progress=progress, cancel=cancel))
        if outputs is not None:
            self.ui.statusLabel.text = f"Brain volume {outputs.volumeMl:.1f} mL ({outputs.device})."

    def onExportDicomButton(self):
        from MedAnalysisLib import dependencies
        from MedAnalysisLib.logic.dicomexportlogic import DicomExportLogic, DicomExportParameters

        if not dependencies.ensureDependencies():
            return
        p = self._parameters()
        parameters = DicomExportParameters(seriesUid=p.dicomSeriesUid.strip(), reportDir=p.dicomReportDir.strip())
        logic = DicomExportLogic(slicer.mrmlScene)
        result = gui.runWithProgress("DICOM export", lambda progress, cancel: logic.exportSegmentation(
            p.outputSegmentation, p.dicomReferenceDir.strip(), p.dicomExportDir.strip(), parameters,
            progress=progress, cancel=cancel))
        if result is None:
            return
        if p.loadExportedDicom:
            logic.loadIntoSlicerDicomDatabase([result[key] for key in ("seg", "sr") if key in result])
        self.ui.statusLabel.text = (f"Wrote {result['seg']} ({len(result['segments'])} segments, {result['frames']} "
                                    "frames)" + (f" and {result['sr']}" if "sr" in result else "") + ".")

    def onApplyButton(self):
        from MedAnalysisLib import dependencies

        if not dependencies.ensureDependencies(needTorch=True):
            return
        p = self._parameters()
        parameters = self.readParameters()
        if self._parameterNode is None:
            gui.saveParameters(self.logic.getParameterNode(), parameters)
        outputs = gui.runWithProgress("Segmentation", lambda progress, cancel: self.logic.segment(
            p.inputVolume, parameters, outputSegmentationNode=p.outputSegmentation, progress=progress, cancel=cancel))
        if outputs is None:
            return
        self.ui.outputSelector.setCurrentNode(outputs.segmentationNode)
        self.ui.statusLabel.text = (f"{outputs.modelName} on {outputs.device}: "
                                    f"{sum(outputs.seconds.values()):.1f} s. " + " ".join(outputs.messages))


def _segmentationLogicClass():
    from MedAnalysisLib.logic.segmentationlogic import SegmentationLogic

    return SegmentationLogic


class MedAnalysisSegmentationLogic(ScriptedLoadableModuleLogic):
    """Slicer logic wrapper; the work is done by MedAnalysisLib.logic.segmentationlogic.SegmentationLogic
    (imported on first use so that the module loads, and its parameter node exists, before torch/MONAI are
    installed)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._logic = None

    def getParameterNode(self):
        """The module's parameter node: typed (MedAnalysisSegmentationParameterNode) where Slicer has
        parameterNodeWrapper, else the plain vtkMRMLScriptedModuleNode."""
        node = ScriptedLoadableModuleLogic.getParameterNode(self)
        return MedAnalysisSegmentationParameterNode(node) if MedAnalysisSegmentationParameterNode else node

    def segment(self, *args, **kwargs):
        if self._logic is None:
            self._logic = _segmentationLogicClass()(slicer.mrmlScene)
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
