"""The browser app for one user session: a trame-slicer slice view plus a side panel.

A session is one trame server with its own state, MRML scene and logic: trame shares its
state between all clients of a server, so every browser tab gets a session of its own
(:mod:`.host` runs several in one process, sharing only the model). All landmark work is
done by :class:`~interactive_keypoints.mrml_logic.KeypointsMRMLLogic`; this module only
wires it to the page.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import logging
import os
import re
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
from slicer import (
    vtkMRMLLayerDMObjectEventObserverScripted,
    vtkMRMLLayerDMPipelineFactory,
    vtkMRMLLayerDMPipelineScriptedCreator,
)
from trame.app import TrameApp
from trame_server import Server
from trame_server.utils.asynchronous import create_task
from trame_slicer import module as trame_slicer_module
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
from vtkmodules.vtkCommonCore import vtkCommand

from .. import mrml_logic
from ..conventions import ACTIVE_COLOR, FIXED_COLOR, POINTS_JSON, PREDICTED_COLOR, file_stem, output_path
from ..errors import KeypointsError
from ..imaging import ImageError, Radiograph, check_size, image_geometry, load_radiograph
from ..mrml_logic import LogicBusyError
from .data_root import check_self_contained, check_upload_name, list_images, resolve_image
from .protocol import READY_MARK, RunHooks
from .runner import AsyncioRunner
from .shared_model import SharedModel
from .ui import build_ui
from .view_positions import ras_to_view_xy

log = logging.getLogger(__name__)

# Stated input limits (shown in the page): bytes of an uploaded or opened file, and pixels
# of a decoded image (a 6000 x 5000 radiograph; float32 copies of it stay below 1 GB).
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 30_000_000
LAYOUT_ID = "radiograph"
UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


@functools.lru_cache(maxsize=1)
def _sample_phantom():
    """Drawn once per process (over a second of a session's start); read-only, as every session shows it."""
    from ..phantom import make_spine_phantom

    sample = make_spine_phantom(0)
    sample.image.setflags(write=False)
    return sample


def sample_radiograph() -> Radiograph:
    """The embedded sample: the project's procedural spine phantom (seed 0)."""
    sample = _sample_phantom()
    radiograph = load_radiograph(sample.image, spacing=sample.spacing)
    radiograph.path = "sample-spine-phantom"
    return radiograph


def _ignore_event(*_args):
    """What a closed session's scripted observers call: nothing (it holds no session object)."""


def _clear_scripted_callbacks(slicer_app: SlicerApp):
    """Clear the Python callbacks of the slicer-layer-dm observers and pipeline creators that
    ``slicer_app`` owns.

    trame-slicer's views, segmentation effects and node wrappers each own such an observer,
    whose C++ side holds a callback bound to its owner: a cycle through C++ that Python's gc
    cannot see, so a closed session (its scene, views and app) would never be freed (~9 MB
    each). The walk follows instance attributes and containers, not functions, classes or
    modules, and stops at trame servers, apps, other SlicerApps and the shared model: those
    lead to other sessions, whose observers must keep working."""
    boundaries = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)
    boundaries += (Server, TrameApp, SlicerApp, SharedModel)
    seen, stack = {id(slicer_app)}, list(gc.get_referents(slicer_app))
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, boundaries):
            continue
        seen.add(id(obj))
        if isinstance(obj, (vtkMRMLLayerDMObjectEventObserverScripted, vtkMRMLLayerDMPipelineScriptedCreator)):
            # a no-op, not None: the C++ side may still call it while the session is taken
            # apart (None would raise into whatever Python code runs then); ClearCallback
            # keeps the reference
            obj.SetPythonCallback(_ignore_event)
        stack.extend(gc.get_referents(obj))


def _no_view_ui(*_args):
    """No slice slider or gutter buttons: the radiograph is a single slice."""


def safe_stem(name: str, fallback: str = "radiograph") -> str:
    """A file stem made of letters, digits, ``._-`` from an image's name: what the autosave
    and the downloads are called (a name from the page never becomes a path of its own)."""
    stem = UNSAFE_NAME_CHARACTERS.sub("_", file_stem(Path(str(name)).name)).strip("._")
    return stem[:100] or fallback


def _upload_file_name(name: str) -> str:
    """What an upload is written as in its private folder: ``upload`` and the suffix of its name
    (SimpleITK picks its reader by the suffix), nothing else of the name."""
    suffixes = "".join(Path(name).suffixes[-2:]).lower()
    if not suffixes.endswith(".nii.gz"):
        suffixes = Path(name).suffix.lower()
    return "upload" + UNSAFE_NAME_CHARACTERS.sub("", suffixes)


class KeypointsWebApp(TrameApp):
    def __init__(
        self,
        server=None,
        model_dir=None,
        autosave_dir=None,
        data_root=None,
        load_sample: bool = True,
        max_file_bytes: int = MAX_FILE_BYTES,
        max_pixels: int = MAX_PIXELS,
        run_hooks: RunHooks | None = None,
        shared_model: SharedModel | None = None,
        training_set=None,
    ):
        super().__init__(server)
        self.server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        scene = self.slicer_app.scene
        register_rca_factories(self.slicer_app.view_manager, self.server, slice_view_ui_f=_no_view_ui)
        self.layout_manager = LayoutManager(scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(
            {LAYOUT_ID: Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.axial_view()])}
        )
        self.layout_manager.set_layout(LAYOUT_ID)
        self.view = self.slicer_app.view_manager.get_slice_views()[0]
        # trame-slicer asks for 8x multisampling; in software OpenGL (servers without a GPU) it
        # makes each frame of a drag ~4x dearer (bench/view_render.py), for smoother glyph edges only
        self.view.render_window().SetMultiSamples(0)

        self.shared_model = shared_model or SharedModel(model_dir)  # a host passes the one all its sessions use
        self.logic = self.shared_model.logic(scene)
        self.logic.runner = AsyncioRunner(hooks=run_hooks, executor=self.shared_model.inference_thread)
        self.logic.on_error = self.show_error
        self.logic.on_updated = self._on_points_updated
        self.logic.on_busy = self._on_busy

        self.autosave_dir = Path(autosave_dir) if autosave_dir else None
        self.data_root = Path(data_root).resolve() if data_root else None  # images the page may open
        self.training_set = Path(training_set) if training_set else None  # the server's, never the page's
        self.export_stem = "landmarks"  # the autosave's and the downloads' name (kept here: the page may change state)
        self.max_file_bytes = int(max_file_bytes)
        self.max_pixels = int(max_pixels)
        self.volume = None
        self.points = None
        self._last_xy_to_ras = None
        self._runs_started = 0  # model runs begun (debug): tells "not started yet" from "already done"
        self._push_scheduled = False

        self._init_state()
        self.ui = build_ui(self)
        self.state.change("ik_measurement_selected")(self._on_measurement_selected)
        self._view_observer = self.view.get_view_node().AddObserver(vtkCommand.ModifiedEvent, self._on_view_changed)
        self.server.controller.on_server_ready.add(lambda **_: create_task(self._preload_model()))
        if load_sample:
            self.load_radiograph(sample_radiograph())

    # ------------------------------------------------------------------ state

    def _init_state(self):
        s = self.state
        s.trame__title = "InteractiveKeypoints"
        s.ik_image_name = ""
        s.ik_image_size = ""
        s.ik_busy = False
        s.ik_message = ""
        s.ik_message_type = "error"
        s.ik_rows = []
        s.ik_measurements = []  # rows of the logic's measurements table node (Cobb angles, ceph)
        s.ik_measurement_names = []
        s.ik_measurement_selected = ""
        s.ik_has_points = False
        s.ik_can_undo = False
        s.ik_can_redo = False
        s.ik_next = -1  # the landmark Next suggested, until it is fixed; -1: none
        s.ik_debug = "{}"
        s.ik_server_images = self._list_server_images()
        s.ik_server_choice = None
        s.ik_export_stem = "landmarks"
        s.ik_max_file_bytes = self.max_file_bytes
        s.ik_limits = (
            f"files up to {self.max_file_bytes / 2**20:g} MB, images up to {self.max_pixels / 1e6:g} megapixels"
        )
        s.ik_autosave = ""  # the autosave's file name (the page links to it; the folder is not shown)
        s.ik_training_set = self.training_set is not None  # the page offers "Add to training set"
        s.ik_training_duplicate = False  # the image is in the set already: the page offers to replace

    def _list_server_images(self) -> list[str]:
        if self.data_root is None:
            return []
        names = list_images(self.data_root)
        log.info("%d images listed under the data root", len(names))
        return names

    def show_error(self, message: str):
        log.error(message)
        with self.state:
            self.state.ik_message = str(message)
            self.state.ik_message_type = "error"

    def show_info(self, message: str):
        with self.state:
            self.state.ik_message = str(message)
            self.state.ik_message_type = "info"

    def _on_busy(self, _node, busy: bool):
        self._runs_started += bool(busy)
        self.state.ik_busy = bool(busy)
        self._refresh_debug()
        self._push_soon()

    def _on_points_updated(self, node):
        self._refresh_table(node)
        self._refresh_debug()
        self._autosave(node)
        self._push_soon()

    def _push_soon(self):
        """Send the state once the logic's current step is over: what it changes in one go (a
        dropped point fixed, then the model busy) reaches the page in one message, never half."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not served (tests that build the app alone)
            self.state.flush()
            return
        if not self._push_scheduled:
            self._push_scheduled = True
            loop.call_soon(self._push)

    def _push(self):
        self._push_scheduled = False
        self.state.flush()

    def _refresh_table(self, node):
        positions = mrml_logic.control_point_positions(node)
        pixels = mrml_logic.ras_to_pixels(positions, mrml_logic.ijk_to_ras_matrix(self.volume))
        states, confidence = mrml_logic.point_states(node)
        tracked = self.logic.is_tracked(node)
        scores = self.logic.review_scores(node) if tracked else None
        self.state.ik_rows = [
            {
                "index": k,
                "name": node.GetNthControlPointLabel(k),
                "x": round(float(pixels[k, 0]), 1),
                "y": round(float(pixels[k, 1]), 1),
                "state": states[k],
                "confidence": "" if np.isnan(confidence[k]) else f"{confidence[k]:.2f}",
                # a number (sorts as one); None for fixed points (-inf: never suggested)
                "score": None if scores is None or not np.isfinite(scores[k]) else round(float(scores[k]), 2),
            }
            for k in range(len(positions))
        ]
        self.state.ik_has_points = len(positions) > 0
        suggested = self.logic.suggested_point(node) if tracked else None
        self.state.ik_next = -1 if suggested is None else int(suggested)
        self._refresh_measurements(node)
        self.state.ik_can_undo = self.logic.can_undo(node)
        self.state.ik_can_redo = self.logic.can_redo(node)

    def _refresh_measurements(self, node):
        """The page shows the MRML table the logic fills (the one Slicer shows)."""
        table = self.logic.measurement_table(node) if self.logic.is_tracked(node) else None
        rows = []
        if table is not None:
            columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
            rows = [
                {column.lower(): table.GetCellText(r, c) for c, column in enumerate(columns)}
                for r in range(table.GetNumberOfRows())
            ]
        self.state.ik_measurements = rows
        self.state.ik_measurement_names = [row["measurement"] for row in rows]

    def _on_measurement_selected(self, ik_measurement_selected="", **_):
        """Draw the lines of the chosen measurement (they follow every later update)."""
        if self.points is None or not self.logic.is_tracked(self.points) or self.logic.is_busy(self.points):
            return
        try:
            self.logic.select_measurement(self.points, ik_measurement_selected or "")
        except ValueError as error:
            self.show_error(str(error))
        self._refresh_debug()

    def _on_view_changed(self, *_):
        matrix = str(self.view.get_view_node().GetXYToRAS()) + str(self.view.render_window().GetSize())
        if matrix != self._last_xy_to_ras:
            self._last_xy_to_ras = matrix
            with self.state:
                self._refresh_debug()

    def _refresh_debug(self):
        """Machine-readable positions for tests: each point in image and view pixels."""
        debug = {"view_size": list(self.view.render_window().GetSize()), "points": []}
        node = self.points
        if node is not None and node.GetNumberOfControlPoints():
            ras = mrml_logic.control_point_positions(node)
            pixels = mrml_logic.ras_to_pixels(ras, mrml_logic.ijk_to_ras_matrix(self.volume))
            view_xy = ras_to_view_xy(self.view.get_view_node(), ras)
            states, _ = mrml_logic.point_states(node)
            debug["points"] = [
                {
                    "name": node.GetNthControlPointLabel(k),
                    "pixel": [round(float(v), 2) for v in pixels[k]],
                    "view_xy": [round(float(v), 2) for v in view_xy[k]],
                    "state": states[k],
                }
                for k in range(len(ras))
            ]
        debug["measurements"] = list(self.state.ik_measurements or [])
        debug["measurement_lines"] = len(self.logic.measurement_lines(node)) if node is not None else 0
        debug["next"] = int(self.state.ik_next)
        debug["busy"] = bool(self.state.ik_busy)
        debug["runs_started"] = self._runs_started
        self.state.ik_debug = json.dumps(debug)

    def _autosave(self, node):
        """The user's points survive a closed tab or a crashed server: saved after every change."""
        if self.autosave_dir is None or node.GetNumberOfControlPoints() == 0:
            return
        try:
            path = self.logic.export(node, output_path(self.autosave_dir / self.export_stem, POINTS_JSON))
            self.state.ik_autosave = path.name
        except (OSError, ValueError) as error:
            log.warning("autosave failed: %s", error)

    async def _preload_model(self):
        """Load the weights off the event loop, so the first Detect is quick."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.shared_model.load)
        except Exception as error:  # noqa: BLE001 - shown in the page; Detect will say it again
            self.show_error(f"model not available: {error}")

    # ------------------------------------------------------------------ images

    def load_radiograph(self, radiograph: Radiograph):
        """Show a new radiograph. The previous one and its points are replaced (autosaved)."""
        check_size(radiograph, self.max_pixels)
        if self.points is not None and self.logic.is_busy(self.points):
            raise LogicBusyError("the model is still running; open the image when it is done")
        self._remove_current()
        name = Path(radiograph.path).stem if radiograph.path else "radiograph"
        self.volume = mrml_logic.add_volume_from_radiograph(self.slicer_app.scene, radiograph, name)
        self.view.set_background_volume_id(self.volume.GetID())
        # a DICOM film keeps its orientation (usually coronal): show it in its own plane
        self.view.get_view_node().RotateToVolumePlane(self.volume)
        self.view.fit_view_to_content()
        self.export_stem = safe_stem(name)
        with self.state:
            self.state.ik_image_name = self.volume.GetName()
            self.state.ik_image_size = f"{radiograph.width} x {radiograph.height} px"
            self.state.ik_export_stem = self.export_stem
            self.state.ik_rows = []
            self.state.ik_measurements = []
            self.state.ik_measurement_names = []
            self.state.ik_measurement_selected = ""
            self.state.ik_has_points = False
            self.state.ik_can_undo = self.state.ik_can_redo = False
            self.state.ik_next = -1
            self.state.ik_training_duplicate = False
            self._refresh_debug()

    def _remove_current(self):
        scene = self.slicer_app.scene
        if self.points is not None:
            self.logic.detach(self.points)
            scene.RemoveNode(self.points)
            self.points = None
        if self.volume is not None:
            scene.RemoveNode(self.volume)
            self.volume = None

    def close(self):
        """Let go of this session's points, image, views and scene once its server has stopped
        (a host process runs on, with its other sessions)."""
        self._remove_current()
        # the logic's observer of the scene is held from C++: left there, it would keep the
        # logic, this app and its scene alive after the session (~9 MB per closed session)
        self.logic.forget_all()
        self.logic.runner.shutdown()
        self.view.get_view_node().RemoveObserver(self._view_observer)
        for view in self.slicer_app.view_manager.get_views():
            view.finalize()
        self.slicer_app.scene.Clear(True)
        # nothing of a closed session reacts to its scene any more (an observer left there would
        # be called while gc takes the session apart)
        self.slicer_app.scene.RemoveAllObservers()
        # trame-slicer registers every SlicerApp's segmentation pipelines with a process-wide
        # factory, which would keep this session's scene alive
        creator = getattr(self.slicer_app.segmentation_editor, "_pipeline_creator", None)
        if creator is not None:
            vtkMRMLLayerDMPipelineFactory.GetInstance().RemovePipelineCreator(creator)
        _clear_scripted_callbacks(self.slicer_app)

    def open_file(self, path, display_name: str | None = None):
        """Load an image file; a bad file leaves the current image and points untouched.
        ``display_name`` is what the page is told (never a server path)."""
        path = Path(path).expanduser()
        name = display_name or path.name
        try:
            if path.is_file() and path.stat().st_size > self.max_file_bytes:
                raise ImageError(
                    f"{name} is {path.stat().st_size / 2**20:.1f} MB, more than the "
                    f"limit of {self.max_file_bytes / 2**20:g} MB"
                )
            self._check_header_size(path, name)
            radiograph = load_radiograph(path)
            radiograph.path = name
            self.load_radiograph(radiograph)
        except (KeypointsError, OSError) as error:
            reason = str(error).replace(str(path), name)
            self.show_error(f"could not open {name}: {reason}")
            return False
        self.show_info(f"opened {name}")
        return True

    def _check_header_size(self, path: Path, name: str):
        """Refuse an image with too many pixels from its header, before a pixel is decoded: a
        small file can claim 100000 x 100000 pixels (a decompression bomb)."""
        (height, width), *_ = image_geometry(path)
        if height * width > self.max_pixels:
            raise ImageError(
                f"{name} has {width} x {height} = {height * width} pixels, more than the limit of "
                f"{self.max_pixels} pixels"
            )

    def upload(self, files):
        """Files from the browser's file input (dicts with name, size and content). Written to a
        private temporary folder for the reader, and gone once read."""
        if not files:
            return
        file = files[0] if isinstance(files, list) else files
        name = Path(str(file.get("name") or "upload")).name[:200]
        content = file.get("content") or b""
        if isinstance(content, list):  # chunked by the client
            content = b"".join(content)
        if len(content) > self.max_file_bytes:
            self.show_error(f"{name} is larger than the {self.max_file_bytes / 2**20:g} MB limit")
            return
        with tempfile.TemporaryDirectory(prefix="ik-upload-") as folder:
            path = Path(folder) / _upload_file_name(name)
            try:
                check_upload_name(name)
                path.write_bytes(content)
                check_self_contained(path, name)
            except (KeypointsError, OSError) as error:
                self.show_error(f"could not open {name}: {str(error).replace(str(path), name)}")
                return
            self.open_file(path, display_name=name)

    def open_server_image(self):
        """Open the image chosen from the data root's list (the only images of the server a page can open)."""
        if self.data_root is None:
            self.show_error("this server offers no images of its own: open a file from your computer")
            return
        choice = self.state.ik_server_choice
        if not choice:
            self.show_error("choose an image from the list first")
            return
        try:
            path = resolve_image(self.data_root, choice)
        except KeypointsError as error:
            self.show_error(str(error))
            return
        self.open_file(path, display_name=str(choice))

    # --------------------------------------------------------------- landmarks

    async def detect(self):
        if self.volume is None:
            self.show_error("open a radiograph first")
            return
        with self.state:
            self.state.ik_busy = True
            self.state.ik_message = ""
        await asyncio.sleep(0.05)  # let the page show "busy": building the session takes a moment
        try:
            self.points = self.logic.detect(self.volume, self.points, blocking=False)
            self._style_points(self.points)
        except Exception as error:  # noqa: BLE001 - model or image problems, shown to the user
            self.show_error(f"detection failed: {error}")
            with self.state:
                self.state.ik_busy = False

    def _style_points(self, node):
        display = node.GetDisplayNode()
        # the one palette (conventions), as in Slicer: exported files look the same wherever made
        display.SetColor(*PREDICTED_COLOR)  # predicted (unselected)
        display.SetSelectedColor(*FIXED_COLOR)  # user-fixed (selected)
        display.SetActiveColor(*ACTIVE_COLOR)
        display.SetPointLabelsVisibility(False)  # 68 labels hide the image; the table names them
        display.SetGlyphScale(2.0)

    def _with_points(self, action, *args):
        if self.points is None or not self.logic.is_tracked(self.points):
            self.show_error("run Detect first")
            return
        try:
            action(self.points, *args)
        except (LogicBusyError, ValueError) as error:
            self.show_error(str(error))
            return
        with self.state:
            self._refresh_table(self.points)
            self._refresh_debug()

    def undo(self):
        self._with_points(self.logic.undo)

    def redo(self):
        self._with_points(self.logic.redo)

    def reset(self):
        self._with_points(self.logic.reset)

    def next_point(self):
        """Centre the view on the landmark to check next; the logic gives it a halo."""

        def show_next(node):
            k = self.logic.next_point(node)
            if k is None:
                self.show_info("every landmark is fixed: nothing left to check")
            else:
                self.logic.jump_to_point(node, k)

        self._with_points(show_next)

    def confirm(self):
        """Fix the suggested landmark where it is (queued like a drop while the model runs)."""
        index = int(self.state.ik_next)
        if index < 0:
            self.show_error("press Next first: it picks the landmark to confirm")
            return
        self._with_points(lambda node: self.logic.confirm(node, index, blocking=False))

    def unfix(self, index):
        # re-runs the model: on the inference thread, the result arrives via on_updated
        self._with_points(lambda node: self.logic.unfix(node, [int(index)], blocking=False))

    def add_to_training_set(self, replace: bool = False):
        """Save this image and its points into the server's training set (your own landmarks):
        only the points the user moved or confirmed are labels. The page never names a folder."""
        from ..training_set import AlreadyAddedError

        if self.training_set is None or self.points is None or not self.logic.is_tracked(self.points):
            self.show_error("run Detect first" if self.training_set is not None else "this server has no training set")
            return
        try:
            self.logic.add_to_training_set(self.points, self.training_set, replace=replace)
        except AlreadyAddedError as error:
            self.show_error(f"{error}.")
            with self.state:
                self.state.ik_training_duplicate = True
            return
        except (KeypointsError, OSError) as error:
            self.show_error(f"could not add to the training set: {error}")
            return
        fixed = sum(state == "user-fixed" for state in mrml_logic.point_states(self.points)[0])
        with self.state:
            self.state.ik_training_duplicate = False
        self.show_info(f"added to the training set ({fixed} reviewed points are labels; the others are not)")

    def export_bytes(self, suffix: str) -> bytes | None:
        if self.points is None or self.points.GetNumberOfControlPoints() == 0:
            self.show_error("nothing to download yet: run Detect first")
            return None
        with tempfile.TemporaryDirectory() as folder:
            path = self.logic.export(self.points, Path(folder) / f"{self.export_stem}{suffix}")
            return path.read_bytes()

    def download(self, suffix: str):
        data = self.export_bytes(suffix)
        return None if data is None else self.server.protocol.addAttachment(data)


# ---------------------------------------------------------------------- entry points


def build_app(server=None, model_dir=None, **kwargs) -> KeypointsWebApp:
    """One session's app; kwargs: autosave_dir, data_root, load_sample, max_file_bytes, max_pixels,
    run_hooks, shared_model, training_set."""
    return KeypointsWebApp(server=server, model_dir=model_dir, **kwargs)


def _announce_port(app: KeypointsWebApp):
    def ready(**_):
        print(f"{READY_MARK} port={app.server.port}", flush=True)

    app.server.controller.on_server_ready.add(ready)


def set_session_environment(max_file_mb: float):
    """What a process needs before its first session server starts."""
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # headless servers
    # Mesa's software rasterizer (llvmpipe) on its render threads costs more CPU than it saves
    # for one 2-D view, and the sessions' renders queue on the event-loop thread anyway
    os.environ.setdefault("LP_NUM_THREADS", "0")
    # uploads arrive over the websocket: let a file of the stated limit through
    os.environ.setdefault("TRAME_WS_MAX_MSG_SIZE", str(int(max_file_mb * 2**20 * 1.4) + 2**22))


def add_session_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every session of a process shares (a lone session or the host's)."""
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--max-file-mb", type=float, default=MAX_FILE_BYTES / 2**20)
    parser.add_argument("--max-megapixels", type=float, default=MAX_PIXELS / 1e6)
    parser.add_argument("--data-root", default=None, help="the folder whose images the page lists (default: none)")
    parser.add_argument("--training-set", default=None, help="the training set the page adds to (default: none)")
    RunHooks.add_arguments(parser)


def session_options(args) -> dict:
    """``KeypointsWebApp`` keyword arguments from :func:`add_session_arguments`' options."""
    return {
        "max_file_bytes": int(args.max_file_mb * 2**20),
        "max_pixels": int(args.max_megapixels * 1e6),
        "data_root": args.data_root,
        "training_set": args.training_set,
        "run_hooks": RunHooks.from_args(args),
    }


def run_session(argv=None):
    """One session server (what the launcher starts per tab; also usable alone)."""
    parser = argparse.ArgumentParser(description="InteractiveKeypoints: one browser session")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed at start)")
    parser.add_argument("--autosave-dir", default=None, help="write the points here after every change")
    parser.add_argument("--idle-timeout", type=int, default=300, help="seconds without a client before exiting")
    add_session_arguments(parser)
    args, _ = parser.parse_known_args(argv)
    from .access import is_loopback

    if not is_loopback(args.host):  # no sign-in, no per-browser sessions here: `serve` has them
        parser.error(
            f"a lone session serves this machine only, not --host {args.host}; use `interactive-keypoints serve`"
        )
    set_session_environment(args.max_file_mb)
    logging.basicConfig(level=logging.WARNING)
    from trame.app import get_server

    server = get_server(name="interactive-keypoints", client_type="vue3")
    app = build_app(
        server,
        model_dir=args.model,
        autosave_dir=args.autosave_dir,
        **session_options(args),
    )
    _announce_port(app)
    app.server.start(
        host=args.host,
        port=args.port,
        open_browser=False,
        show_connection_info=False,
        timeout=args.idle_timeout,
        exec_mode="main",
    )


if __name__ == "__main__":
    run_session(sys.argv[1:])
