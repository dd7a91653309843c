"""The engine's requirements: one list (Resources/requirements.txt) for the Slicer module
and pyproject.toml, checked by version, not only by presence."""

from pathlib import Path

from interactive_keypoints.dependencies import (
    REQUIREMENTS_FILE,
    UnmetRequirement,
    load_requirements,
    unmet_requirements,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_module_and_pyproject_read_the_same_requirements_file():
    from setuptools.config.pyprojecttoml import read_configuration

    assert REQUIREMENTS_FILE == REPO_ROOT / "InteractiveKeypoints" / "Resources" / "requirements.txt"
    engine = load_requirements()
    assert engine[0].startswith("torch") and any(r.startswith("monai") for r in engine)
    project = read_configuration(REPO_ROOT / "pyproject.toml")["project"]
    assert project["dependencies"][: len(engine)] == engine


def test_versions_are_checked_not_only_presence(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        "# comment\n\n--index-url https://example.invalid\n"
        "numpy>=1.0\n"
        "numpy>=999  # too new for any install\n"
        "not-a-real-package-ik16>=1.0\n"
        "scipy>=1.0; python_version < '3'\n"
    )
    lines = load_requirements(requirements)
    assert lines == ["numpy>=1.0", "numpy>=999", "not-a-real-package-ik16>=1.0", "scipy>=1.0; python_version < '3'"]
    unmet = unmet_requirements(lines)
    import numpy

    assert unmet == [
        UnmetRequirement("numpy>=999", "numpy", numpy.__version__),
        UnmetRequirement("not-a-real-package-ik16>=1.0", "not-a-real-package-ik16", None),
    ]
    assert str(unmet[0]) == f"numpy>=999 (installed: {numpy.__version__})"
    assert str(unmet[1]) == "not-a-real-package-ik16>=1.0 (not installed)"
    assert unmet_requirements() == []  # this environment has the engine's requirements
