"""Interactive Keypoints: a 3D Slicer module for interactive landmark estimation on radiographs.

The model places all landmarks as a markups point list; dragging a wrong point makes it
user-fixed and re-runs the model, which moves only the points that are not fixed yet.

All behaviour lives in ``interactive_keypoints.mrml_logic.KeypointsMRMLLogic`` (MRML, no
Qt); this file adds the panel, the worker thread, the dependency installation and the test.
The engine needs torch: it is imported lazily, so the module loads without it and says
what is missing.
"""

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from interactive_keypoints.mrml_logic import (
    KeypointsMRMLLogic,
    LogicBusyError,
    ThreadedRunner,
    is_low_confidence,
    point_states,
    reference_volume,
)

# import name -> pip requirement (torch comes from the PyTorch extension instead)
PIP_REQUIREMENTS = {
    "monai": "monai>=1.3",
    "SimpleITK": "SimpleITK>=2.3",
    "safetensors": "safetensors>=0.4",
    "scipy": "scipy>=1.10",
}
TORCH_REQUIREMENT = ">=2.3"
MODEL_FILES = ("model.json", "model.safetensors")
DEFAULT_MODEL_NAMES = ("aasce-spine-68", "phantom-spine-68")  # preferred shipped models, in order
DEVICES = {"auto": "auto", "CPU": "cpu", "GPU": "cuda"}
POLL_INTERVAL_MS = 20


def missingPackages() -> list:
    """Import names of the engine's dependencies that are not installed."""
    return [name for name in ["torch", *PIP_REQUIREMENTS] if importlib.util.find_spec(name) is None]


def modelSearchFolders() -> list:
    """Where shipped models live: the repository's models/ (module run from source) and
    the extension's Resources/Models (installed extension)."""
    moduleDir = Path(__file__).resolve().parent
    return [moduleDir.parent / "models", moduleDir / "Resources" / "Models"]


def shippedModelFolders() -> list:
    """Model folders (model.json + model.safetensors), preferred default first."""
    found = {}
    for root in modelSearchFolders():
        if root.is_dir():
            for config in sorted(root.glob("*/model.json")):
                if all((config.parent / f).is_file() for f in MODEL_FILES):
                    found.setdefault(config.parent.name, config.parent)
    preferred = [found.pop(name) for name in DEFAULT_MODEL_NAMES if name in found]
    return preferred + list(found.values())


def modelDescription(folder: Path) -> str:
    try:
        config = json.loads((Path(folder) / "model.json").read_text())
        names = config.get("landmark_names") or []
        return f"{config.get('description') or folder.name}\n{config.get('num_keypoints', len(names))} landmarks\n{folder}"
    except (OSError, ValueError):
        return str(folder)


#
# InteractiveKeypoints
#


class InteractiveKeypoints(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Interactive Keypoints")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = ["Markups"]
        self.parent.contributors = ["InteractiveKeypoints maintainers"]
        self.parent.helpText = _(
            "Place anatomical landmarks on a 2-D radiograph with a neural network, then correct them "
            "interactively: drag a wrong point and the model runs again, keeping every point you fixed "
            "and moving only the others.<br>"
            "Predicted points are drawn in amber, user-fixed points in green; the state and confidence "
            "of each point are saved in its description. Ctrl+Z / Ctrl+Y undo and redo a correction "
            "together with its re-inference."
        )
        self.parent.acknowledgementText = _(
            "Method: J. Kim, T. Kim, T. Kim, J. Choo, D.-W. Kim, B. Ahn, I.-S. Song, Y.-J. Kim, "
            "<i>Morphology-Aware Interactive Keypoint Estimation</i>, MICCAI 2022."
        )


#
# InteractiveKeypointsParameterNode
#


@parameterNodeWrapper
class InteractiveKeypointsParameterNode:
    """
    inputVolume - the radiograph (one-slice scalar or RGB volume).
    pointList - the landmarks.
    autoRefine - re-run the model as soon as a point is dropped.
    refineWhileDragging - preview the other points during a drag.
    lowConfidence - predicted points below this confidence are flagged.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    pointList: vtkMRMLMarkupsFiducialNode
    autoRefine: bool = True
    refineWhileDragging: bool = False
    lowConfidence: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


#
# InteractiveKeypointsWidget
#


class InteractiveKeypointsWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runner = None
        self._shortcuts = []
        self._attachRefused = set()

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/InteractiveKeypoints.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = InteractiveKeypointsLogic()
        self._runner = ThreadedRunner()  # inference off the main thread
        self.logic.runner = self._runner
        self.logic.on_error = self.onLogicError
        self.logic.on_updated = self.onLogicUpdated
        self.logic.on_busy = self.onLogicBusy
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.installButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModelFolder)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.detectButton.connect("clicked(bool)", self.onDetect)
        self.ui.updateButton.connect("clicked(bool)", self.onUpdate)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.redoButton.connect("clicked(bool)", self.onRedo)
        self.ui.unfixButton.connect("clicked(bool)", self.onUnfix)
        self.ui.resetButton.connect("clicked(bool)", self.onReset)
        self.ui.exportJsonButton.connect("clicked(bool)", lambda: self.onExport(".mrk.json"))
        self.ui.exportCsvButton.connect("clicked(bool)", lambda: self.onExport(".csv"))
        self.ui.batchButton.connect("clicked(bool)", self.onProcessFolder)
        self.ui.landmarkTable.connect("cellClicked(int,int)", self.onTableClicked)
        self.ui.landmarkTable.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)
        self.ui.measurementSelector.connect("currentIndexChanged(int)", self.onMeasurementSelected)

        self.refreshModelList()
        self.updateDependencyStatus()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        self._removeShortcuts()
        self._pollTimer.stop()
        if self.logic is not None:
            self.logic.forget_all()
        if self._runner is not None:
            self._runner.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()
        self._installShortcuts()

    def exit(self) -> None:
        self._removeShortcuts()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.forget_all()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        self.logic.auto_refine = p.autoRefine
        self.logic.refine_while_dragging = p.refineWhileDragging
        if p.lowConfidence != self.logic.low_confidence:
            self.logic.set_low_confidence(p.lowConfidence)
        self._attachIfOurs(p.pointList, p.inputVolume)
        self.updateButtons()
        self.updateTable()
        self.updateMeasurements()

    def _attachIfOurs(self, pointList, inputVolume) -> None:
        """A list made earlier or loaded from .mrk.json: listen to its drags again."""
        if pointList is None or self.logic.is_tracked(pointList) or pointList.GetID() in self._attachRefused:
            return
        states, confidence = point_states(pointList)
        writtenByUs = "user-fixed" in states or (confidence == confidence).any()  # NaN != NaN
        volume = reference_volume(pointList) or inputVolume
        if not writtenByUs or volume is None or missingPackages() or self.ui.modelSelector.count == 0:
            return
        try:
            self.logic.attach(pointList, volume, blocking=False)
        except Exception as error:  # shown once, not at every parameter change
            self._attachRefused.add(pointList.GetID())
            slicer.util.errorDisplay(_("Could not attach to {name}: {error}").format(name=pointList.GetName(), error=error))

    # -------------------------------------------------------------------- dependencies

    def updateDependencyStatus(self) -> None:
        missing = missingPackages()
        if missing:
            self.ui.dependencyLabel.text = _(
                "Missing Python packages: {names}. The module needs them to run the model."
            ).format(names=", ".join(missing))
            self.ui.dependencyLabel.setStyleSheet("color: #c0392b")
        self.ui.dependencyLabel.setVisible(bool(missing))
        self.ui.installButton.setVisible(bool(missing))
        self.updateButtons()

    def onInstallDependencies(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to install the Python packages."), waitCursor=True):
            installDependencies()
        self.updateDependencyStatus()
        self.refreshModelList()

    # --------------------------------------------------------------------------- model

    def refreshModelList(self) -> None:
        selector = self.ui.modelSelector
        current = selector.currentData
        wasBlocked = selector.blockSignals(True)
        selector.clear()
        for folder in shippedModelFolders():
            selector.addItem(folder.name, str(folder))
            selector.setItemData(selector.count - 1, modelDescription(folder), qt.Qt.ToolTipRole)
        if current:
            index = selector.findData(current)
            if index < 0:
                selector.addItem(Path(current).name, current)
                index = selector.count - 1
            selector.setCurrentIndex(index)
        selector.blockSignals(wasBlocked)
        self.onModelChanged()

    def onLoadModelFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(self.parent, _("Model folder (model.safetensors + model.json)"))
        if not folder:
            return
        if not all((Path(folder) / f).is_file() for f in MODEL_FILES):
            slicer.util.errorDisplay(
                _("{folder} is not a model folder: it needs model.json and model.safetensors.").format(folder=folder)
            )
            return
        selector = self.ui.modelSelector
        index = selector.findData(folder)
        if index < 0:
            selector.addItem(Path(folder).name, folder)
            selector.setItemData(selector.count - 1, modelDescription(Path(folder)), qt.Qt.ToolTipRole)
            index = selector.count - 1
        selector.setCurrentIndex(index)

    def onModelChanged(self, index=None) -> None:
        folder = self.ui.modelSelector.currentData
        device = DEVICES.get(self.ui.deviceSelector.currentText, "auto")
        if folder != self.logic.model_folder or device != self.logic.device:
            self.logic.set_model(folder or None, device)
        self.updateButtons()

    # ---------------------------------------------------------------------- detection

    def onDetect(self) -> None:
        if missingPackages():
            self.onInstallDependencies()
            if missingPackages():
                return
        volume = self._parameterNode.inputVolume
        with slicer.util.tryWithErrorDisplay(_("Keypoint detection failed."), waitCursor=True):
            # the model is loaded on the inference thread; its errors come through onLogicError
            pointList = self.logic.detect(volume, self._existingPointList(volume), blocking=False)
            self._parameterNode.pointList = pointList
            slicer.util.setSliceViewerLayers(background=volume, fit=True)

    def _existingPointList(self, volume):
        pointList = self._parameterNode.pointList
        reference = reference_volume(pointList) if pointList is not None else None
        if reference is not None and reference.GetID() == volume.GetID():
            return pointList
        return None  # the logic finds or creates "<volume> keypoints"

    # --------------------------------------------------------------------- correction

    def _pointList(self):
        pointList = self._parameterNode.pointList if self._parameterNode else None
        return pointList if self.logic.is_tracked(pointList) else None

    def _runOnPointList(self, action, *args) -> None:
        pointList = self._pointList()
        if pointList is None:
            return
        try:
            action(pointList, *args)
        except LogicBusyError as error:
            slicer.util.showStatusMessage(str(error), 3000)
        except Exception as error:  # shown, never lost
            logging.exception("InteractiveKeypoints")
            slicer.util.errorDisplay(str(error))
        self.updateButtons()

    def onUpdate(self) -> None:
        self._runOnPointList(self.logic.update)

    def onUndo(self) -> None:
        self._runOnPointList(self.logic.undo)

    def onRedo(self) -> None:
        self._runOnPointList(self.logic.redo)

    def onReset(self) -> None:
        self._runOnPointList(self.logic.reset)

    def onUnfix(self) -> None:
        rows = sorted({index.row() for index in self.ui.landmarkTable.selectionModel().selectedRows()})
        if rows:
            self._runOnPointList(lambda pointList: self.logic.unfix(pointList, rows, blocking=False))

    def _installShortcuts(self) -> None:
        if self._shortcuts:
            return
        mainWindow = slicer.util.mainWindow()
        if mainWindow is None:
            return
        for keys, slot in (("Ctrl+Z", self.onUndo), ("Ctrl+Y", self.onRedo)):
            shortcut = qt.QShortcut(qt.QKeySequence(keys), mainWindow)
            shortcut.connect("activated()", slot)
            self._shortcuts.append(shortcut)

    def _removeShortcuts(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
        self._shortcuts = []

    # ----------------------------------------------------------------- logic callbacks

    def onPollTimer(self) -> None:
        self._runner.poll()  # finishes computations on the main thread
        if not self._runner.busy:
            self._pollTimer.stop()

    def onLogicBusy(self, pointList, busy) -> None:
        if busy:
            self._pollTimer.start()
            self.ui.statusLabel.text = _("Running the model...")
        self.updateButtons()

    def onLogicUpdated(self, pointList) -> None:
        current = self._parameterNode.pointList if self._parameterNode else None
        if current is None or current.GetID() != pointList.GetID():
            return
        latency = self.logic.latency(pointList)
        if latency is not None and not self.logic.is_busy(pointList):
            self.ui.statusLabel.setStyleSheet("")
            self.ui.statusLabel.text = _("Model ran in {ms:.0f} ms.").format(ms=1000 * latency)
        self.updateTable()
        self.updateMeasurements()
        self.updateButtons()

    def onLogicError(self, message) -> None:
        self.ui.statusLabel.setStyleSheet("color: #c0392b")
        self.ui.statusLabel.text = message
        slicer.util.showStatusMessage(message, 5000)

    # ----------------------------------------------------------------------- display

    def updateButtons(self) -> None:
        if self._parameterNode is None:
            return
        ready = not missingPackages() and self.ui.modelSelector.count > 0
        volume = self._parameterNode.inputVolume
        self.ui.detectButton.enabled = ready and volume is not None
        self.ui.detectButton.toolTip = (
            _("Place all landmarks on the radiograph")
            if ready
            else _("Install the missing packages and choose a model first")
        )
        pointList = self._pointList()
        idle = pointList is not None and not self.logic.is_busy(pointList)
        self.ui.updateButton.enabled = idle and not self._parameterNode.autoRefine
        self.ui.undoButton.enabled = idle and self.logic.can_undo(pointList)
        self.ui.redoButton.enabled = idle and self.logic.can_redo(pointList)
        self.ui.unfixButton.enabled = idle
        self.ui.resetButton.enabled = idle
        hasPoints = self._parameterNode.pointList is not None
        self.ui.exportJsonButton.enabled = hasPoints
        self.ui.exportCsvButton.enabled = hasPoints
        self.ui.batchButton.enabled = ready

    def updateTable(self) -> None:
        table = self.ui.landmarkTable
        pointList = self._parameterNode.pointList if self._parameterNode else None
        if pointList is None:
            table.setRowCount(0)
            return
        states, confidence = point_states(pointList)
        table.setRowCount(len(states))
        lowColor = qt.QColor(255, 200, 200)
        for k, state in enumerate(states):
            description = pointList.GetNthControlPointDescription(k)
            low = is_low_confidence(description)
            conf = "" if confidence[k] != confidence[k] else f"{confidence[k]:.2f}"  # NaN -> ""
            texts = (pointList.GetNthControlPointLabel(k), state + (" (check)" if low else ""), conf)
            for column, text in enumerate(texts):
                item = table.item(k, column)
                if item is None:
                    item = qt.QTableWidgetItem()
                    table.setItem(k, column, item)
                item.setText(text)
                item.setBackground(qt.QBrush(lowColor) if low else qt.QBrush())

    def updateMeasurements(self) -> None:
        """Show the point list's measurements table (the logic refills it) and its names."""
        pointList = self._parameterNode.pointList if self._parameterNode else None
        table = self.logic.measurement_table(pointList) if pointList is not None and self.logic.is_tracked(pointList) else None
        self.ui.measurementsCollapsibleButton.setVisible(table is not None)
        self.ui.measurementTable.setMRMLTableNode(table)
        if table is None:
            return
        names = [""] + [table.GetCellText(row, 0) for row in range(table.GetNumberOfRows())]
        selector = self.ui.measurementSelector
        if [selector.itemText(i) for i in range(selector.count)] != names:
            wasBlocked = selector.blockSignals(True)
            current = selector.currentText
            selector.clear()
            selector.addItems(names)
            selector.setCurrentIndex(max(0, names.index(current) if current in names else 0))
            selector.blockSignals(wasBlocked)

    def onMeasurementSelected(self, index=None) -> None:
        pointList = self._parameterNode.pointList if self._parameterNode else None
        if pointList is None or not self.logic.is_tracked(pointList) or self.logic.is_busy(pointList):
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot draw this measurement."), waitCursor=False):
            self.logic.select_measurement(pointList, self.ui.measurementSelector.currentText)

    def onTableClicked(self, row, column) -> None:
        pointList = self._parameterNode.pointList
        if pointList is not None and row < pointList.GetNumberOfControlPoints():
            slicer.modules.markups.logic().JumpSlicesToNthPointInMarkup(pointList.GetID(), row, True)

    # ------------------------------------------------------------------------- export

    def onExport(self, extension) -> None:
        pointList = self._parameterNode.pointList
        if pointList is None:
            return
        fileFilter = _("Slicer markups (*.mrk.json)") if extension == ".mrk.json" else _("CSV (*.csv)")
        path = qt.QFileDialog.getSaveFileName(
            self.parent, _("Save landmarks"), pointList.GetName() + extension, fileFilter
        )
        if not path:
            return
        if not path.lower().endswith(extension):
            path += extension
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            self.logic.export(pointList, path)
            slicer.util.showStatusMessage(_("Saved {path}").format(path=path), 3000)

    def onProcessFolder(self) -> None:
        inputDir, outputDir = self.ui.batchInputPath.currentPath, self.ui.batchOutputPath.currentPath
        if not inputDir or not outputDir:
            slicer.util.errorDisplay(_("Choose an input and an output folder."))
            return
        with slicer.util.tryWithErrorDisplay(_("Batch processing failed."), waitCursor=True):
            self.logic.model()
            results = self.logic.process_folder(inputDir, outputDir)
            failed = [r for r in results if "error" in r]
            message = _("{done} of {total} images processed; results in {folder}.").format(
                done=len(results) - len(failed), total=len(results), folder=outputDir
            )
            if failed:
                message += "\n\n" + "\n".join(f"{Path(r['input']).name}: {r['error']}" for r in failed)
            slicer.util.infoDisplay(message)


def installDependencies() -> None:
    """Install what is missing, each step after the user confirms.

    torch: through the PyTorch extension (PyTorchUtils), which picks a CUDA build matching
    the NVIDIA driver, or the CPU build. The rest: pip (slicer.pydeps / slicer.packaging
    ``pip_ensure`` when this Slicer has it, else ``slicer.util.pip_install``).
    """
    missing = missingPackages()
    if "torch" in missing:
        _installTorch()
    requirements = [PIP_REQUIREMENTS[name] for name in missing if name in PIP_REQUIREMENTS]
    if requirements:
        _pipInstall(requirements)


def _installTorch() -> None:
    try:
        import PyTorchUtils
    except ImportError:
        raise RuntimeError(
            _("PyTorch is needed. Install the 'PyTorch' extension from the Extensions Manager, restart Slicer, and try again.")
        ) from None
    box = qt.QMessageBox(slicer.util.mainWindow())
    box.setWindowTitle(_("Install PyTorch"))
    box.setText(_("Interactive Keypoints needs PyTorch (a download of several hundred MB to a few GB). Which build?"))
    automatic = box.addButton(_("GPU if available"), qt.QMessageBox.AcceptRole)
    cpu = box.addButton(_("CPU only"), qt.QMessageBox.AcceptRole)
    box.addButton(qt.QMessageBox.Cancel)
    box.exec_()
    if box.clickedButton() not in (automatic, cpu):
        return
    backend = "cpu" if box.clickedButton() == cpu else None
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=False, forceComputationBackend=backend, torchVersionRequirement=TORCH_REQUIREMENT
    )
    if torch is None:
        raise RuntimeError(_("PyTorch was not installed."))


def _pipInstall(requirements: list) -> None:
    pydeps = None
    for name in ("slicer.pydeps", "slicer.packaging"):
        try:
            pydeps = importlib.import_module(name)
            break
        except ImportError:
            continue
    if pydeps is not None and hasattr(pydeps, "pip_ensure"):
        from packaging.requirements import Requirement

        # pip_ensure asks the user before installing and offers a restart when needed
        pydeps.pip_ensure([Requirement(r) for r in requirements], requester="InteractiveKeypoints")
        return
    if not slicer.util.confirmOkCancelDisplay(
        _("Interactive Keypoints needs these Python packages: {packages}. Install them now?").format(
            packages=", ".join(requirements)
        )
    ):
        return
    slicer.util.pip_install(requirements)


#
# InteractiveKeypointsLogic
#


class InteractiveKeypointsLogic(ScriptedLoadableModuleLogic, KeypointsMRMLLogic):
    """The engine's MRML logic with Slicer's parameter node. Usable from the Python console:

    logic = slicer.util.getModuleLogic("InteractiveKeypoints")
    points = logic.detect(getNode("radiograph"))
    """

    def __init__(self, model=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        KeypointsMRMLLogic.__init__(self, scene=None, model=model)

    def getParameterNode(self):
        return InteractiveKeypointsParameterNode(super().getParameterNode())


#
# InteractiveKeypointsTest
#


class InteractiveKeypointsTest(ScriptedLoadableModuleTest):
    """The plain-Python scenario of Testing/test_mrml_logic.py, inside the Slicer application."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        if missingPackages():
            self.delayDisplay(f"Skipped: missing Python packages {missingPackages()}")
            return
        self.test_DetectDragUndoExport()
        self.setUp()
        self.test_DragOutsideIsRefused()

    def _setUpCase(self):
        import numpy as np
        import torch

        from interactive_keypoints.config import compact_config
        from interactive_keypoints.model_io import build_model
        from interactive_keypoints.phantom import make_spine_phantom

        phantom = make_spine_phantom(seed=3, height=256, width=128)
        # an untrained tiny network: the logic's behaviour does not depend on training
        model = build_model(compact_config(
            len(phantom.names), input_size=(128, 64), width=8, ocr_mid_channels=32, ocr_key_channels=16,
            landmark_names=phantom.names,
        ))
        with torch.no_grad():
            model.network.hint_fusion.scale.fill_(20.0)  # make clicks matter in an untrained network
        logic = InteractiveKeypointsLogic(model=model)
        sx, sy = phantom.spacing
        volume = slicer.util.addVolumeFromArray(
            phantom.image[np.newaxis], np.diag([-sx, -sy, 1.0, 1.0]), name="phantom"
        )
        return logic, volume

    @staticmethod
    def _target(pointList, volume, k, offset):
        """RAS of point k moved by ``offset`` pixels, kept on the image."""
        import numpy as np

        from interactive_keypoints.mrml_logic import control_point_positions, ijk_to_ras_matrix, pixels_to_ras, ras_to_pixels

        m = ijk_to_ras_matrix(volume)
        width, height = volume.GetImageData().GetDimensions()[:2]
        xy = ras_to_pixels(control_point_positions(pointList)[k], m)[0] + np.asarray(offset, float)
        return pixels_to_ras(np.clip(xy, 0.0, [width - 1.0, height - 1.0]), m)[0]

    @staticmethod
    def _drag(pointList, k, ras):
        """What the markups view widget does for a mouse drag."""
        pointList.GetDisplayNode().SetActiveControlPoint(k)
        pointList.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointStartInteractionEvent)
        pointList.SetNthControlPointPosition(k, *ras)
        pointList.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)

    def test_DetectDragUndoExport(self):
        import numpy as np

        from interactive_keypoints.mrml_logic import control_point_positions, point_states

        self.delayDisplay("Detect, drag, undo, export")
        logic, volume = self._setUpCase()
        pointList = logic.detect(volume)
        self.assertEqual(pointList.GetName(), "phantom keypoints")
        self.assertEqual(pointList.GetNumberOfControlPoints(), 68)
        self.assertEqual(pointList.GetNthControlPointLabel(0), "T1-top-left")
        before = control_point_positions(pointList)

        k = 10
        target = self._target(pointList, volume, k, (6.0, -5.0))
        self._drag(pointList, k, target)
        after = control_point_positions(pointList)
        np.testing.assert_allclose(after[k], target, atol=1e-6)
        self.assertEqual(point_states(pointList)[0][k], "user-fixed")
        others = np.delete(np.arange(68), k)
        self.assertTrue(np.abs(after[others] - before[others]).max() > 1e-3, "the other points should move")

        logic.undo(pointList)
        np.testing.assert_allclose(control_point_positions(pointList), before, atol=1e-6)
        self.assertEqual(point_states(pointList)[0][k], "predicted")

        logic.redo(pointList)
        path = os.path.join(slicer.app.temporaryPath, "InteractiveKeypointsTest.mrk.json")
        logic.export(pointList, path)
        loaded = slicer.util.loadMarkups(path)
        np.testing.assert_allclose(control_point_positions(loaded), control_point_positions(pointList), atol=1e-3)
        self.assertEqual(point_states(loaded)[0], point_states(pointList)[0])
        self.delayDisplay("Test passed")

    def test_DragOutsideIsRefused(self):
        import numpy as np

        from interactive_keypoints.mrml_logic import control_point_positions

        self.delayDisplay("A drop outside the image is refused")
        logic, volume = self._setUpCase()
        errors = []
        logic.on_error = errors.append
        pointList = logic.detect(volume)
        before = control_point_positions(pointList)
        self._drag(pointList, 5, (1000.0, 1000.0, 0.0))  # far outside the 128 x 256 px image
        np.testing.assert_allclose(control_point_positions(pointList), before, atol=1e-6)
        self.assertEqual(len(errors), 1)
        self.assertIn("outside", errors[0])
        self.delayDisplay("Test passed")
