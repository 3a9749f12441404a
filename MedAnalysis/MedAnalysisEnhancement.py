"""MedAnalysis Enhancement: denoising, bias-field correction, normalization, contrast, resampling.

Thin Slicer module: the panel's parameter node (MedAnalysisEnhancementParameterNode, bound to the widgets
as in Slicer's scripted-module template) is read into EnhancementParameters and EnhancementLogic.enhance
runs once. Research software, not for clinical use.
"""

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MedAnalysisLib import gui
from MedAnalysisLib.core.enhance import BIAS_METHODS, DENOISE_METHODS, NORMALIZE_METHODS, EnhancementParameters
from MedAnalysisLib.core.parameters import parse_spacing
from MedAnalysisLib.logic.enhancementlogic import EnhancementLogic

try:
    from typing import Annotated, Optional, Union

    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
except ImportError:  # Slicer < 5.4: the panel is stored with gui.saveParameters / gui.loadParameters
    parameterNodeWrapper = None

NONE = "(none)"  # combo box item for "no preset / step"


class MedAnalysisEnhancement(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        gui.describeModule(self.parent, "Enhancement", (
            "Denoising (Gaussian, median, curvature/gradient anisotropic diffusion, non-local means), "
            "bias-field correction (tissue-class-aware or N4), intensity normalization, CLAHE and resampling. "
            "Presets: mri-brain-t1, mri-generic, ct-soft-tissue, ct-lung. The input volume is not modified."),
            "Built on SimpleITK, scikit-image and 3D Slicer.")


if parameterNodeWrapper is not None:
    _DEFAULTS = EnhancementParameters()

    @parameterNodeWrapper
    class MedAnalysisEnhancementParameterNode:
        """The panel's inputs, outputs and settings, saved with the scene (names differ from the
        EnhancementParameters fields that gui.saveParameters stores on older Slicer)."""

        inputVolume: slicer.vtkMRMLScalarVolumeNode
        foregroundMask: Optional[Union[slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLSegmentationNode]]
        referenceVolume: slicer.vtkMRMLScalarVolumeNode
        outputVolume: slicer.vtkMRMLScalarVolumeNode
        presetName: Annotated[str, Choice((NONE, *EnhancementLogic.presets()))] = NONE
        biasCorrect: bool = _DEFAULTS.bias_correct
        biasMethod: Annotated[str, Choice(BIAS_METHODS)] = _DEFAULTS.bias_method
        denoiseMethod: Annotated[str, Choice((NONE, *DENOISE_METHODS))] = _DEFAULTS.denoise or NONE
        gaussianSigmaMm: Annotated[float, WithinRange(0.1, 10.0)] = _DEFAULTS.gaussian_sigma_mm
        normalizeMethod: Annotated[str, Choice((NONE, *NORMALIZE_METHODS))] = _DEFAULTS.normalize or NONE
        equalizeHistogram: bool = _DEFAULTS.clahe
        resampleSpacing: str = ""
        cropToForeground: bool = _DEFAULTS.crop_to_foreground
        biasFieldOutput: bool = False
else:
    MedAnalysisEnhancementParameterNode = None


class MedAnalysisEnhancementWidget(gui.ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.ui = gui.loadPanel(self, "MedAnalysisEnhancement")
        self.logic = MedAnalysisEnhancementLogic()
        for name in self.logic.presets():
            self.ui.presetComboBox.addItem(name)
        # the parameter node is reset when the scene closes
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        if MedAnalysisEnhancementParameterNode is None:  # Slicer without parameterNodeWrapper
            for selector in (self.ui.inputSelector, self.ui.referenceSelector):
                selector.connect("currentNodeChanged(vtkMRMLNode*)", self._checkCanApply)
            self.ui.normalizeComboBox.connect("currentIndexChanged(int)", self._checkCanApply)
            self.ui.spacingLineEdit.connect("textChanged(QString)", self._checkCanApply)
            self.restoreParameters()
        self.initializeParameterNode()

    def initializeParameterNode(self):
        """Ensure the parameter node exists and is observed; select the first volume when none is."""
        if MedAnalysisEnhancementParameterNode is None:
            self._checkCanApply()
            return
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            volumes = gui.sceneNodes("vtkMRMLScalarVolumeNode")
            if volumes:
                self._parameterNode.inputVolume = volumes[0]

    def _parameters(self):
        """The panel's parameters: the parameter node or, on Slicer without parameterNodeWrapper, the widgets'
        values by the same names."""
        return self._parameterNode or gui.panelValues(self.ui)

    def _checkCanApply(self, caller=None, event=None):
        p = self._parameters()
        missing = ""
        if not p.inputVolume:
            missing = "Select an input volume."
        elif p.normalizeMethod == "histmatch" and not p.referenceVolume:
            missing = "Histogram matching needs a reference volume."
        elif p.resampleSpacing.strip():
            try:
                parse_spacing(p.resampleSpacing)
            except ValueError as error:
                missing = f"Resample spacing: {error}."
        gui.enableButton(self.ui.applyButton, missing)

    def restoreParameters(self):
        """Slicer without parameterNodeWrapper: the widgets show the parameters stored by the last Apply."""
        parameters = gui.loadParameters(self.logic.getParameterNode(), EnhancementParameters)
        self.ui.presetComboBox.setCurrentText(parameters.preset or NONE)
        self.ui.biasCheckBox.checked = parameters.bias_correct
        self.ui.biasMethodComboBox.setCurrentText(parameters.bias_method)
        self.ui.denoiseComboBox.setCurrentText(parameters.denoise or NONE)
        self.ui.sigmaSpinBox.value = parameters.gaussian_sigma_mm
        self.ui.normalizeComboBox.setCurrentText(parameters.normalize or NONE)
        self.ui.claheCheckBox.checked = parameters.clahe
        self.ui.cropCheckBox.checked = parameters.crop_to_foreground
        self.ui.spacingLineEdit.text = ",".join(str(v) for v in parameters.spacing_mm) if parameters.spacing_mm else ""

    def readParameters(self) -> EnhancementParameters:
        p = self._parameters()

        def choice(text):
            return None if text == NONE else text

        spacingText = p.resampleSpacing.strip()
        return EnhancementParameters(
            preset=choice(p.presetName), bias_correct=p.biasCorrect, bias_method=p.biasMethod,
            denoise=choice(p.denoiseMethod), gaussian_sigma_mm=p.gaussianSigmaMm, normalize=choice(p.normalizeMethod),
            clahe=p.equalizeHistogram, crop_to_foreground=p.cropToForeground,
            spacing_mm=list(parse_spacing(spacingText)) if spacingText else None)

    def onApplyButton(self):
        p = self._parameters()
        parameters = self.readParameters()
        if self._parameterNode is None:
            gui.saveParameters(self.logic.getParameterNode(), parameters)
        outputs = gui.runWithProgress("Enhancement", lambda progress, cancel: self.logic.enhance(
            p.inputVolume, parameters, maskNode=p.foregroundMask, referenceVolumeNode=p.referenceVolume,
            outputVolumeNode=p.outputVolume, biasFieldOutput=p.biasFieldOutput, progress=progress, cancel=cancel))
        if outputs is None:
            return
        self.ui.outputSelector.setCurrentNode(outputs.outputVolumeNode)
        slicer.util.setSliceViewerLayers(background=outputs.outputVolumeNode, fit=True)
        timing = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in outputs.seconds.items())
        self.ui.statusLabel.text = f"Done: {timing}"


class MedAnalysisEnhancementLogic(ScriptedLoadableModuleLogic, EnhancementLogic):
    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        EnhancementLogic.__init__(self, slicer.mrmlScene)

    def getParameterNode(self):
        """The module's parameter node: typed (MedAnalysisEnhancementParameterNode) where Slicer has
        parameterNodeWrapper, else the plain vtkMRMLScriptedModuleNode."""
        node = ScriptedLoadableModuleLogic.getParameterNode(self)
        return MedAnalysisEnhancementParameterNode(node) if MedAnalysisEnhancementParameterNode else node


class MedAnalysisEnhancementTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_denoise_and_normalize_sample()

    def test_denoise_and_normalize_sample(self):
        import numpy as np

        from MedAnalysisLib import mrml, resources

        inputNode = mrml.loadVolumeNode(resources.samplePath("mni152_t1.nii.gz"), slicer.mrmlScene)
        before = slicer.util.arrayFromVolume(inputNode).copy()
        outputs = MedAnalysisEnhancementLogic().enhance(
            inputNode, EnhancementParameters(denoise="gaussian", normalize="zscore"))
        after = slicer.util.arrayFromVolume(outputs.outputVolumeNode)
        self.assertTrue(np.array_equal(before, slicer.util.arrayFromVolume(inputNode)))
        self.assertEqual(after.shape, before.shape)
        self.assertLess(abs(float(after[before > 0].mean())), 0.5)
        self.delayDisplay("Enhancement test passed")
