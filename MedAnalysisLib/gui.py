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
