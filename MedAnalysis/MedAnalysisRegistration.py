"""MedAnalysis Registration: rigid, affine and deformable (B-spline) registration into transform nodes.

Thin Slicer module: the panel's parameter node (MedAnalysisRegistrationParameterNode, bound to the widgets
as in Slicer's scripted-module template) is read into RegistrationParameters and RegistrationLogic.register
runs once. Research software, not for clinical use.
"""

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MedAnalysisLib import gui
from MedAnalysisLib.logic.registrationlogic import RegistrationLogic, RegistrationParameters

try:
    from typing import Annotated

    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
except ImportError:  # Slicer < 5.4: the panel is stored with gui.saveParameters / gui.loadParameters
    parameterNodeWrapper = None

INIT_METHODS = ("moments", "geometry", "identity")  # the panel's choices (the CLI also takes a transform file)
METRICS = ("mi", "mse", "ncc")
ROTATION_SEARCH_DEG, ROTATION_SEARCH_STEP_DEG = 90.0, 30.0  # the panel's "large rotations" search


class MedAnalysisRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        gui.describeModule(self.parent, "Registration", (
            "Rigid, affine and deformable (B-spline) registration with Mattes mutual information (any modality), "
            "masks, and initialization from centres of mass, image centres, landmarks or a transform. The result "
            "is a transform node: put the moving volume (or a segmentation) under it to see it aligned; saved as "
            "an ITK .tfm/.h5 file it maps fixed to moving points (LPS)."),
            "Built on SimpleITK (ITKv4 registration), PyTorch and 3D Slicer.")


if parameterNodeWrapper is not None:
    _DEFAULTS = RegistrationParameters()

    @parameterNodeWrapper
    class MedAnalysisRegistrationParameterNode:
        """The panel's inputs, outputs and settings, saved with the scene (names differ from the
        RegistrationParameters fields that gui.saveParameters stores on older Slicer)."""

        fixedVolume: slicer.vtkMRMLScalarVolumeNode
        movingVolume: slicer.vtkMRMLScalarVolumeNode
        presetName: str = _DEFAULTS.preset  # bound explicitly: the combo box lists the presets with tooltips
        similarityMetric: Annotated[str, Choice(METRICS)] = _DEFAULTS.metric or "mi"
        initialization: Annotated[str, Choice(INIT_METHODS)] = _DEFAULTS.init
        rotationSearch: bool = _DEFAULTS.rotation_search_deg > 0
        initialTransform: slicer.vtkMRMLTransformNode
        fixedLandmarks: slicer.vtkMRMLMarkupsFiducialNode
        movingLandmarks: slicer.vtkMRMLMarkupsFiducialNode
        fixedMaskVolume: slicer.vtkMRMLLabelMapVolumeNode
        movingMaskVolume: slicer.vtkMRMLLabelMapVolumeNode
        # the segment selectors (not handled by connectGui) are bound explicitly, see onMaskSegmentChanged
        fixedMaskSegmentation: slicer.vtkMRMLSegmentationNode
        fixedMaskSegmentId: str = ""
        movingMaskSegmentation: slicer.vtkMRMLSegmentationNode
        movingMaskSegmentId: str = ""
        threadCount: Annotated[int, WithinRange(0, 256)] = _DEFAULTS.threads or 0  # 0: all cores
        outputTransform: slicer.vtkMRMLTransformNode
        createResampledVolume: bool = True
        placeMovingUnderTransform: bool = True
        checkerboardVolume: bool = _DEFAULTS.checkerboard
        differenceVolume: bool = _DEFAULTS.difference
else:
    MedAnalysisRegistrationParameterNode = None


class MedAnalysisRegistrationWidget(gui.ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._showingMaskSegments = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.ui = gui.loadPanel(self, "MedAnalysisRegistration")
        self.logic = MedAnalysisRegistrationLogic()
        for name, description in self.logic.presets().items():
            self.ui.presetComboBox.addItem(name)
            self.ui.presetComboBox.setItemData(self.ui.presetComboBox.count - 1, description, 3)  # tooltip role
        # the parameter node is reset when the scene closes
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        if MedAnalysisRegistrationParameterNode is None:  # Slicer without parameterNodeWrapper
            for selector in (self.ui.fixedSelector, self.ui.movingSelector):
                selector.connect("currentNodeChanged(vtkMRMLNode*)", self._checkCanApply)
            self.restoreParameters()
        else:
            for selector in (self.ui.fixedMaskSegmentSelector, self.ui.movingMaskSegmentSelector):
                selector.connect("currentNodeChanged(vtkMRMLNode*)", self.onMaskSegmentChanged)
                selector.connect("currentSegmentChanged(QString)", self.onMaskSegmentChanged)
        self.initializeParameterNode()

    def initializeParameterNode(self):
        """Ensure the parameter node exists and is observed; select the first two volumes when none are."""
        if MedAnalysisRegistrationParameterNode is None:
            self._checkCanApply()
            return
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        volumes = gui.sceneNodes("vtkMRMLScalarVolumeNode")
        if not p.fixedVolume and volumes:
            p.fixedVolume = volumes[0]
        if not p.movingVolume:
            others = [volume for volume in volumes if volume is not p.fixedVolume]
            if others:
                p.movingVolume = others[0]

    def explicitConnectors(self) -> dict:
        """The preset combo box (filled at run time) is bound explicitly; the segment selectors follow
        in :meth:`afterConnectGui`."""
        return {"presetName": gui.comboBoxTextConnector(self.ui.presetComboBox)}

    def afterConnectGui(self) -> None:
        self.showMaskSegments()

    def showMaskSegments(self):
        """Show the stored mask segments (the selectors report a segment before their segmentation, so they
        are not bound through gui.connectGui)."""
        p = self._parameterNode
        self._showingMaskSegments = True
        try:
            for selector, node, segmentId in ((self.ui.fixedMaskSegmentSelector, p.fixedMaskSegmentation,
                                               p.fixedMaskSegmentId),
                                              (self.ui.movingMaskSegmentSelector, p.movingMaskSegmentation,
                                               p.movingMaskSegmentId)):
                selector.setCurrentNode(node)
                selector.setCurrentSegmentID(segmentId)
        finally:
            self._showingMaskSegments = False

    def onMaskSegmentChanged(self, *args):
        """Store the segment selectors' choice (segmentation and segment together)."""
        p = self._parameterNode
        if not p or self._showingMaskSegments:
            return
        with slicer.util.NodeModify(p):
            p.fixedMaskSegmentation = self.ui.fixedMaskSegmentSelector.currentNode()
            p.fixedMaskSegmentId = self.ui.fixedMaskSegmentSelector.currentSegmentID() or ""
            p.movingMaskSegmentation = self.ui.movingMaskSegmentSelector.currentNode()
            p.movingMaskSegmentId = self.ui.movingMaskSegmentSelector.currentSegmentID() or ""

    def _parameters(self):
        """The panel's parameters: the parameter node or, on Slicer without parameterNodeWrapper, the widgets'
        values by the same names."""
        if self._parameterNode:
            return self._parameterNode
        fixedMask, movingMask = self.ui.fixedMaskSegmentSelector, self.ui.movingMaskSegmentSelector
        return gui.panelValues(self.ui, presetName=self.ui.presetComboBox.currentText,
                               fixedMaskSegmentation=fixedMask.currentNode(),
                               fixedMaskSegmentId=fixedMask.currentSegmentID() or "",
                               movingMaskSegmentation=movingMask.currentNode(),
                               movingMaskSegmentId=movingMask.currentSegmentID() or "")

    def _checkCanApply(self, caller=None, event=None):
        p = self._parameters()
        if not p.fixedVolume or not p.movingVolume:
            missing = "Select the fixed and the moving volume."
        elif p.fixedVolume is p.movingVolume:
            missing = "Select two different volumes."
        else:
            missing = ""
        gui.enableButton(self.ui.applyButton, missing)

    def restoreParameters(self):
        """Slicer without parameterNodeWrapper: the widgets show the parameters stored by the last Apply."""
        parameters = gui.loadParameters(self.logic.getParameterNode(), RegistrationParameters)
        self.ui.presetComboBox.setCurrentText(parameters.preset)
        self.ui.metricComboBox.setCurrentText(parameters.metric or "mi")
        self.ui.initComboBox.setCurrentText(parameters.init if parameters.init in INIT_METHODS else "moments")
        self.ui.rotationSearchCheckBox.checked = parameters.rotation_search_deg > 0
        self.ui.threadsSpinBox.value = parameters.threads or 0
        self.ui.checkerboardCheckBox.checked = parameters.checkerboard
        self.ui.differenceCheckBox.checked = parameters.difference

    def readParameters(self) -> RegistrationParameters:
        p = self._parameters()
        return RegistrationParameters(
            preset=p.presetName, metric=p.similarityMetric, init=p.initialization,
            rotation_search_deg=ROTATION_SEARCH_DEG if p.rotationSearch else 0.0,
            rotation_search_step_deg=ROTATION_SEARCH_STEP_DEG, threads=p.threadCount or None,
            checkerboard=p.checkerboardVolume, difference=p.differenceVolume)

    @staticmethod
    def maskSelection(volumeNode, segmentationNode, segmentId):
        """(node, segment id): a chosen segment wins over a labelmap volume."""
        if segmentationNode is not None and segmentId:
            return segmentationNode, segmentId
        return volumeNode, None

    def onApplyButton(self):
        p = self._parameters()
        parameters = self.readParameters()
        if self._parameterNode is None:
            gui.saveParameters(self.logic.getParameterNode(), parameters)
        fixedMask, fixedSegment = self.maskSelection(p.fixedMaskVolume, p.fixedMaskSegmentation, p.fixedMaskSegmentId)
        movingMask, movingSegment = self.maskSelection(p.movingMaskVolume, p.movingMaskSegmentation,
                                                       p.movingMaskSegmentId)
        outputs = gui.runWithProgress("Registration", lambda progress, cancel: self.logic.register(
            p.fixedVolume, p.movingVolume, parameters, fixedMaskNode=fixedMask, fixedMaskSegmentId=fixedSegment,
            movingMaskNode=movingMask, movingMaskSegmentId=movingSegment, initialTransformNode=p.initialTransform,
            fixedLandmarksNode=p.fixedLandmarks, movingLandmarksNode=p.movingLandmarks,
            outputTransformNode=p.outputTransform, createResampledVolume=p.createResampledVolume,
            placeMovingUnderTransform=p.placeMovingUnderTransform, progress=progress, cancel=cancel))
        if outputs is None:
            return
        self.ui.outputTransformSelector.setCurrentNode(outputs.transformNode)
        shown = outputs.resampledVolumeNode or p.movingVolume
        slicer.util.setSliceViewerLayers(background=p.fixedVolume, foreground=shown, foregroundOpacity=0.5, fit=True)
        qa = outputs.qa
        dice = f", mask Dice {qa['mask_dice_initial']} -> {qa['mask_dice']}" if qa.get("mask_dice") is not None else ""
        self.ui.statusLabel.text = (f"Done in {qa['seconds']} s: {qa['metric']} {qa['initial_metric']:.4g} -> "
                                    f"{qa['final_metric']:.4g}, {qa['iterations']} iterations{dice}")


class MedAnalysisRegistrationLogic(ScriptedLoadableModuleLogic, RegistrationLogic):
    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        RegistrationLogic.__init__(self, slicer.mrmlScene)

    def getParameterNode(self):
        """The module's parameter node: typed (MedAnalysisRegistrationParameterNode) where Slicer has
        parameterNodeWrapper, else the plain vtkMRMLScriptedModuleNode."""
        node = ScriptedLoadableModuleLogic.getParameterNode(self)
        return MedAnalysisRegistrationParameterNode(node) if MedAnalysisRegistrationParameterNode else node


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
