"""Qt helpers shared by the thin module widgets (Slicer application only).

Nothing here holds an algorithm: widgets read their controls into the operation's
parameter dataclass, call one logic method through :func:`runWithProgress`, and show
the result. Imported only by the modules in MedAnalysis/, never by logic/ or core/.
"""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


def runWithProgress(title: str, work: Callable[..., T], parent=None) -> "T | None":
    """Run ``work(progress, cancel)`` with a modal progress dialog whose Cancel button
    sets the cancel token; errors are shown in a popup (slicer.util.tryWithErrorDisplay).

    Returns the work's result, or None when it failed or was cancelled (the logic then
    leaves the scene and files as they were).
    """
    import qt
    import slicer

    from .core.errors import OperationCancelled
    from .core.progress import CancelToken

    cancel = CancelToken()
    dialog = slicer.util.createProgressDialog(parent=parent, windowTitle=title, labelText=title, maximum=1000)
    dialog.setCancelButtonText("Cancel")
    dialog.connect("canceled()", cancel.cancel)

    def progress(fraction: float, message: str) -> None:
        dialog.setValue(int(1000 * fraction))
        dialog.setLabelText(message)
        slicer.app.processEvents(qt.QEventLoop.AllEvents)

    result = None
    try:
        with slicer.util.tryWithErrorDisplay(f"{title} failed.", waitCursor=True):
            try:
                result = work(progress, cancel)
            except OperationCancelled:
                slicer.util.showStatusMessage(f"{title}: cancelled", 3000)
    finally:
        dialog.close()
    return result


def reloadLibrary() -> None:
    """Reload MedAnalysisLib submodules so edits show without restarting Slicer (onReload)."""
    import importlib
    import sys

    for name in sorted((n for n in sys.modules if n == "MedAnalysisLib" or n.startswith("MedAnalysisLib.")),
                       key=lambda n: -n.count(".")):
        importlib.reload(sys.modules[name])


def saveParameters(parameterNode, parameters) -> None:
    """Store a parameter dataclass in the module's parameter node (saved with the scene)."""
    import dataclasses
    import json

    if parameterNode is None:
        return
    for field in dataclasses.fields(parameters):
        parameterNode.SetParameter(field.name, json.dumps(getattr(parameters, field.name), default=str))


def loadParameters(parameterNode, parametersClass):
    """Parameter dataclass from the parameter node (defaults for fields never stored)."""
    import dataclasses
    import json

    values = {}
    if parameterNode is not None:
        for field in dataclasses.fields(parametersClass):
            text = parameterNode.GetParameter(field.name)
            if text:
                try:
                    values[field.name] = json.loads(text)
                except ValueError:
                    pass
    return parametersClass(**values)


# --- parameter node (Slicer's scripted-module template, Utilities/Templates/Modules/Scripted/TemplateKey.py) ---
#
# Each module declares a ``slicer.parameterNodeWrapper`` class (Slicer >= 5.4) holding its input/output nodes and
# settings; widgets carrying the Qt dynamic property ``SlicerParameterName`` in the .ui file are bound to it by
# ``connectGui``. The helpers below cover what ``connectGui`` does not (combo boxes filled at run time, a
# ctkPathLineEdit holding a str), the action buttons' enabled state, and Slicer without the wrapper, where the
# panel's values are read from the same widgets by the same names.

PARAMETER_NAME_PROPERTY = "SlicerParameterName"  # slicer.parameterNodeWrapper.SlicerParameterNamePropertyName


class ParameterNodeWidgetMixin:
    """The parameter-node life cycle of Slicer's scripted module template, once for every module widget
    (put it first among the widget's bases, before ScriptedLoadableModuleWidget and VTKObservationMixin).

    The widget provides ``self.ui``, ``self._parameterNode``, ``self._parameterNodeGuiTag``,
    ``initializeParameterNode()`` and ``_checkCanApply()``; it may override :meth:`explicitConnectors`
    (widgets connectGui cannot bind) and :meth:`afterConnectGui`.
    """

    def cleanup(self):
        """Called when the application closes and the module widget is destroyed."""
        self.removeObservers()

    def enter(self):
        """Called each time the user opens this module: make sure the parameter node exists and is observed."""
        self.initializeParameterNode()

    def exit(self):
        """Called each time the user opens another module: stop following the parameter node."""
        import vtk

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def explicitConnectors(self) -> dict:
        """GuiConnectors by parameter name for widgets connectGui cannot bind (none by default)."""
        return {}

    def afterConnectGui(self) -> None:
        """Hook run once the panel is bound to a new parameter node."""

    def setParameterNode(self, inputParameterNode):
        """Set and observe the parameter node (widgets with a SlicerParameterName property follow it, the
        others through :meth:`explicitConnectors`)."""
        import vtk

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = connectGui(self._parameterNode, self.ui, **self.explicitConnectors())
            self.afterConnectGui()
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def onReload(self):
        reloadLibrary()
        super().onReload()


def connectGui(parameterNode, ui, **explicit):
    """Bind the panel to its parameter node wrapper, as ``parameterNode.connectGui(ui)`` does (every widget
    carrying the SlicerParameterName property), plus ``explicit`` GuiConnectors by parameter name for widgets
    connectGui cannot bind. Returns the tag for ``parameterNode.disconnectGui``: the wrapper's own connectGui
    returns none before Slicer 5.10, so the template's exit() could not disconnect there."""
    mapping = {}
    for widget in vars(ui).values():
        name = widget.property(PARAMETER_NAME_PROPERTY)
        if name:
            mapping[name] = widget
    mapping.update(explicit)
    return parameterNode.connectParametersToGui(mapping)


def widgetConnector(target, signal: str, read: Callable[[], object], write: Callable[[object], None]):
    """A parameterNodeWrapper GuiConnector binding one parameter to a widget that ``connectGui`` cannot bind:
    ``signal`` is the name of the widget's change signal (e.g. "currentTextChanged"), ``read()`` returns the
    widget's value and ``write(value)`` shows a value. Pass it to :func:`connectGui` (the widget then carries
    no SlicerParameterName property)."""
    from slicer.parameterNodeWrapper import GuiConnector

    class WidgetConnector(GuiConnector):
        @staticmethod
        def canRepresent(widget, datatype) -> bool:
            return False  # never chosen by connectGui: only given explicitly

        @staticmethod
        def create(widget, datatype):
            return None

        def _connect(self):
            getattr(target, signal).connect(self.changed)

        def _disconnect(self):
            getattr(target, signal).disconnect(self.changed)

        def widget(self):
            return target

        def read(self):
            return read()

        def write(self, value) -> None:
            write(value)

    return WidgetConnector()


def comboBoxTextConnector(comboBox):
    """Binds a str parameter to the current text of a combo box whose items are filled at run time (the stock
    connector needs a fixed Choice list and replaces the items). A value that is not an item leaves the
    combo box as it is."""
    def write(text):
        if text and text != comboBox.currentText:
            comboBox.setCurrentText(text)

    return widgetConnector(comboBox, "currentTextChanged", lambda: comboBox.currentText, write)


def pathLineEditConnector(pathLineEdit):
    """Binds a str parameter to a ctkPathLineEdit (the stock connector wants a pathlib.Path, which shows an
    empty path as '.')."""
    def write(path):
        if path != pathLineEdit.currentPath:
            pathLineEdit.currentPath = path

    return widgetConnector(pathLineEdit, "currentPathChanged", lambda: pathLineEdit.currentPath, write)


def panelValues(ui, **explicit):
    """The panel's values by parameter name, read from the widgets that carry the SlicerParameterName
    property, plus ``explicit`` values of widgets bound explicitly: what a module reads instead of its
    parameter node wrapper on Slicer without ``slicer.parameterNodeWrapper``."""
    import types

    values = {}
    for widget in vars(ui).values():
        name = widget.property(PARAMETER_NAME_PROPERTY)
        if name:
            values[name] = _widgetValue(widget)
    values.update(explicit)
    return types.SimpleNamespace(**values)


def _widgetValue(widget):
    className = widget.className()
    if className == "qMRMLNodeComboBox":
        return widget.currentNode()
    if className == "QCheckBox":
        return bool(widget.checked)
    if className in ("QSpinBox", "QDoubleSpinBox"):
        return widget.value
    if className == "QComboBox":
        return widget.currentText
    if className == "QLineEdit":
        return widget.text
    if className == "ctkPathLineEdit":
        return widget.currentPath
    raise TypeError(f"no value reader for {className} '{widget.objectName}'")


def enableButton(button, missing: str = "") -> None:
    """Enable an action button when nothing is missing; otherwise disable it, its tooltip saying what is
    missing. Its own tooltip (from the .ui file) comes back once it is enabled."""
    readyToolTip = button.property("readyToolTip")
    if readyToolTip is None:
        readyToolTip = button.toolTip
        button.setProperty("readyToolTip", readyToolTip)
    button.enabled = not missing
    button.toolTip = missing or readyToolTip


def sceneNodes(className: str = "vtkMRMLScalarVolumeNode") -> list:
    """Nodes of exactly this class in the scene, in scene order (not subclasses such as label maps, which the
    selectors do not list): the inputs a module selects by default when none is chosen yet."""
    import slicer

    return [node for node in slicer.util.getNodesByClass(className) if node.GetClassName() == className]


def describeModule(parent, title: str, helpText: str, acknowledgement: str) -> None:
    """Fill a ScriptedLoadableModule's ``parent`` description (category, contributors, the
    research-use notice appended to the help text)."""
    parent.title = title
    parent.categories = ["MedAnalysis"]
    parent.dependencies = []
    parent.contributors = ["MedAnalysis developers"]
    parent.helpText = f"{helpText} <b>Research software, not for clinical use.</b>"
    parent.acknowledgementText = acknowledgement


def loadPanel(widget, moduleName: str):
    """Load ``Resources/UI/<moduleName>.ui`` into a module widget's layout, connect it to the
    scene and return its named child widgets (the usual ``self.ui``)."""
    import slicer

    uiWidget = slicer.util.loadUI(widget.resourcePath(f"UI/{moduleName}.ui"))
    widget.layout.addWidget(uiWidget)
    ui = slicer.util.childWidgetVariables(uiWidget)
    uiWidget.setMRMLScene(slicer.mrmlScene)
    return ui
