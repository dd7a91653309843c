"""The extension as the Slicer Extensions Index sees it, checked without network or Slicer:
its catalog entry (``Resources/ExtensionsIndex/InteractiveKeypoints.json``), the top-level
CMakeLists.txt it must agree with, and the licence.

The facts below were read from Slicer's source and the ExtensionsIndex repository:

* ``Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json`` (Slicer v5.10.0 and main; v1.0.2
  on main adds ``dicom_support_rule``): required ``$schema``, ``category``, ``scm_url``; no
  other properties than those listed in CATALOG_PROPERTIES;
* ``scripts/check_description_files.py`` (ExtensionsIndex): the file name is the extension name
  and equals the CMake ``project()`` name, the name does not start with "Slicer", the repository
  name does, LF line endings, a git or https scm_url, EXTENSION_ICONURL and EXTENSION_SCREENSHOTURLS
  set, a licence file in the repository root, a checked-out repository under 100 MB;
* ``Utilities/Templates/Extensions/Default/CMakeLists.txt`` at v5.10.0: the CMake range.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "Resources" / "ExtensionsIndex" / "InteractiveKeypoints.json"
CMAKE = ROOT / "CMakeLists.txt"

SCHEMA_URLS = tuple(
    f"https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v{v}.json#"
    for v in ("1.0.1", "1.0.2")
)
REQUIRED = ("$schema", "category", "scm_url")
# property -> (type, allowed values or None); "additionalProperties": false
CATALOG_PROPERTIES = {
    "$schema": (str, None),
    "category": (str, None),
    "scm_url": (str, None),
    "scm_revision": (str, None),
    "scm_type": (str, {"git", "local"}),
    "build_dependencies": (list, None),
    "build_subdirectory": (str, None),
    "enabled": (bool, None),
    "tier": (int, set(range(1, 6))),
}
SLICER_5_10_CMAKE_RANGE = "3.20.6...3.22.6"
REPOSITORY_SIZE_LIMIT_MB = 100


def entry() -> dict:
    return json.loads(ENTRY.read_text())


def cmake_set(name: str) -> str:
    """The value of ``set(NAME "value")`` in the top-level CMakeLists.txt (as the index's regex reads it)."""
    match = re.search(rf'set\s*\({name}\s*"([^"]+)"[ ]*\)', CMAKE.read_text())
    assert match, f"{name} is not set in {CMAKE.name}"
    return match.group(1)


def test_the_catalog_entry_has_the_schema_s_required_fields_and_types():
    data = entry()
    assert data["$schema"] in SCHEMA_URLS
    assert set(REQUIRED) <= set(data), f"missing: {set(REQUIRED) - set(data)}"
    assert set(data) <= set(CATALOG_PROPERTIES), f"not in the schema: {set(data) - set(CATALOG_PROPERTIES)}"
    for key, value in data.items():
        kind, allowed = CATALOG_PROPERTIES[key]
        # bool is an int in Python: JSON Schema's "integer" does not accept true/false
        assert isinstance(value, kind) and not (kind is int and isinstance(value, bool)), (key, value)
        if allowed is not None:
            assert value in allowed, (key, value)
    assert all(isinstance(name, str) for name in data["build_dependencies"])


def test_the_catalog_entry_agrees_with_the_top_level_cmakelists():
    data = entry()
    project = re.search(r"project\s*\(\s*([^\s\)]+)", CMAKE.read_text(), re.I).group(1)
    assert ENTRY.stem == project == "InteractiveKeypoints"
    assert not ENTRY.stem.lower().startswith("slicer")
    assert data["category"] == cmake_set("EXTENSION_CATEGORY")
    assert data["build_dependencies"] == cmake_set("EXTENSION_DEPENDS").split()
    url = urlsplit(data["scm_url"])
    assert url.scheme in ("git", "https")
    assert data["scm_url"].removesuffix(".git") == cmake_set("EXTENSION_HOMEPAGE")
    assert Path(url.path).stem.startswith("Slicer")  # the repository is Slicer + extension name
    assert b"\r" not in ENTRY.read_bytes()


def test_the_icon_and_screenshot_urls_name_files_in_this_repository():
    homepage = cmake_set("EXTENSION_HOMEPAGE")
    raw = homepage.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    urls = [cmake_set("EXTENSION_ICONURL"), *cmake_set("EXTENSION_SCREENSHOTURLS").split()]
    for url in urls:
        assert url.startswith(raw) and url.endswith(".png"), url
        assert (ROOT / url.removeprefix(raw)).is_file(), url


def test_cmake_asks_for_the_range_of_slicer_5_10_s_extension_template():
    match = re.search(r"cmake_minimum_required\(VERSION ([\d.]+(?:\.\.\.[\d.]+)?)", CMAKE.read_text())
    assert match and match.group(1) == SLICER_5_10_CMAKE_RANGE
    assert "find_package(Slicer 5.10 REQUIRED)" in CMAKE.read_text()


def test_the_licence_at_the_root_is_the_one_the_package_names():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()


def test_the_checked_out_repository_is_under_the_index_s_size_limit():
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    sizes = [(ROOT / name).stat().st_size for name in files.decode().split("\0") if name and (ROOT / name).is_file()]
    assert sum(sizes) / 2**20 < REPOSITORY_SIZE_LIMIT_MB
