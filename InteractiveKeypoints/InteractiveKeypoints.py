"""Interactive Keypoints: a 3D Slicer module for interactive landmark estimation on radiographs.

The model places all landmarks as a markups point list; dragging a wrong point makes it
user-fixed and re-runs the model, which moves only the points that are not fixed yet.

All behaviour lives in ``interactive_keypoints.mrml_logic.KeypointsMRMLLogic`` (MRML, no
Qt); this file adds the panel, the worker thread, the dependency installation and the test.
The engine needs torch: it is imported lazily, so the module loads without it and says
what is missing.
"""

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Annotated, Union

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode
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

from interactive_keypoints.conventions import POINTS_CSV, POINTS_JSON, PREDICTED, USER_FIXED
from interactive_keypoints.dependencies import REQUIREMENTS_FILE, load_requirements, unmet_requirements
from interactive_keypoints.model_folders import CONFIG_FILE, WEIGHTS_FILE, is_model_folder, shipped_models
from interactive_keypoints.mrml_logic import (
    PHANTOM_VOLUME_NAME,
    FixesWouldBeLostError,
    KeypointsMRMLLogic,
    LogicBusyError,
    ThreadedRunner,
    add_phantom_volume,
    is_low_confidence,
    point_states,
    reference_volume,
)
from interactive_keypoints.training_set import AlreadyAddedError

DEVICES = {"auto": "auto", "CPU": "cpu", "GPU": "cuda"}
HOMEPAGE = "https://github.com/InteractiveKeypoints/SlicerInteractiveKeypoints"
# While the model runs, the poll timer fires as soon as Qt is idle and then waits up to
# POLL_WAIT_S in Python with the GIL released: Slicer's main loop holds the GIL while idle,
# so this wait is when the inference thread runs. GUI events are handled between waits.
POLL_INTERVAL_MS = 1
POLL_WAIT_S = 0.02
# how often an interaction the view started without a mouse button (snap to slice) is looked for
INTERACTION_CHECK_MS = 100
# single keys, as the Segment Editor's (Z, Y, Space); neither is a slice view key
NEXT_KEY = "N"
CONFIRM_KEY = "C"
# landmark table: the landmark index of a row (rows are reordered when sorted by score)
LANDMARK_ROLE = qt.Qt.UserRole
SCORE_COLUMN = 3
# how often a training run's progress is read (its process writes it after every epoch)
TRAINING_POLL_MS = 1000


_unmetRequirements = None  # cached: checked at every button update, refreshed after installs


def missingPackages(refresh: bool = False) -> list:
    """The engine's requirements (Resources/requirements.txt) that are missing or too old,
    as text for the user, e.g. "torch>=2.3 (installed: 2.1.0)"."""
    global _unmetRequirements
    if _unmetRequirements is None or refresh:
        _unmetRequirements = unmet_requirements(load_requirements(REQUIREMENTS_FILE))
    return [str(requirement) for requirement in _unmetRequirements]


def modelDescription(folder: Path) -> str:
    try:
        config = json.loads((Path(folder) / CONFIG_FILE).read_text())
        names = config.get("landmark_names") or []
        return (
            f"{config.get('description') or folder.name}\n{config.get('num_keypoints', len(names))} landmarks\n{folder}"
        )
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
        self.parent.contributors = ["InteractiveKeypoints maintainers (SlicerInteractiveKeypoints project)"]
        self.parent.helpText = _(
            "Place anatomical landmarks on a 2-D radiograph with a neural network, then correct them "
            "interactively: drag a wrong point and the model runs again, keeping every point you fixed "
            "and moving only the others.<br>"
            "Predicted points are drawn in amber, user-fixed points in green; the state and confidence "
            "of each point are saved in its description. The Undo and Redo keys (Ctrl+Z, and Ctrl+Y or "
            "Ctrl+Shift+Z depending on the platform) undo and redo a correction together with its "
            "re-inference.<br>"
            "Try it on the generated spine radiograph in Sample Data. "
            'See the <a href="{url}">module documentation</a>.'
        ).format(url=HOMEPAGE + "#readme")
        self.parent.acknowledgementText = _(
            "Method: J. Kim, T. Kim, T. Kim, J. Choo, D.-W. Kim, B. Ahn, I.-S. Song, Y.-J. Kim, "
            "<i>Morphology-Aware Interactive Keypoint Estimation</i>, MICCAI 2022."
        )
        # Sample Data lists its sources once the application has started
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """The generated spine phantom in Sample Data (made on the fly, nothing to download)."""
    import SampleData

    category = "InteractiveKeypoints"
    if hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory"):  # recent Slicer
        SampleData.SampleDataLogic.registerCustomSampleDataCategory(category, title=_("Interactive Keypoints"))
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=category,
        sampleName=PHANTOM_VOLUME_NAME,
        thumbnailFileName=os.path.join(os.path.dirname(__file__), "Resources", "Icons", "InteractiveKeypoints.png"),
        uris=[],  # generated: SampleDataSource needs equally long lists, empty here
        fileNames=[],
        customDownloader=loadSpinePhantom,
    )


def loadSpinePhantom(source=None):
    """Sample Data's custom downloader: add the phantom radiograph and show it."""
    volume = add_phantom_volume(slicer.mrmlScene)
    showRadiograph(volume)
    return volume


def showRadiograph(volume) -> None:
    """Show a radiograph in the slice views, in its own plane (a DICOM film is usually
    coronal: an axial view would cut it edge-on), filling the views."""
    slicer.util.setSliceViewerLayers(background=volume, fit=True, rotateToVolumePlane=True)


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

    # both types named: connectGui sets the selector's node types from this annotation
    # (and the .ui hides child types), so a scalar-only annotation hides RGB radiographs
    inputVolume: Union[vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode]
    pointList: vtkMRMLMarkupsFiducialNode
    autoRefine: bool = True
    refineWhileDragging: bool = False
    lowConfidence: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


#
# InteractiveKeypointsWidget
#


def modalProgressDialog(label: str, title: str):
    """A progress dialog that stays open until closed and blocks the rest of the application
    (createProgressDialog's default is not modal): Detect, drags, undo and Close Scene wait for it."""
    return slicer.util.createProgressDialog(
        labelText=label, windowTitle=title, maximum=1, autoClose=False, windowModality=qt.Qt.ApplicationModal
    )


class InteractiveKeypointsWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runner = None
        self._pollTimer = None  # made in setup(); cleanup() must work if setup() failed before
        self._interactionTimer = None
        self._trainingTimer = None
        self._shortcuts = []
        self._attachRefused = set()
        self._sortByScore = False  # the landmark table: by check-next score, or landmark order

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
        self.logic.on_run_failed = self.onModelRunFailed
        self.logic.on_updated = self.onLogicUpdated
        self.logic.on_busy = self.onLogicBusy
        self.logic.on_drag_started = self.onDragStarted
        self.logic.watch_scene()  # a deleted point list takes its halo, table and lines with it
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollTimer)
        self._interactionTimer = qt.QTimer()
        self._interactionTimer.setInterval(INTERACTION_CHECK_MS)
        self._interactionTimer.connect("timeout()", self.onInteractionTimer)
        self._trainingTimer = qt.QTimer()
        self._trainingTimer.setInterval(TRAINING_POLL_MS)
        self._trainingTimer.connect("timeout()", self.onTrainingTimer)

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
        self.ui.nextButton.connect("clicked(bool)", self.onNext)
        self.ui.confirmButton.connect("clicked(bool)", self.onConfirm)
        self.ui.exportJsonButton.connect("clicked(bool)", lambda: self.onExport(POINTS_JSON))
        self.ui.exportCsvButton.connect("clicked(bool)", lambda: self.onExport(POINTS_CSV))
        self.ui.batchButton.connect("clicked(bool)", self.onProcessFolder)
        self.ui.landmarkTable.connect("cellClicked(int,int)", self.onTableClicked)
        self.ui.landmarkTable.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)
        self.ui.landmarkTable.horizontalHeader().connect("sectionClicked(int)", self.onTableHeaderClicked)
        self.ui.measurementSelector.connect("currentIndexChanged(int)", self.onMeasurementSelected)
        self.ui.trainingSetPath.connect("currentPathChanged(QString)", self.onTrainingSetChanged)
        self.ui.addToSetButton.connect("clicked(bool)", self.onAddToTrainingSet)
        self.ui.annotateNextButton.connect("clicked(bool)", self.onAnnotateNext)
        self.ui.trainButton.connect("clicked(bool)", lambda: self.onTrain(continueTraining=False))
        self.ui.continueTrainingButton.connect("clicked(bool)", lambda: self.onTrain(continueTraining=True))
        self.ui.resumeTrainingButton.connect("clicked(bool)", self.onResumeTraining)
        self.ui.cancelTrainingButton.connect("clicked(bool)", self.onCancelTraining)

        self.refreshModelList()
        self.updateDependencyStatus()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        self._removeShortcuts()
        if self._pollTimer is not None:
            self._pollTimer.stop()
            self._interactionTimer.stop()
            self._trainingTimer.stop()
        if self.logic is not None:
            self.logic.forget_all()
            self.logic.cancel_training()  # with Slicer: the run keeps its best model, Resume continues it
        if self._runner is not None:
            self._runner.shutdown()
            self._runner = None

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
        self._attachRefused.clear()  # node IDs are reused by the next scene
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self.logic.watch_scene()
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = self.logic.first_radiograph()  # one slice, never a label map
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
        writtenByUs = USER_FIXED in states or (confidence == confidence).any()  # NaN != NaN
        volume = reference_volume(pointList) or inputVolume
        if not writtenByUs or volume is None or missingPackages() or self.ui.modelSelector.count == 0:
            return
        try:
            self.logic.attach(pointList, volume, blocking=False)
        except Exception as error:  # noqa: BLE001 - any refusal is shown once, not at every parameter change
            self._attachRefused.add(pointList.GetID())
            slicer.util.errorDisplay(
                _("Could not attach to {name}: {error}").format(name=pointList.GetName(), error=error)
            )

    # -------------------------------------------------------------------- dependencies

    def updateDependencyStatus(self) -> None:
        missing = missingPackages()
        if missing:
            self.ui.dependencyLabel.text = _(
                "Missing or outdated Python packages: {names}. The module needs them to run the model."
            ).format(names=", ".join(missing))
            self.ui.dependencyLabel.setStyleSheet("color: #c0392b")
        self.ui.dependencyLabel.setVisible(bool(missing))
        self.ui.installButton.setVisible(bool(missing))
        self.updateButtons()

    def onInstallDependencies(self) -> None:
        installed = False
        with slicer.util.tryWithErrorDisplay(_("Failed to install the Python packages.")):
            installed = installDependencies()
            if not installed:  # the user said no: not an error
                slicer.util.showStatusMessage(_("Installation of the Python packages cancelled."), 5000)
        missingPackages(refresh=True)
        self.updateDependencyStatus()
        self.refreshModelList()

    # --------------------------------------------------------------------------- model

    def refreshModelList(self) -> None:
        selector = self.ui.modelSelector
        current = selector.currentData
        wasBlocked = selector.blockSignals(True)
        selector.clear()
        # the same discovery as the logic, CLI and web app, and the training set's own models
        for folder in shipped_models() + self.logic.training_set_models(self._trainingSet()):
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
        if not is_model_folder(folder):
            slicer.util.errorDisplay(
                _("{folder} is not a model folder: it needs {config} and {weights}.").format(
                    folder=folder, config=CONFIG_FILE, weights=WEIGHTS_FILE
                )
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
            self._attachRefused.clear()  # a list refused by the last model may suit this one
            if self._parameterNode is not None:
                self._attachIfOurs(self._parameterNode.pointList, self._parameterNode.inputVolume)
        self.updateButtons()

    # ---------------------------------------------------------------------- detection

    def onDetect(self) -> None:
        if missingPackages():
            self.onInstallDependencies()
            if missingPackages():
                return
        volume = self._parameterNode.inputVolume
        existing = self._existingPointList(volume)
        with slicer.util.tryWithErrorDisplay(_("Keypoint detection failed."), waitCursor=True):
            # the model is loaded on the inference thread; its errors come through onLogicError.
            # The user's fixed points are kept; a model of other landmarks would replace them: ask.
            try:
                pointList = self.logic.detect(volume, existing, blocking=False)
            except FixesWouldBeLostError as error:
                if not slicer.util.confirmOkCancelDisplay(
                    _("{reason}. Replace them?").format(reason=error), windowTitle=_("Detect keypoints")
                ):
                    return
                pointList = self.logic.detect(volume, existing, blocking=False, keep_fixes=False)
            self._parameterNode.pointList = pointList
            showRadiograph(volume)

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
        landmarks = self._selectedLandmarks()
        if landmarks:
            self._runOnPointList(lambda pointList: self.logic.unfix(pointList, landmarks, blocking=False))

    def onNext(self) -> None:
        """Centre the views on the landmark to check next, give it a halo and select its row."""

        def showNext(pointList):
            k = self.logic.next_point(pointList)
            if k is None:
                self.ui.statusLabel.text = _("Every landmark is fixed: nothing left to check.")
                return
            # centred, as the Markups module's "jump to point" does
            slicer.modules.markups.logic().JumpSlicesToNthPointInMarkup(pointList.GetID(), k, True)
            self.updateTable()
            self._selectLandmarkRow(k)

        self._runOnPointList(showNext)

    def onConfirm(self) -> None:
        """Fix the landmarks selected in the table (after Next: the suggested one) where they
        are; while the model runs they are queued like drops."""
        pointList = self._pointList()
        landmarks = self._selectedLandmarks()
        if not landmarks and pointList is not None and self.logic.suggested_point(pointList) is not None:
            landmarks = [self.logic.suggested_point(pointList)]
        for k in landmarks:
            self._runOnPointList(lambda pointList, k=k: self.logic.confirm(pointList, k, blocking=False))

    def _installShortcuts(self) -> None:
        if self._shortcuts:
            return
        mainWindow = slicer.util.mainWindow()
        if mainWindow is None:
            return
        # the platform's standard keys (Redo: Ctrl+Y on Windows, Ctrl+Shift+Z elsewhere),
        # as the Segment Editor installs them
        keysAndSlots = (
            (qt.QKeySequence.Undo, self.onUndo),
            (qt.QKeySequence.Redo, self.onRedo),
            (NEXT_KEY, self.onNext),
            (CONFIRM_KEY, self.onConfirm),
        )
        for keys, slot in keysAndSlots:
            shortcut = qt.QShortcut(qt.QKeySequence(keys), mainWindow)
            shortcut.connect("activated()", slot)
            self._shortcuts.append(shortcut)

    def _removeShortcuts(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
        self._shortcuts = []

    # ----------------------------------------------------------------- logic callbacks

    def onPollTimer(self) -> None:
        self._runner.poll(wait=POLL_WAIT_S)  # runs the worker; finishes computations here
        if not self._runner.busy:
            self._pollTimer.stop()

    def onDragStarted(self, pointList) -> None:
        self._interactionTimer.start()

    def onInteractionTimer(self) -> None:
        """A view interaction with no mouse button down never gets its end (the markups
        widget's snap-to-slice key): end it, so that the point counts as a drop."""
        if not self.logic.is_dragging():
            self._interactionTimer.stop()
        elif slicer.app.mouseButtons() == qt.Qt.NoButton:
            self.logic.end_interaction()
            self._interactionTimer.stop()

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
            # the list's point count is locked (one point per landmark): say why adding fails
            self.ui.statusLabel.text = _(
                "Model ran in {ms:.0f} ms. Drag points to correct them; the {count} points cannot be "
                "added or deleted (one per landmark).\nSpacing: {spacing}."
            ).format(
                ms=1000 * latency,
                count=pointList.GetNumberOfControlPoints(),
                spacing=self.logic.spacing_description(pointList),
            )
        self.updateTable()
        self.updateMeasurements()
        self.updateButtons()

    def onLogicError(self, message) -> None:
        self.ui.statusLabel.setStyleSheet("color: #c0392b")
        self.ui.statusLabel.text = message
        slicer.util.showStatusMessage(message, 5000)

    def onModelRunFailed(self, message) -> None:
        """A model run on the inference thread failed (model not loadable, bad image)."""
        # shown after the poll timer's callback returns: a modal dialog inside it would
        # poll the runner again from the dialog's event loop
        qt.QTimer.singleShot(
            0, lambda: slicer.util.errorDisplay(_("The model could not run: {message}").format(message=message))
        )

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
        self.ui.nextButton.enabled = pointList is not None
        self.ui.confirmButton.enabled = pointList is not None  # queued like a drop while the model runs
        hasPoints = self._parameterNode.pointList is not None
        self.ui.exportJsonButton.enabled = hasPoints
        self.ui.exportCsvButton.enabled = hasPoints
        self.ui.batchButton.enabled = ready
        self.updateTrainingButtons()

    def updateTrainingButtons(self) -> None:
        trainingSet = self._trainingSet()
        running = self.logic.training_job is not None and self.logic.training_job.running
        idle = trainingSet is not None and not running and not missingPackages()
        self.ui.addToSetButton.enabled = trainingSet is not None and self._parameterNode.pointList is not None
        self.ui.annotateNextButton.enabled = idle and self.ui.modelSelector.count > 0
        self.ui.trainButton.enabled = idle
        self.ui.continueTrainingButton.enabled = idle and bool(self.logic.training_set_models(trainingSet))
        self.ui.resumeTrainingButton.enabled = idle and self.logic.can_resume_training(trainingSet)
        self.ui.cancelTrainingButton.enabled = running

    def updateTable(self) -> None:
        table = self.ui.landmarkTable
        pointList = self._parameterNode.pointList if self._parameterNode else None
        if pointList is None:
            table.setRowCount(0)
            return
        states, confidence = point_states(pointList)
        tracked = self.logic.is_tracked(pointList)
        scores = self.logic.review_scores(pointList) if tracked else None
        order = self.logic.review_order(pointList) if tracked and self._sortByScore else range(len(states))
        table.setRowCount(len(states))
        lowColor = qt.QColor(255, 200, 200)
        for row, k in enumerate(order):
            description = pointList.GetNthControlPointDescription(k)
            low = is_low_confidence(description)
            conf = "" if confidence[k] != confidence[k] else f"{confidence[k]:.2f}"  # NaN -> ""
            score = "" if scores is None or not math.isfinite(scores[k]) else f"{scores[k]:.2f}"  # fixed: -inf
            texts = (pointList.GetNthControlPointLabel(k), states[k] + (" (check)" if low else ""), conf, score)
            for column, text in enumerate(texts):
                item = table.item(row, column)
                if item is None:
                    item = qt.QTableWidgetItem()
                    table.setItem(row, column, item)
                item.setText(text)
                item.setData(LANDMARK_ROLE, k)
                item.setBackground(qt.QBrush(lowColor) if low else qt.QBrush())
        header = table.horizontalHeader()
        header.setSortIndicatorShown(self._sortByScore)
        if self._sortByScore:
            header.setSortIndicator(SCORE_COLUMN, qt.Qt.DescendingOrder)

    def onTableHeaderClicked(self, column) -> None:
        """The check-next header sorts by score (highest first); any other, landmark order."""
        self._sortByScore = column == SCORE_COLUMN
        selected = self._selectedLandmarks()
        self.updateTable()
        for k in selected[:1]:
            self._selectLandmarkRow(k)

    def _landmarkOfRow(self, row) -> int:
        item = self.ui.landmarkTable.item(row, 0)
        return int(item.data(LANDMARK_ROLE)) if item is not None else row

    def _selectedLandmarks(self) -> list:
        rows = {index.row() for index in self.ui.landmarkTable.selectionModel().selectedRows()}
        return sorted(self._landmarkOfRow(row) for row in rows)

    def _selectLandmarkRow(self, k) -> None:
        table = self.ui.landmarkTable
        for row in range(table.rowCount):
            if self._landmarkOfRow(row) == k:
                table.selectRow(row)
                table.scrollToItem(table.item(row, 0))
                return

    def updateMeasurements(self) -> None:
        """Show the point list's measurements table (the logic refills it) and its names."""
        pointList = self._parameterNode.pointList if self._parameterNode else None
        table = (
            self.logic.measurement_table(pointList)
            if pointList is not None and self.logic.is_tracked(pointList)
            else None
        )
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
        k = self._landmarkOfRow(row)
        if pointList is not None and k < pointList.GetNumberOfControlPoints():
            slicer.modules.markups.logic().JumpSlicesToNthPointInMarkup(pointList.GetID(), k, True)

    # -------------------------------------------------------------- your own landmarks

    def _trainingSet(self):
        return self.ui.trainingSetPath.currentPath or None

    def onTrainingSetChanged(self, path=None) -> None:
        self.refreshModelList()  # the set's models join the shipped ones

    def onAddToTrainingSet(self) -> None:
        """Save the radiograph and the point list into the training set (asks before replacing
        the points of an image that is in it already)."""
        pointList, volume = self._parameterNode.pointList, self._parameterNode.inputVolume
        if pointList is None or self._trainingSet() is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not add to the training set."), waitCursor=True):
            try:
                path = self.logic.add_to_training_set(pointList, self._trainingSet(), volume)
            except AlreadyAddedError as error:
                if not slicer.util.confirmOkCancelDisplay(
                    _("{reason}. Replace its points with these?").format(reason=error), windowTitle=_("Training set")
                ):
                    return
                path = self.logic.add_to_training_set(pointList, self._trainingSet(), volume, replace=True)
            self.ui.trainingStatusLabel.text = _("Added {name} to the training set.").format(name=Path(path).name)
        self.updateTrainingButtons()

    def onTrain(self, continueTraining=False) -> None:
        """Train a new model of the set in a process of its own (Slicer's PythonSlicer)."""
        with slicer.util.tryWithErrorDisplay(_("Could not start the training."), waitCursor=True):
            self.logic.start_training(
                self._trainingSet(),
                self.ui.trainingMinutes.value,
                continue_training=continueTraining,
                python=trainingPython(),
                threads=max(1, (os.cpu_count() or 2) - 1),  # a core left for Slicer
            )
            self._trainingTimer.start()
        self.updateTrainingButtons()

    def onResumeTraining(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not resume the training."), waitCursor=True):
            self.logic.resume_training(self._trainingSet(), python=trainingPython())
            self._trainingTimer.start()
        self.updateTrainingButtons()

    def onCancelTraining(self) -> None:
        self.logic.cancel_training()
        self.onTrainingTimer()

    def onTrainingTimer(self) -> None:
        """Show the run's progress; when it ends, list its model and choose it."""
        progress = self.logic.training_progress()
        if progress is None:
            self._trainingTimer.stop()
            return
        self.ui.trainingProgressBar.value = int(100 * progress["fraction"])
        self.ui.trainingStatusLabel.text = progress["message"]
        if progress["status"] in ("starting", "training"):
            return
        self._trainingTimer.stop()
        self.refreshModelList()
        if progress["model"] is not None:  # the new model appears in the selector, chosen
            self.ui.modelSelector.setCurrentIndex(self.ui.modelSelector.findData(str(progress["model"])))
        self.updateTrainingButtons()

    def onAnnotateNext(self) -> None:
        """Open the set's image the model is least sure of, its points placed by the model."""
        dialog = modalProgressDialog(_("Ranking the unannotated images..."), _("Annotate next"))

        def progress(done, total, name):
            dialog.maximum, dialog.value = max(total, 1), done
            slicer.app.processEvents()
            return not dialog.wasCanceled

        try:
            with slicer.util.tryWithErrorDisplay(_("Annotate next failed."), waitCursor=False):
                result = self.logic.annotate_next(self._trainingSet(), progress=progress, runner=self._runner)
                if result is None:
                    slicer.util.infoDisplay(_("Every image of the training set is annotated."))
                    return
                volume, pointList = result
                self._parameterNode.inputVolume = volume
                self._parameterNode.pointList = pointList
                showRadiograph(volume)
                self.ui.trainingStatusLabel.text = _(
                    "{name}: correct the points (Next shows the least sure), then Add to training set."
                ).format(name=volume.GetName())
        finally:
            dialog.close()

    # ------------------------------------------------------------------------- export

    def onExport(self, extension) -> None:
        pointList = self._parameterNode.pointList
        if pointList is None:
            return
        fileFilter = _("Slicer markups (*.mrk.json)") if extension == POINTS_JSON else _("CSV (*.csv)")
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
        dialog = modalProgressDialog(_("Starting..."), _("Process folder"))

        def progress(done, total, name):
            # called before each image and every few ms while its model runs on the worker
            dialog.maximum = max(total, 1)
            dialog.value = done
            if name:
                dialog.labelText = _("Image {index} of {total}: {name}").format(index=done + 1, total=total, name=name)
            slicer.app.processEvents()
            return not dialog.wasCanceled

        self.ui.batchButton.enabled = False  # no second batch from the live GUI
        try:
            with slicer.util.tryWithErrorDisplay(_("Batch processing failed.")):
                # the model runs on the panel's inference thread, after any drag in progress
                results = self.logic.process_folder(inputDir, outputDir, progress=progress, runner=self._runner)
                self._showBatchSummary(results, outputDir)
        finally:
            dialog.close()
            self.updateButtons()

    def _showBatchSummary(self, results, outputDir) -> None:
        failed = [r for r in results if "error" in r]
        cancelled = [r for r in results if r.get("cancelled")]
        done = len(results) - len(failed) - len(cancelled)
        message = _("{done} of {total} images processed; results in {folder}.").format(
            done=done, total=len(results), folder=outputDir
        )
        self.ui.statusLabel.setStyleSheet("")
        self.ui.statusLabel.text = message  # replaces "Running the model..." of the batch's runs
        if cancelled:
            message += "\n" + _("Cancelled: {count} images not processed.").format(count=len(cancelled))
        if failed:
            message += "\n\n" + "\n".join(f"{Path(r['input']).name}: {r['error']}" for r in failed)
        (slicer.util.errorDisplay if failed else slicer.util.infoDisplay)(message)


def trainingPython() -> list:
    """The interpreter the training process runs in: Slicer's PythonSlicer (on the PATH of
    Slicer's processes; slicer.util.executePythonModule finds it the same way)."""
    python = shutil.which("PythonSlicer")
    if not python:
        raise RuntimeError(_("PythonSlicer was not found: the training process cannot start."))
    return [python]


def installDependencies() -> bool:
    """Install what is missing or too old, each step after the user confirms; False when
    the user declined (nothing more is installed then), errors raise.

    torch first, through the PyTorch extension (PyTorchUtils), which picks a CUDA build
    matching the NVIDIA driver, or the CPU build. If the user cancels it, nothing else is
    installed: MONAI would pull a PyPI torch build otherwise. The rest: pip, through
    ``slicer.packaging.pip_ensure`` (Slicer >= 5.11) or ``slicer.util.pip_install``.
    """
    from packaging.requirements import Requirement

    unmet = unmet_requirements(load_requirements(REQUIREMENTS_FILE))
    torch = [r for r in unmet if r.name == "torch"]
    others = [r.requirement for r in unmet if r.name != "torch"]
    if torch and not _installTorch(str(Requirement(torch[0].requirement).specifier)):
        return False
    if others and not _pipInstall(others):
        return False
    return True


def _installTorch(versionRequirement: str) -> bool:
    try:
        import PyTorchUtils
    except ImportError:
        raise RuntimeError(
            _(
                "PyTorch is needed. Install the 'PyTorch' extension from the Extensions Manager, restart Slicer, and try again."
            )
        ) from None
    box = qt.QMessageBox(slicer.util.mainWindow())
    box.setWindowTitle(_("Install PyTorch"))
    box.setText(
        _(
            "Interactive Keypoints needs PyTorch {version} (a download of several hundred MB to a few GB). Which build?"
        ).format(version=versionRequirement)
    )
    automatic = box.addButton(_("GPU if available"), qt.QMessageBox.AcceptRole)
    cpu = box.addButton(_("CPU only"), qt.QMessageBox.AcceptRole)
    box.addButton(qt.QMessageBox.Cancel)
    box.exec_()
    if box.clickedButton() not in (automatic, cpu):
        return False  # cancelled: stop the whole installation
    backend = "cpu" if box.clickedButton() == cpu else None
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=False, forceComputationBackend=backend, torchVersionRequirement=versionRequirement
    )
    if torch is None:  # not asked again (askConfirmation=False): the installation failed
        raise RuntimeError(_("PyTorch was not installed; see the Python console for the reason."))
    return True


def _pipInstall(requirements: list) -> bool:
    """pip-install the requirements after the user confirms; False when declined."""
    if not slicer.util.confirmOkCancelDisplay(
        _("Interactive Keypoints needs these Python packages: {packages}. Install them now?").format(
            packages=", ".join(requirements)
        ),
        windowTitle=_("Install Python packages"),
    ):
        return False
    try:
        # "from slicer import": "import slicer.packaging" here would make slicer a local name,
        # unbound at the confirmation above
        from slicer import packaging  # Slicer >= 5.11
    except ImportError:
        slicer.util.pip_install(requirements)
        return True
    # already confirmed above; pip_ensure shows the progress and offers a restart when an
    # updated package was already imported
    packaging.pip_ensure(requirements, prompt_install=False, requester="InteractiveKeypoints")
    return True


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
        self.test_PanelWiring()  # needs no torch
        self.setUp()
        if missingPackages():
            # reported as skipped (unittest), never as passed having tested nothing
            self.skipTest(f"missing Python packages {', '.join(missingPackages())}: the model tests need them")
        self.test_DetectDragUndoExport()
        self.setUp()
        self.test_DragOutsideIsRefused()
        self.setUp()
        self.test_BackgroundDetectAndDrag()

    def test_PanelWiring(self):
        """The panel without running a model: it offers the radiograph (not a label map added
        before it), says what is missing, gives the measurements table the scene, and forgets
        the lists the last model refused when the model or the scene changes."""
        import numpy as np

        self.delayDisplay("Panel wiring")
        label = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
        slicer.util.updateVolumeFromArray(label, np.zeros((1, 8, 8), np.uint8))
        volume = add_phantom_volume(slicer.mrmlScene)
        slicer.util.selectModule("InteractiveKeypoints")
        widget = slicer.util.getModuleWidget("InteractiveKeypoints")
        widget._parameterNode.inputVolume = None
        widget.initializeParameterNode()  # what entering the module does: pick a radiograph
        self.assertIs(widget._parameterNode.inputVolume, volume)
        missing = bool(missingPackages())
        self.assertEqual(not widget.ui.dependencyLabel.isHidden(), missing)
        self.assertEqual(not widget.ui.installButton.isHidden(), missing)
        self.assertEqual(widget.ui.detectButton.enabled, not missing and widget.ui.modelSelector.count > 0)
        self.assertIs(widget.ui.measurementTable.mrmlScene(), slicer.mrmlScene)
        widget._attachRefused.add("vtkMRMLMarkupsFiducialNode1")
        devices = widget.ui.deviceSelector
        devices.currentIndex = (devices.currentIndex + 1) % devices.count  # another device: a model change
        self.assertFalse(widget._attachRefused)
        widget._attachRefused.add("vtkMRMLMarkupsFiducialNode1")
        slicer.mrmlScene.Clear()
        self.assertFalse(widget._attachRefused)
        # your own landmarks: nothing to add to or train without a training set
        widget.ui.trainingSetPath.currentPath = ""
        widget.updateButtons()
        self.assertFalse(widget.ui.addToSetButton.enabled or widget.ui.trainButton.enabled)
        self.assertFalse(widget.ui.cancelTrainingButton.enabled)
        self.delayDisplay("Test passed")

    def _setUpCase(self):
        import numpy as np

        from interactive_keypoints.phantom import make_spine_phantom
        from interactive_keypoints.tiny_model import tiny_model

        phantom = make_spine_phantom(seed=3, height=256, width=128)
        # the untrained tiny network the pytest suite uses: the logic's behaviour does not depend on training
        model = tiny_model(phantom.names)
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

        from interactive_keypoints.mrml_logic import (
            control_point_positions,
            ijk_to_ras_matrix,
            pixels_to_ras,
            ras_to_pixels,
        )

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
        self.assertEqual(point_states(pointList)[0][k], USER_FIXED)
        others = np.delete(np.arange(68), k)
        self.assertTrue(np.abs(after[others] - before[others]).max() > 1e-3, "the other points should move")

        logic.undo(pointList)
        np.testing.assert_allclose(control_point_positions(pointList), before, atol=1e-6)
        self.assertEqual(point_states(pointList)[0][k], PREDICTED)

        logic.redo(pointList)
        path = os.path.join(slicer.app.temporaryPath, "InteractiveKeypointsTest.mrk.json")
        logic.export(pointList, path)
        loaded = slicer.util.loadMarkups(path)
        np.testing.assert_allclose(control_point_positions(loaded), control_point_positions(pointList), atol=1e-3)
        self.assertEqual(point_states(loaded)[0], point_states(pointList)[0])
        self.delayDisplay("Test passed")

    def _waitUntilIdle(self, logic, runner, pointList):
        """What the panel's poll timer does: wait for the worker (GIL released), keep the GUI live."""
        deadline = time.monotonic() + 300
        while logic.is_busy(pointList):
            self.assertLess(time.monotonic(), deadline, "the inference thread did not finish")
            runner.poll(wait=0.02)
            slicer.app.processEvents()

    def test_BackgroundDetectAndDrag(self):
        """The panel's path: detection and re-inference on the worker thread, results written
        on the main thread while Qt keeps running."""
        import threading

        from interactive_keypoints.inference import Predictor
        from interactive_keypoints.mrml_logic import control_point_positions, point_states

        self.delayDisplay("Detect and drag on the inference thread")
        logic, volume = self._setUpCase()
        runner = ThreadedRunner()
        logic.runner = runner
        ranOn = []
        originalLogits = Predictor.logits

        def recordingLogits(predictor, *args, **kwargs):
            ranOn.append(threading.current_thread())
            return originalLogits(predictor, *args, **kwargs)

        Predictor.logits = recordingLogits
        try:
            pointList = logic.detect(volume, blocking=False)
            self.assertTrue(logic.is_busy(pointList))
            self._waitUntilIdle(logic, runner, pointList)
            self.assertEqual(pointList.GetNumberOfControlPoints(), 68)
            self.assertTrue(pointList.GetFixedNumberOfControlPoints())

            self._drag(pointList, 3, list(control_point_positions(pointList)[3]))  # a click: no run
            self.assertFalse(logic.is_busy(pointList))
            self.assertEqual(point_states(pointList)[0][3], PREDICTED)

            target = self._target(pointList, volume, 20, (5.0, 4.0))
            self._drag(pointList, 20, target)
            self.assertTrue(logic.is_busy(pointList))
            self._waitUntilIdle(logic, runner, pointList)
            self.assertEqual(point_states(pointList)[0][20], USER_FIXED)
            self.assertTrue(ranOn and all(thread is not threading.main_thread() for thread in ranOn))
            self.assertIsNotNone(logic.latency(pointList))
        finally:
            Predictor.logits = originalLogits
            runner.shutdown()
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
