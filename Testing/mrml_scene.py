"""The MRML scene the module-logic tests share (slicer-core; the test modules skip without it)."""

from __future__ import annotations

import slicer


def make_scene():
    """A scene set up like Slicer's: application logic singletons + markups logic (which
    registers the markups node classes)."""
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    markups_logic = slicer.vtkSlicerMarkupsLogic()
    markups_logic.SetMRMLApplicationLogic(app_logic)
    markups_logic.SetMRMLScene(scene)
    scene.keep_alive = (app_logic, markups_logic)  # the logics must live as long as the scene
    return scene
