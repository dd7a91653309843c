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
    needed, todo = {f"{PACKAGE}/__init__.py"}, sorted(imported_package_modules(MODULE_FILE, "x"))
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
    assert not {p for p in listed if re.search(r"/(train|evaluate|cli|predict|demo|web/.*)\.py$", p)}


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
