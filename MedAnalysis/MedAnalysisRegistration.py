"""MedAnalysis Registration: rigid, affine and deformable (B-spline) registration into transform nodes.

Thin Slicer module: the panel reads its widgets into RegistrationParameters and calls
RegistrationLogic.register once. Research software, not for clinical use.
"""

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MedAnalysisLib import gui
from MedAnalysisLib.logic.registrationlogic import RegistrationLogic, RegistrationParameters


class MedAnalysisRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        gui.describeModule(self.parent, "Registration", (
            "Rigid, affine and deformable (B-spline) registration with Mattes mutual information (any modality), "
            "masks, and initialization from centres of mass, image centres, landmarks or a transform. The result "
            "is a transform node: put the moving volume (or a segmentation) under it to see it aligned; saved as "
            "an ITK .tfm/.h5 file it maps fixed to moving points (LPS)."),
            "Built on SimpleITK (ITKv4 registration), PyTorch and 3D Slicer.")


class MedAnalysisRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.ui = gui.loadPanel(self, "MedAnalysisRegistration")
        self.logic = MedAnalysisRegistrationLogic()
        for name, description in self.logic.presets().items():
            self.ui.presetComboBox.addItem(name)
            self.ui.presetComboBox.setItemData(self.ui.presetComboBox.count - 1, description, 3)  # tooltip role
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.restoreParameters()

    def restoreParameters(self):
        parameters = gui.loadParameters(self.logic.getParameterNode(), RegistrationParameters)
        self.ui.presetComboBox.setCurrentText(parameters.preset)
        self.ui.metricComboBox.setCurrentText(parameters.metric or "mi")
        self.ui.initComboBox.setCurrentText(parameters.init if parameters.init in ("moments", "geometry", "identity")
                                            else "moments")
        self.ui.rotationSearchCheckBox.checked = parameters.rotation_search_deg > 0
        self.ui.threadsSpinBox.value = parameters.threads or 0
        self.ui.checkerboardCheckBox.checked = parameters.checkerboard
        self.ui.differenceCheckBox.checked = parameters.difference

    def readParameters(self) -> RegistrationParameters:
        return RegistrationParameters(
            preset=self.ui.presetComboBox.currentText, metric=self.ui.metricComboBox.currentText,
            init=self.ui.initComboBox.currentText,
            rotation_search_deg=90.0 if self.ui.rotationSearchCheckBox.checked else 0.0, rotation_search_step_deg=30.0,
            threads=self.ui.threadsSpinBox.value or None, checkerboard=self.ui.checkerboardCheckBox.checked,
            difference=self.ui.differenceCheckBox.checked)

    def maskSelection(self, volumeSelector, segmentSelector):
        """(node, segment id): a chosen segment wins over a labelmap volume."""
        segmentationNode = segmentSelector.currentNode()
        if segmentationNode is not None and segmentSelector.currentSegmentID():
            return segmentationNode, segmentSelector.currentSegmentID()
        return volumeSelector.currentNode(), None

    def onApplyButton(self):
        parameters = self.readParameters()
        gui.saveParameters(self.logic.getParameterNode(), parameters)
        fixedMask, fixedSegment = self.maskSelection(self.ui.fixedMaskVolumeSelector, self.ui.fixedMaskSegmentSelector)
        movingMask, movingSegment = self.maskSelection(self.ui.movingMaskVolumeSelector,
                                                       self.ui.movingMaskSegmentSelector)
        outputs = gui.runWithProgress("Registration", lambda progress, cancel: self.logic.register(
            self.ui.fixedSelector.currentNode(), self.ui.movingSelector.currentNode(), parameters,
            fixedMaskNode=fixedMask, fixedMaskSegmentId=fixedSegment, movingMaskNode=movingMask,
            movingMaskSegmentId=movingSegment, initialTransformNode=self.ui.initialTransformSelector.currentNode(),
            fixedLandmarksNode=self.ui.fixedLandmarksSelector.currentNode(),
            movingLandmarksNode=self.ui.movingLandmarksSelector.currentNode(),
            outputTransformNode=self.ui.outputTransformSelector.currentNode(),
            createResampledVolume=self.ui.resampledCheckBox.checked,
            placeMovingUnderTransform=self.ui.placeMovingCheckBox.checked, progress=progress, cancel=cancel))
        if outputs is None:
            return
        self.ui.outputTransformSelector.setCurrentNode(outputs.transformNode)
        shown = outputs.resampledVolumeNode or self.ui.movingSelector.currentNode()
        slicer.util.setSliceViewerLayers(background=self.ui.fixedSelector.currentNode(), foreground=shown,
                                         foregroundOpacity=0.5, fit=True)
        qa = outputs.qa
        dice = f", mask Dice {qa['mask_dice_initial']} -> {qa['mask_dice']}" if qa.get("mask_dice") is not None else ""
        self.ui.statusLabel.text = (f"Done in {qa['seconds']} s: {qa['metric']} {qa['initial_metric']:.4g} -> "
                                    f"{qa['final_metric']:.4g}, {qa['iterations']} iterations{dice}")

    def onReload(self):
        gui.reloadLibrary()
        ScriptedLoadableModuleWidget.onReload(self)


class MedAnalysisRegistrationLogic(ScriptedLoadableModuleLogic, RegistrationLogic):
    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        RegistrationLogic.__init__(self, slicer.mrmlScene)


class MedAnalysisRegistrationTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_rigid_registration_of_a_rotated_sample()

    def test_rigid_registration_of_a_rotated_sample(self):
        import numpy as np
        import SimpleITK as sitk

        from MedAnalysisLib import mrml, resources
        from MedAnalysisLib.core import geometry

        fixed = sitk.ReadImage(str(resources.samplePath("mni152_t1.nii.gz")), sitk.sitkFloat32)
        fixed = sitk.BinShrink(fixed, [2, 2, 2])
        center = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()])
        truth = sitk.Euler3DTransform(center, 0.15, -0.1, 0.2, (6.0, -8.0, 4.0))  # fixed -> moving
        moving = sitk.Resample(fixed, fixed, truth.GetInverse(), sitk.sitkLinear, 0.0)
        fixedNode = mrml.volumeNodeFromImage(fixed, slicer.mrmlScene, name="fixed")
        movingNode = mrml.volumeNodeFromImage(moving, slicer.mrmlScene, name="moving")
        outputs = MedAnalysisRegistrationLogic().register(fixedNode, movingNode, RegistrationParameters(preset="rigid"),
                                                          placeMovingUnderTransform=True)
        pointsRas = np.random.default_rng(0).uniform(-40, 40, size=(100, 3))
        expected = geometry.transform_points_ras(truth, pointsRas)
        self.assertEqual(slicer.util.arrayFromVolume(outputs.resampledVolumeNode).shape, fixed.GetSize()[::-1])
        self.assertLess(np.abs(mrml.transformPointsFromParent(outputs.transformNode, pointsRas) - expected).max(), 1.0)
        self.assertIs(movingNode.GetParentTransformNode(), outputs.transformNode)
        self.delayDisplay("Registration test passed")
