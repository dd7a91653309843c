"""The engine's Python requirements, read from the one list in ``Resources/requirements.txt``
(also read by pyproject.toml), and which of them this Python does not satisfy.

Versions are checked, not only presence. Imports nothing it checks (torch stays unloaded).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

# next to the package in a checkout (InteractiveKeypoints/Resources) and in an installed
# extension (qt-scripted-modules/Resources), where the module's resources are installed
REQUIREMENTS_FILE = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"


@dataclass(frozen=True)
class UnmetRequirement:
    requirement: str  # as written, e.g. "torch>=2.3"
    name: str  # distribution name, e.g. "torch"
    installed: str | None  # installed version, None when not installed

    def __str__(self) -> str:
        if self.installed is None:
            return f"{self.requirement} (not installed)"
        return f"{self.requirement} (installed: {self.installed})"


def load_requirements(path=REQUIREMENTS_FILE) -> list[str]:
    """Requirement lines; comments, blank lines and pip options skipped, as
    ``slicer.packaging.load_requirements`` reads the same file."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def unmet_requirements(requirements=None) -> list[UnmetRequirement]:
    """The requirements that are missing or installed in a version outside the range."""
    from packaging.requirements import Requirement

    unmet = []
    for text in load_requirements() if requirements is None else requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            # Slicer's own builds (SimpleITK) may be importable without pip metadata:
            # present, version unknown, never replaced by a PyPI build
            if importlib.util.find_spec(requirement.name) is not None:
                continue
            unmet.append(UnmetRequirement(text, requirement.name, None))
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(UnmetRequirement(text, requirement.name, installed))
    return unmet
