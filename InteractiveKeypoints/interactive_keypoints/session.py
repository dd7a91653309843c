"""The interactive loop for one radiograph: predict, refine with user moves, undo/redo.

Inference rule (paper, sec. 2.1 and the reference protocol):
- click heatmaps (Gaussians at the user's positions) for every user-fixed point;
- previous prediction: the last pass's raw output in the channels of fixed points only
  (``prev_mode="fixed"``, the paper's test-time rule) or in all channels (``"all"``,
  as in training);
- fixed points are returned exactly where the user put them; the others move freely, and
  with a model whose ``correction_length`` is > 0 also by the correction field of the
  residuals at the fixed points (``correction_field.py``; 0 is the paper's rule), and where
  the model folder has one, by the click decoder (``click_decoder.py``);
- a fixed point farther from the network's first estimate than the model's
  ``propagation_limit`` (a fraction of the landmarks' extent; 0 = no limit) stays where the
  user put it but is passed on to nothing: no hint, no field, no decoder. A drag across half
  the spine is a slip or a wrong label, and the others should not follow it
  (``Prediction.unpropagated`` says which);
- then, where the model folder has one, the full-resolution local stage refines every point
  that is not fixed in a patch of the original image (``local_stage.py``).

Every refine/confirm/unfix/reset is one step on an undo stack that holds the whole state,
so undo restores every point, not only the moved one. A ``preview`` (a point being dragged)
is shown but is no step: the next step, or ``end_preview``, replaces it.

Every prediction carries a "check next" score per landmark (:mod:`.review`): higher means
look at it first; fixed points score -inf. ``confirm`` fixes a point where it is, like a
refine with zero move.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .conventions import inside_image, state_names
from .correction_field import apply_correction_field, landmark_extent
from .errors import KeypointsError
from .heatmaps import decode_logits_locally, gaussian_heatmaps
from .imaging import CoordinateMap, Radiograph, load_radiograph, preprocess
from .inference import Predictor
from .local_stage import PatchSource
from .model_io import KeypointModel
from .review import available_score, load_selection, review_scores


class OutsideImageError(KeypointsError, ValueError):
    """A user move that lies outside the image."""


class SessionBusyError(KeypointsError, RuntimeError):
    """A call that arrived while the session was still computing the previous one."""


@dataclass(frozen=True)
class Prediction:
    points: np.ndarray  # (K, 2) x, y in original pixels
    confidence: np.ndarray  # (K,) heatmap peak, 0..1; 1.0 for user-fixed points
    fixed: np.ndarray  # (K,) bool: placed by the user
    names: list[str]
    spacing: tuple[float, float] = (1.0, 1.0)
    # (K,) "check next" score (see review.py), higher = check first; -inf for fixed points.
    # None when built without one: every free point scores 0.
    review_score: np.ndarray | None = None
    # (K,) bool: fixed points beyond the model's propagation limit, which moved no other point
    unpropagated: np.ndarray | None = None

    def __post_init__(self):
        if self.review_score is None:
            object.__setattr__(self, "review_score", np.where(np.asarray(self.fixed, bool), -np.inf, 0.0))
        if self.unpropagated is None:
            object.__setattr__(self, "unpropagated", np.zeros(len(self.fixed), dtype=bool))

    def states(self) -> list[str]:
        return state_names(self.fixed)


@dataclass(frozen=True)
class _Step:
    prediction: Prediction
    logits: torch.Tensor = field(repr=False)  # (K, h, w) low-res logits of this step's pass
    # (K, 2) the points before the local stage, and after it (None without a stage)
    coarse: np.ndarray | None = field(default=None, repr=False)
    refined: np.ndarray | None = field(default=None, repr=False)
    # (K, 2) the network's own points of this pass, fixed landmarks included (the click decoder's input)
    raw: np.ndarray | None = field(default=None, repr=False)


def review_score_for(
    model: KeypointModel,
    requested: str | None = None,
    click_decoder: bool = True,
    correction_length: float | None = None,
) -> str:
    """The "check next" score a session of ``model`` ranks by when asked for ``requested``
    (:func:`.review.available_score`), with its click decoder on or off (the check-next head goes
    with it) and its correction field's length (None: the model's). ``evaluate`` records it."""
    decoder = model.click_decoder_config if click_decoder and model.click_decoder is not None else None
    review_head = decoder is not None and decoder.review_members > 0
    length = model.config.correction_length if correction_length is None else correction_length
    propagates = length > 0 or decoder is not None  # a click moves other points
    return available_score(requested, load_selection(model.folder), review_head, propagates)


class KeypointSession:
    def __init__(
        self,
        model: KeypointModel,
        image,
        spacing=None,
        device=None,
        optimized: bool = True,
        prev_mode: str = "fixed",
        predictor: Predictor | None = None,
        review_score: str | None = None,
        correction_length: float | None = None,
        local_stage: bool = True,
        click_decoder: bool = True,
    ):
        """``image``: a Radiograph, an array or a file path. ``predictor``: share one
        across sessions of the same model (it holds the inference copy of the network).
        ``review_score``: the "check next" score of :mod:`.review` (None: the default where
        the model folder's morphology allows it, else ``low-confidence``).
        ``correction_length``: the correction field's length (fraction of the landmarks'
        extent, 0 = off); default: the model's. ``local_stage``: run the model's local stage
        (where it has one); False gives the first stage's points. ``click_decoder``: run the
        model's click decoder after the field (where it has one)."""
        if prev_mode not in ("fixed", "all"):
            raise ValueError(f"prev_mode must be 'fixed' or 'all', got {prev_mode!r}")
        self.model = model
        self.config = model.config
        self.prev_mode = prev_mode
        self._morphology = load_selection(model.folder)
        self.predictor = predictor or Predictor(model, device, optimized)
        self.click_decoder = self.predictor.click_decoder if click_decoder else None
        self.correction_length = (
            self.config.correction_length if correction_length is None else float(correction_length)
        )
        if self.correction_length < 0:
            raise ValueError(f"correction_length must be >= 0, got {self.correction_length}")
        self.review_score_name = review_score_for(
            model, review_score, self.click_decoder is not None, self.correction_length
        )
        self.radiograph: Radiograph = image if isinstance(image, Radiograph) else load_radiograph(image, spacing)
        if spacing is not None and isinstance(image, Radiograph):
            self.radiograph = Radiograph(image.array, spacing, True, image.origin, image.path)
        self.coords = CoordinateMap(self.radiograph.size, self.config.input_size)
        self._busy = threading.Lock()
        self._history: list[_Step] = []
        # click heatmap per (landmark, position): a fixed point's map is reused on later clicks
        self._click_maps: dict[tuple[int, float, float], torch.Tensor] = {}
        self._position = -1  # index of the current step in _history
        self._preview: _Step | None = None  # shown until the history changes; never a step
        # the only click-independent part of the network, computed once per image
        image_tensor = preprocess(self.radiograph, self.config.input_size, self.config.intensity)
        image_tensor = image_tensor.expand(self.config.in_channels, -1, -1)[None]
        self._image_features = self.predictor.encode_image(image_tensor)
        # the local stage reads the original pixels, normalised once per image
        self.local_stage = self.predictor.local_stage if local_stage else None
        self._patch_source = (
            PatchSource.from_image(self.radiograph, self.config.intensity) if self.local_stage is not None else None
        )

    # ------------------------------------------------------------------ public API
    @property
    def prediction(self) -> Prediction | None:
        """What to show: the preview while there is one, else the current step's prediction."""
        if self._preview is not None:
            return self._preview.prediction
        return self._history[self._position].prediction if self._history else None

    @property
    def previewing(self) -> bool:
        """A preview is shown (it is no step: undo and redo do not count it)."""
        return self._preview is not None

    @property
    def network_points(self) -> np.ndarray | None:
        """(K, 2) the network's own points of the current step, fixed landmarks included
        (before the field, the click decoder and the local stage); None before ``predict``."""
        raw = self._history[self._position].raw if self._history else None
        return None if raw is None else raw.copy()

    @property
    def can_undo(self) -> bool:
        return self._position > 0

    @property
    def can_redo(self) -> bool:
        return self._position < len(self._history) - 1

    def predict(self) -> Prediction:
        """The current prediction; the first call runs the model with no clicks."""
        if not self._history:
            with self._exclusive():
                self._push(self._infer({}, previous=None))
        return self._current()

    def refine(self, moves: dict) -> Prediction:
        """Fix each moved point where the user put it (original pixels) and re-infer."""
        current = self.predict()
        fixed = self._fixed_positions(current)
        for index, xy in moves.items():
            fixed[self._checked_index(index)] = self._checked_position(index, xy)
        with self._exclusive():
            self._push(self._infer(fixed, previous=self._history[self._position]))
        return self._current()

    def confirm(self, index) -> Prediction:
        """Fix point ``index`` where it is now and re-infer: a refine with zero move (undoable)."""
        current = self.predict()
        index = self._checked_index(index)
        return self.refine({index: current.points[index].copy()})

    def unfix(self, indices) -> Prediction:
        """Let user-fixed points move again and re-infer."""
        current = self.predict()
        fixed = self._fixed_positions(current)
        for index in np.atleast_1d(indices):
            fixed.pop(self._checked_index(index), None)
        with self._exclusive():
            self._push(self._infer(fixed, previous=self._history[self._position]))
        return self._current()

    def reset(self) -> Prediction:
        """Back to the initial prediction (no fixed points); undoable."""
        self.predict()
        self._push(self._history[0])
        return self._current()

    def undo(self) -> Prediction | None:
        self.end_preview()
        if self.can_undo:
            self._position -= 1
        return self.prediction

    def redo(self) -> Prediction | None:
        self.end_preview()
        if self.can_redo:
            self._position += 1
        return self.prediction

    def preview(self, moves: dict) -> Prediction:
        """What ``refine(moves)`` would give, shown without becoming a step: no undo step, the
        redo branch kept. A preview builds on the one before (the path of a drag); the next
        step (refine, confirm, unfix, reset, undo, redo) replaces it, ``end_preview`` drops it.
        A refused move changes nothing."""
        self.predict()
        base = self._preview if self._preview is not None else self._history[self._position]
        fixed = self._fixed_positions(base.prediction)
        for index, xy in moves.items():
            fixed[self._checked_index(index)] = self._checked_position(index, xy)
        with self._exclusive():
            self._preview = self._infer(fixed, previous=base)
        return self._preview.prediction

    def end_preview(self) -> Prediction | None:
        """Drop the preview, if any: the current step's prediction is shown again."""
        self._preview = None
        return self.prediction

    # ------------------------------------------------------------------ internals
    def _current(self) -> Prediction:
        """The current step's prediction, once there is one (after ``predict``)."""
        return self._history[self._position].prediction

    @contextlib.contextmanager
    def _exclusive(self):
        if not self._busy.acquire(blocking=False):
            raise SessionBusyError("the model is still running the previous request; try again when it is done")
        try:
            yield
        finally:
            self._busy.release()

    def _push(self, step: _Step):
        self._preview = None  # a new step replaces the preview
        del self._history[self._position + 1 :]  # a new step drops the redo branch
        self._history.append(step)
        self._position = len(self._history) - 1

    def _fixed_positions(self, prediction: Prediction) -> dict[int, np.ndarray]:
        return {int(k): prediction.points[k].copy() for k in np.flatnonzero(prediction.fixed)}

    def _checked_index(self, index) -> int:
        k = self.config.num_keypoints
        if not (isinstance(index, (int, np.integer)) and 0 <= index < k):
            raise IndexError(f"landmark index {index!r} is not in 0..{k - 1}")
        return int(index)

    def _checked_position(self, index, xy) -> np.ndarray:
        xy = np.asarray(xy, dtype=float).reshape(-1)
        h, w = self.radiograph.size
        # the image covers pixel centres 0..W-1 plus half a pixel on each side
        if xy.shape != (2,) or not inside_image(xy, (h, w)):  # NaN counts as outside
            name = self.config.landmark_names[index]
            raise OutsideImageError(
                f"cannot move {name} to ({xy[0]:.1f}, {xy[1]:.1f}): outside the {w} x {h} pixel image"
            )
        return xy

    def _click_map(self, channel: int, xy) -> torch.Tensor:
        key = (channel, float(xy[0]), float(xy[1]))
        if key not in self._click_maps:
            position = torch.from_numpy(self.coords.to_input(np.asarray(xy, float).reshape(1, 2))).float()
            self._click_maps[key] = gaussian_heatmaps(position[None], self.config.input_size, self.config.sigma)[0, 0]
        return self._click_maps[key]

    def _refine_locally(self, coarse: np.ndarray, movable: np.ndarray, previous: _Step | None) -> np.ndarray:
        """The local stage on the movable points, except those whose coarse position moved less
        than half a patch pixel since the previous step: the stage would see the same patch, so
        they keep the previous step's answer. A click re-runs the first stage for every point,
        which moves most of them by a fraction of a pixel (cephalograms: 98 % under 0.1 mm);
        reusing keeps them still and costs nothing."""
        assert self.local_stage is not None and self._patch_source is not None
        if previous is None or previous.coarse is None or previous.refined is None:
            return self.local_stage.refine(self._patch_source, coarse, movable)
        tolerance = 0.5 * self.local_stage.config.fine_pixel(self._patch_source.height)
        unchanged = movable & (np.linalg.norm(coarse - previous.coarse, axis=1) < tolerance)
        # a point the user just released (unfixed) has no answer of its own in the previous step
        unchanged &= ~previous.prediction.fixed
        refined = self.local_stage.refine(self._patch_source, coarse, movable & ~unchanged)
        refined[unchanged] = previous.refined[unchanged]
        return refined

    def _unpropagated(self, fixed: dict[int, np.ndarray]) -> set[int]:
        """The fixed points farther from the network's first estimate (the 0-click pass) than
        the model's ``propagation_limit`` times that estimate's extent; none without a limit."""
        limit = self.config.propagation_limit
        first = self._history[0].raw if self._history else None
        if limit <= 0 or first is None:
            return set()
        reach = limit * landmark_extent(first)
        return {c for c, xy in fixed.items() if np.linalg.norm(np.asarray(xy, float) - first[c]) > reach}

    def _infer(self, fixed: dict[int, np.ndarray], previous: _Step | None) -> _Step:
        k = self.config.num_keypoints
        size = self.config.input_size
        unpropagated = self._unpropagated(fixed)
        placed = fixed  # every fixed point stays where the user put it
        fixed = {c: xy for c, xy in placed.items() if c not in unpropagated}  # those the model is told of
        channels = np.array(sorted(fixed), dtype=np.int64)
        clicks = (
            torch.stack([self._click_map(int(c), fixed[int(c)]) for c in channels])
            if len(channels)
            else torch.zeros(0, *size)
        )
        clicks = clicks[None]
        used = {(int(c), float(fixed[int(c)][0]), float(fixed[int(c)][1])) for c in channels}
        self._click_maps = {key: m for key, m in self._click_maps.items() if key in used}  # bounded by K
        if self.prev_mode == "all" and previous is not None:
            prev = torch.sigmoid(F.interpolate(previous.logits[None], size=size, mode="bilinear", align_corners=False))
            clicks_all = torch.zeros(1, k, *size)
            clicks_all[:, channels] = clicks
            logits = self.predictor.logits(self._image_features, clicks_all, prev)
        else:
            if previous is None or not len(channels):  # (no fixed point the model is told of)
                prev = torch.zeros_like(clicks)
            else:
                prev_logits = previous.logits[channels][None]
                prev = torch.sigmoid(F.interpolate(prev_logits, size=size, mode="bilinear", align_corners=False))
            logits = self.predictor.logits(self._image_features, clicks, prev, channels=channels)
        points_in, confidence = decode_logits_locally(logits, size)
        points = self.coords.to_original(points_in[0].numpy().astype(np.float64))
        raw = points.copy()
        points = apply_correction_field(points, fixed, self.correction_length, self.config.correction_noise)
        if self.click_decoder is not None and self.click_decoder.applies(len(channels)):
            points = self._decode_clicks(raw, points, fixed)
        expected_error = self._expected_error(raw, points, channels) if self.review_score_name == "decoder" else None
        coarse = refined = None
        if self.local_stage is not None and self._patch_source is not None:
            movable = np.ones(k, dtype=bool)
            movable[list(placed)] = False
            coarse = points.copy()
            refined = self._refine_locally(coarse, movable, previous)
            points = refined.copy()
        confidence = confidence[0].numpy().astype(np.float64)
        is_fixed = np.zeros(k, dtype=bool)
        for c, xy in placed.items():  # user-fixed points stay exactly where the user put them
            points[c] = xy
            confidence[c] = 1.0
            is_fixed[c] = True
        score = review_scores(
            self.review_score_name,
            points,
            confidence,
            logits[0],
            self.radiograph.size,
            is_fixed,
            self._morphology,
            expected_error,
        )
        prediction = Prediction(
            points,
            confidence,
            is_fixed,
            list(self.config.landmark_names),
            self.radiograph.spacing,
            score,
            np.isin(np.arange(k), sorted(unpropagated)),
        )
        return _Step(prediction, logits[0], coarse, refined, raw)

    def _expected_error(self, raw: np.ndarray, decoded: np.ndarray, channels: np.ndarray) -> np.ndarray | None:
        """The decoder head's expected error of the points shown before the local stage."""
        assert self.click_decoder is not None
        first = self._history[0].raw if self._history else None
        is_fixed = np.zeros(len(decoded), dtype=bool)
        is_fixed[channels] = True
        return self.click_decoder.expected_error(raw, raw if first is None else first, decoded, is_fixed)

    def _decode_clicks(self, raw: np.ndarray, shown: np.ndarray, fixed: dict[int, np.ndarray]) -> np.ndarray:
        """The click decoder's points: it reads this pass's and the first pass's network points
        and the field's, with the fixed points where the user put them."""
        assert self.click_decoder is not None
        first = self._history[0].raw if self._history else None
        shown = shown.copy()
        is_fixed = np.zeros(len(shown), dtype=bool)
        for c, xy in fixed.items():
            shown[c] = xy
            is_fixed[c] = True
        return self.click_decoder.correct(raw, raw if first is None else first, shown, is_fixed)
