"""Checks of the Slicer module's files that need no Slicer application: what the panel
offers (read from the module source and the .ui) and what the extension ships (CMake).
The module itself (Qt, slicer.app) only runs inside Slicer: InteractiveKeypointsTest."""

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "InteractiveKeypoints"
MODULE_FILE = MODULE_DIR / "InteractiveKeypoints.py"
PACKAGE = "interactive_keypoints"


def annotation_names(class_name, attribute):
    tree = ast.parse(MODULE_FILE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    field = next(n for n in cls.body if isinstance(n, ast.AnnAssign) and n.target.id == attribute)
    return {n.id for n in ast.walk(field.annotation) if isinstance(n, ast.Name)}


def test_rgb_radiographs_are_selectable_in_the_panel():
    """connectGui replaces the selector's nodeTypes with the classes named in the parameter
    node annotation (Slicer: parameterNodeWrapper/guiConnectors.py,
    qMRMLNodeComboBoxToNodeConnector), and the .ui hides child classes: RGB (vector)
    volumes are only offered when the annotation names vtkMRMLVectorVolumeNode."""
    ui = ET.parse(MODULE_DIR / "Resources" / "UI" / "InteractiveKeypoints.ui")
    selector = ui.find(".//widget[@name='inputVolumeSelector']")
    props = {p.get("name"): p for p in selector.findall("property")}
    assert props["showChildNodeTypes"].find("bool").text == "false"
    assert props["SlicerParameterName"].find("string").text == "inputVolume"
    ui_types = {s.text for s in props["nodeTypes"].iter("string")}
    offered = annotation_names("InteractiveKeypointsParameterNode", "inputVolume")
    assert {"vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"} <= offered
    assert {"vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"} <= ui_types


def imported_package_modules(path: Path, module: str) -> set[str]:
    """interactive_keypoints modules imported anywhere in a file (also inside functions)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            names = [f"{base}.{node.module}"] if node.module else [f"{base}.{a.name}" for a in node.names]
            found.update(names)
            found.update(f"{base}.{node.module}.{a.name}" for a in node.names if node.module)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(PACKAGE))
    return found


def source_of(module: str) -> Path | None:
    path = MODULE_DIR.joinpath(*module.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None  # a name imported from a module, not a module


def test_the_extension_ships_exactly_the_engine_modules_the_module_imports():
    """What the module imports, and what the training process it starts runs (your own landmarks)."""
    from interactive_keypoints.training_job import TRAIN_MODULE

    needed, todo = {f"{PACKAGE}/__init__.py"}, sorted(imported_package_modules(MODULE_FILE, "x") | {TRAIN_MODULE})
    seen = set()
    while todo:
        module = todo.pop()
        path = source_of(module)
        if path is None or module in seen:
            continue
        seen.add(module)
        needed.add(path.relative_to(MODULE_DIR).as_posix())
        todo.extend(imported_package_modules(path, module))
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    listed = set(re.search(r"set\(ENGINE_PYTHON_SCRIPTS\s+(.*?)\)", cmake, re.S).group(1).split())
    assert listed == needed
    assert all((MODULE_DIR / path).is_file() for path in listed)
    assert not {p for p in listed if re.search(r"/(evaluate|cli|predict|demo|web/.*)\.py$", p)}


def test_every_widget_the_module_uses_is_in_the_ui_file():
    """``self.ui.<name>`` comes from slicer.util.childWidgetVariables: a name missing from
    the .ui (a renamed or forgotten button) fails only when the panel opens in Slicer."""
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    ui = ET.parse(MODULE_DIR / "Resources" / "UI" / "InteractiveKeypoints.ui")
    defined = {w.get("name") for w in ui.iter("widget")}
    assert {"nextButton", "confirmButton", "landmarkTable"} <= used
    assert used <= defined, f"not in the .ui: {sorted(used - defined)}"


def test_the_landmark_table_has_the_check_next_column_the_module_sorts_by():
    ui = ET.parse(MODULE_DIR / "Resources" / "UI" / "InteractiveKeypoints.ui")
    table = ui.find(".//widget[@name='landmarkTable']")
    headers = [c.find("property/string").text for c in table.findall("column")]
    column = int(re.search(r"^SCORE_COLUMN = (\d+)$", MODULE_FILE.read_text(), re.M).group(1))
    assert headers[column] == "Check next"
    assert int(table.find("property[@name='columnCount']/number").text) == len(headers)


# --------------------------------------------------------------- the panel's wiring
# The Widget needs Qt and the Slicer application, so it runs only in Slicer
# (InteractiveKeypointsTest.test_PanelWiring, which needs no torch); here its wiring is read
# from the source and the .ui: what would fail only when a user clicks.

# the Qt signals of the classes the panel connects (Qt 5 documentation)
SIGNALS = {
    "QPushButton": {"clicked(bool)", "clicked()", "toggled(bool)"},
    "QComboBox": {"currentIndexChanged(int)", "currentTextChanged(QString)"},
    "QTableWidget": {"cellClicked(int,int)", "itemSelectionChanged()"},
    "QHeaderView": {"sectionClicked(int)"},
    "QTimer": {"timeout()"},
    "QShortcut": {"activated()"},
    "ctkPathLineEdit": {"currentPathChanged(QString)", "validInputChanged(bool)"},  # CTK's ctkPathLineEdit.h
}


def ui_classes() -> dict[str, str]:
    ui = ET.parse(MODULE_DIR / "Resources" / "UI" / "InteractiveKeypoints.ui")
    return {w.get("name"): w.get("class") for w in ui.iter("widget")}


def widget_class() -> ast.ClassDef:
    tree = ast.parse(MODULE_FILE.read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "InteractiveKeypointsWidget")


def connections():
    """(sender expression, signal, slot expression) of every ``X.connect("signal", slot)``."""
    for node in ast.walk(widget_class()):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect":
            if len(node.args) == 2 and isinstance(node.args[0], ast.Constant):
                yield ast.unparse(node.func.value), node.args[0].value, node.args[1]


def test_every_connected_signal_exists_on_its_widget_and_every_slot_is_a_method():
    classes, methods = ui_classes(), {n.name for n in widget_class().body if isinstance(n, ast.FunctionDef)}
    found = list(connections())
    assert len(found) >= 20
    for sender, signal, slot in found:
        if sender.startswith("self.ui.") and sender.endswith(".horizontalHeader()"):
            kind = "QHeaderView"
        elif sender.startswith("self.ui."):
            kind = classes[sender.removeprefix("self.ui.")]
        elif sender in ("self._pollTimer", "self._interactionTimer", "self._trainingTimer"):
            kind = "QTimer"
        elif sender == "shortcut":  # _installShortcuts: qt.QShortcut(keys, mainWindow)
            kind = "QShortcut"
        else:
            raise AssertionError(f"unexpected sender {sender}")
        assert signal in SIGNALS[kind], f"{sender} ({kind}) has no signal {signal}"
        if isinstance(slot, ast.Attribute):  # self.onX; lambdas call methods checked below
            assert slot.attr in methods, f"{sender} {signal} -> missing slot {slot.attr}"
    referenced = {
        n.attr
        for n in ast.walk(widget_class())
        if isinstance(n, ast.Attribute) and ast.unparse(n.value) == "self" and n.attr.startswith("on")
    }
    assert {"onExport", "onUnfix", "onConfirm", "onInteractionTimer"} <= referenced <= methods


def test_the_panel_takes_every_callback_the_logic_offers():
    """A logic callback left unset is a behaviour the panel silently lacks (the end of a snap
    to slice, a failed run's dialog)."""
    logic_source = (MODULE_DIR / "interactive_keypoints" / "mrml_logic" / "logic.py").read_text()
    offered = set(re.findall(r"^        self\.(on_\w+) = None$", logic_source, re.M))
    assert {"on_error", "on_run_failed", "on_updated", "on_busy", "on_drag_started"} <= offered
    assigned = {}
    for node in ast.walk(widget_class()):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            target = ast.unparse(node.targets[0])
            if target.startswith("self.logic.on_"):
                assigned[target.removeprefix("self.logic.")] = ast.unparse(node.value)
    assert set(assigned) == offered
    methods = {n.name for n in widget_class().body if isinstance(n, ast.FunctionDef)}
    assert {value.removeprefix("self.") for value in assigned.values()} <= methods


def test_every_mrml_widget_of_the_panel_gets_the_scene():
    """uiWidget.setMRMLScene reaches a qMRML widget only through a .ui connection from the
    panel's mrmlSceneChanged signal (the measurements table view had none)."""
    ui = ET.parse(MODULE_DIR / "Resources" / "UI" / "InteractiveKeypoints.ui")
    mrml_widgets = {name for name, kind in ui_classes().items() if kind.startswith("qMRML") and kind != "qMRMLWidget"}
    connected = {
        c.findtext("receiver")
        for c in ui.iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert "measurementTable" in mrml_widgets
    assert mrml_widgets <= connected, f"no scene for {sorted(mrml_widgets - connected)}"


def test_the_module_test_skips_with_its_reason_instead_of_passing_without_torch():
    tree = ast.parse(MODULE_FILE.read_text())
    test_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "InteractiveKeypointsTest")
    run = next(n for n in test_class.body if isinstance(n, ast.FunctionDef) and n.name == "runTest")
    source = ast.unparse(run)
    assert "self.skipTest(" in source and "return" not in source
    assert source.index("test_PanelWiring") < source.index("skipTest")  # the panel is tested without torch
