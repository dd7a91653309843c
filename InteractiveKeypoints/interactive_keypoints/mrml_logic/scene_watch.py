"""Point lists the user deletes: the scene's removal events release their sessions and take
the nodes each list owns with it (check-next halo, measurements table and lines)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import vtk

from .guidance import NEXT_POINT_ROLE
from .measurement_display import MEASUREMENT_LINE_ROLE, MEASUREMENTS_REFERENCE_ROLE
from .tracked import TrackedLists
from .volumes import remove_with_children

# the nodes a point list owns: removed with it
OWNED_ROLES = (NEXT_POINT_ROLE, MEASUREMENTS_REFERENCE_ROLE, MEASUREMENT_LINE_ROLE)


class SceneWatch:
    """Observes node removal in the logic's scene (``scene()``); ``release(node)`` forgets a
    tracked list's session."""

    def __init__(self, scene: Callable[[], Any], lists: TrackedLists, release: Callable[[Any], None]):
        self.scene = scene
        self.lists = lists
        self.release = release
        self._watched: tuple[Any, list[int]] | None = None  # (scene, observer tags)

    def watch(self):
        """Observe the logic's scene (once; again when it is another scene)."""
        scene = self.scene()
        if self._watched is not None and self._watched[0] is scene:
            return
        self.unwatch()

        @vtk.calldata_type(vtk.VTK_OBJECT)
        def on_node_about_to_be_removed(caller, event, node=None):
            # before the removal: the list's references still resolve. A closing scene goes whole.
            if node is not None and not scene.IsClosing() and node.IsA("vtkMRMLMarkupsFiducialNode"):
                self._remove_owned_nodes(node)

        @vtk.calldata_type(vtk.VTK_OBJECT)
        def on_node_removed(caller, event, node=None):
            if node is None:
                return
            for tracked in self.lists:
                if tracked.node is node:
                    self.release(node)

        tags = [
            scene.AddObserver(scene.NodeAboutToBeRemovedEvent, on_node_about_to_be_removed),
            scene.AddObserver(scene.NodeRemovedEvent, on_node_removed),
        ]
        self._watched = (scene, tags)

    def unwatch(self):
        if self._watched is not None:
            scene, tags = self._watched
            for tag in tags:
                scene.RemoveObserver(tag)
            self._watched = None

    def _remove_owned_nodes(self, node):
        owned = [
            node.GetNthNodeReference(role, i)
            for role in OWNED_ROLES
            for i in range(node.GetNumberOfNodeReferences(role))
        ]
        for role in OWNED_ROLES:
            node.RemoveNodeReferenceIDs(role)
        scene = self.scene()
        for item in owned:
            if item is not None and item.GetScene() is scene:
                remove_with_children(scene, item)
