"""MedAnalysis Enhancement: denoising, bias-field correction, normalization, contrast, resampling.

Thin Slicer module: the panel reads its widgets into EnhancementParameters and calls
EnhancementLogic.enhance once. Research software, not for clinical use.
"""

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MedAnalysisLib import gui
from MedAnalysisLib.core.enhance import EnhancementParameters
from MedAnalysisLib.logic.enhancementlogic import EnhancementLogic


class MedAnalysisEnhancement(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        gui.describeModule(self.parent, "Enhancement", (
            "Denoising (Gaussian, median, curvature/gradient anisotropic diffusion, non-local means), "
            "bias-field correction (tissue-class-aware or N4), intensity normalization, CLAHE and resampling. "
            "Presets: mri-brain-t1, mri-generic, ct-soft-tissue, ct-lung. The input volume is not modified."),
            "Built on SimpleITK, scikit-image and 3D Slicer.")


class MedAnalysisEnhancementWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.ui = gui.loadPanel(self, "MedAnalysisEnhancement")
        self.logic = MedAnalysisEnhancementLogic()
        for name in self.logic.presets():
            self.ui.presetComboBox.addItem(name)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.restoreParameters()

    def restoreParameters(self):
        parameters = gui.loadParameters(self.logic.getParameterNode(), EnhancementParameters)
        self.ui.presetComboBox.setCurrentText(parameters.preset or "(none)")
        self.ui.biasCheckBox.checked = parameters.bias_correct
        self.ui.biasMethodComboBox.setCurrentText(parameters.bias_method)
        self.ui.denoiseComboBox.setCurrentText(parameters.denoise or "(none)")
        self.ui.sigmaSpinBox.value = parameters.gaussian_sigma_mm
        self.ui.normalizeComboBox.setCurrentText(parameters.normalize or "(none)")
        self.ui.claheCheckBox.checked = parameters.clahe
        self.ui.cropCheckBox.checked = parameters.crop_to_foreground
        self.ui.spacingLineEdit.text = ",".join(str(v) for v in parameters.spacing_mm) if parameters.spacing_mm else ""

    def readParameters(self) -> EnhancementParameters:
        def choice(combo):
            text = combo.currentText
            return None if text == "(none)" else text

        spacingText = self.ui.spacingLineEdit.text.strip()
        return EnhancementParameters(
            preset=choice(self.ui.presetComboBox), bias_correct=self.ui.biasCheckBox.checked,
            bias_method=self.ui.biasMethodComboBox.currentText, denoise=choice(self.ui.denoiseComboBox),
            gaussian_sigma_mm=self.ui.sigmaSpinBox.value, normalize=choice(self.ui.normalizeComboBox),
            clahe=self.ui.claheCheckBox.checked, crop_to_foreground=self.ui.cropCheckBox.checked,
            spacing_mm=[float(v) for v in spacingText.split(",")] if spacingText else None)

    def onApplyButton(self):
        parameters = self.readParameters()
        gui.saveParameters(self.logic.getParameterNode(), parameters)
        outputs = gui.runWithProgress("Enhancement", lambda progress, cancel: self.logic.enhance(
            self.ui.inputSelector.currentNode(), parameters, maskNode=self.ui.maskSelector.currentNode(),
            referenceVolumeNode=self.ui.referenceSelector.currentNode(),
            outputVolumeNode=self.ui.outputSelector.currentNode(),
            biasFieldOutput=self.ui.biasFieldOutputCheckBox.checked, progress=progress, cancel=cancel))
        if outputs is None:
            return
        self.ui.outputSelector.setCurrentNode(outputs.outputVolumeNode)
        slicer.util.setSliceViewerLayers(background=outputs.outputVolumeNode, fit=True)
        timing = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in outputs.seconds.items())
        self.ui.statusLabel.text = f"Done: {timing}"

    def onReload(self):
        gui.reloadLibrary()
        ScriptedLoadableModuleWidget.onReload(self)


class MedAnalysisEnhancementLogic(ScriptedLoadableModuleLogic, EnhancementLogic):
    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        EnhancementLogic.__init__(self, slicer.mrmlScene)


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
