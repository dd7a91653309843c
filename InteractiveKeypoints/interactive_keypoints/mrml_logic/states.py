"""Point states: kept in the point list itself, so they are visible and saved in ``.mrk.json``.

The description is ``"user-fixed"`` or ``"predicted; confidence=0.93"`` (plus ``"; low
confidence"``), and the selected flag is on for user-fixed points (Slicer draws selected
and unselected points in two colours).
"""

from __future__ import annotations

import numpy as np

from ..conventions import FIXED_COLOR, PREDICTED_COLOR
from ..conventions import PREDICTED as STATE_PREDICTED
from ..conventions import USER_FIXED as STATE_FIXED
from ..markups import format_description, parse_description

LOW_CONFIDENCE_TAG = "low confidence"
DEFAULT_LOW_CONFIDENCE = 0.5

# two colours (conventions): predicted points unselected (amber), user-fixed points selected (green)


def describe_state(fixed: bool, confidence: float, low_confidence: float) -> str:
    """ "user-fixed" or "predicted; confidence=0.930" (+ "; low confidence")."""
    if fixed:
        return STATE_FIXED
    text = format_description(STATE_PREDICTED, confidence)
    if confidence < low_confidence:
        text += f"; {LOW_CONFIDENCE_TAG}"
    return text


def point_states(node) -> tuple[list[str], np.ndarray]:
    """(states, confidence) read back from the point descriptions (NaN when unknown).

    Works for any point list written by this logic, also after a save and reload.
    """
    states, confidence = [], np.full(node.GetNumberOfControlPoints(), np.nan)
    for k in range(node.GetNumberOfControlPoints()):
        state, confidence[k] = parse_description(node.GetNthControlPointDescription(k))
        states.append(STATE_FIXED if state == STATE_FIXED else STATE_PREDICTED)
    return states, confidence


def is_low_confidence(description: str) -> bool:
    return LOW_CONFIDENCE_TAG in (description or "")


def write_state(node, k: int, fixed: bool, confidence: float, low_confidence: float):
    """Describe point k and colour it: selected colour = user-fixed."""
    node.SetNthControlPointDescription(k, describe_state(fixed, confidence, low_confidence))
    node.SetNthControlPointSelected(k, fixed)


def style_point_list(node):
    """Draw a point list in the two state colours (predicted / user-fixed)."""
    display = node.GetDisplayNode()
    if display is not None:
        display.SetColor(*PREDICTED_COLOR)
        display.SetSelectedColor(*FIXED_COLOR)
