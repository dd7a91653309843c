"""The simulated user through a session, click by click, over a split.

For every image: the errors after 0..max clicks for *model revision* (the model re-runs
after each click) and *manual revision* (only the clicked point moves).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ..clicks import SimulatedUser
from ..data.common import KeypointSample, load_grey_image
from ..imaging import Radiograph
from ..inference import Predictor
from ..metrics import mre, radial_errors
from ..model_io import KeypointModel
from ..review import rank_for_review
from ..session import KeypointSession, Prediction
from .options import EvaluateOptions


@dataclass
class RevisionCurves:
    """MRE (original px) after 0..C clicks for one image, and the radial errors behind it."""

    model: np.ndarray  # (C + 1,)
    manual: np.ndarray  # (C + 1,)
    errors_by_clicks: np.ndarray  # (C + 1, K) model-revision radial errors in px
    manual_errors_by_clicks: np.ndarray  # (C + 1, K) manual-revision radial errors in px
    model_clicks: np.ndarray  # (C,) landmark the model run's user clicked, in click order
    points_by_clicks: np.ndarray  # (C + 1, K, 2) model-revision points, for measurements
    confirmed: np.ndarray | None = None  # (C,) guided user: True where the click confirmed rather than corrected


def noisy_clicks(
    truth: np.ndarray, sd_px: float, image_size: tuple[int, int], seed: object
) -> Callable[[int, np.ndarray], np.ndarray]:
    """Where a user with click noise ``sd_px`` puts (landmark, true position): see
    :meth:`.clicks.SimulatedUser.with_click_noise`."""
    return SimulatedUser.with_click_noise(len(truth), sd_px, image_size, seed).place


def next_for_review(prediction: Prediction) -> int:
    """The guided user's choice: the model's first-ranked unfixed point. It sees only the
    prediction, never the truth."""
    ranking = rank_for_review(prediction)
    if not ranking:
        raise ValueError("every keypoint is already fixed: there is no keypoint left to review")
    return ranking[0]


def simulate_guided(
    session: KeypointSession,
    truth: np.ndarray,
    max_clicks: int,
    tolerance_px: float,
    user: SimulatedUser | None = None,
    choose: Callable[[Prediction], int] = next_for_review,
) -> RevisionCurves:
    """A user without an oracle, ``max_clicks`` times: take the point ``choose`` picks from
    the prediction alone; if its error is above ``tolerance_px`` put it at its true position
    (where ``user`` places it: its click noise), else confirm it where it is. Ground truth
    only decides correct vs confirm. Manual revision: the same user going down the first
    prediction's ranking with no re-run of the model."""
    user = dataclasses.replace(user or SimulatedUser(), tolerance_px=tolerance_px)
    first = session.predict()
    start = first.points
    manual_points = start.copy()
    manual_order = rank_for_review(first)
    errors, manual_errors = [radial_errors(start, truth)], [radial_errors(start, truth)]
    points, clicks, confirmed = [start], [], []
    prediction = first
    for step in range(max_clicks):
        k = choose(prediction)
        clicks.append(k)
        wrong = user.corrects(prediction.points[k], truth[k])
        confirmed.append(not wrong)
        prediction = session.refine({k: user.place(k, truth[k])}) if wrong else session.confirm(k)
        errors.append(radial_errors(prediction.points, truth))
        points.append(prediction.points)

        j = manual_order[step]
        if user.corrects(manual_points[j], truth[j]):
            manual_points[j] = user.place(j, truth[j])
        manual_errors.append(radial_errors(manual_points, truth))
    model_errors, manual_errors_array = np.array(errors), np.array(manual_errors)
    return RevisionCurves(
        model_errors.mean(-1),
        manual_errors_array.mean(-1),
        model_errors,
        manual_errors_array,
        np.array(clicks, dtype=int),
        np.array(points),
        np.array(confirmed, dtype=bool),
    )


def simulate_revision(
    session: KeypointSession, truth: np.ndarray, max_clicks: int, user: SimulatedUser | None = None
) -> RevisionCurves:
    """``user`` (default: exact clicks) clicks the worst not-yet-clicked point and puts it
    at its true position, ``max_clicks`` times; the model run through ``session``, the
    manual run without re-running the model."""
    user = SimulatedUser() if user is None else user
    start = session.predict().points
    model_points, manual_points = start.copy(), start.copy()
    model_clicked = np.zeros(len(truth), bool)
    manual_clicked = np.zeros(len(truth), bool)
    errors, manual_errors = [radial_errors(start, truth)], [radial_errors(start, truth)]
    points = [start]
    model_curve, manual_curve = [mre(start, truth)], [mre(start, truth)]
    model_clicks = []
    for _ in range(max_clicks):
        k = user_click(user, model_points, truth, model_clicked)
        model_clicks.append(k)
        model_points = session.refine({k: user.place(k, truth[k])}).points
        errors.append(radial_errors(model_points, truth))
        points.append(model_points)
        model_curve.append(mre(model_points, truth))

        j = user_click(user, manual_points, truth, manual_clicked)
        manual_points[j] = user.place(j, truth[j])
        manual_errors.append(radial_errors(manual_points, truth))
        manual_curve.append(mre(manual_points, truth))
    return RevisionCurves(
        np.array(model_curve),
        np.array(manual_curve),
        np.array(errors),
        np.array(manual_errors),
        np.array(model_clicks, dtype=int),
        np.array(points),
    )


def user_click(user: SimulatedUser, points: np.ndarray, truth: np.ndarray, clicked: np.ndarray) -> int:
    """One image's click, (K, 2), (K, 2), (K,) marked in place: the user's batch of one."""
    k = int(user.click(points[None], truth[None], clicked[None])[0])
    if k < 0:
        raise ValueError("every keypoint is already clicked: there is no keypoint left to click")
    return k


def sample_radiograph(sample: KeypointSample) -> Radiograph:
    return Radiograph(
        load_grey_image(sample), sample.spacing, sample.spacing_known, path=str(sample.image_path or sample.id)
    )


def open_session(
    model: KeypointModel, sample: KeypointSample, predictor: Predictor, options: EvaluateOptions
) -> KeypointSession:
    """One image's session with the options' inference rule and model parts: a switch of a
    model part in :class:`.EvaluateOptions` reaches the session here."""
    return KeypointSession(
        model,
        sample_radiograph(sample),
        prev_mode=options.prev_mode,
        predictor=predictor,
        review_score=options.review_score,
        local_stage=options.local_stage,
        click_decoder=options.click_decoder,
    )


def simulated_user(session: KeypointSession, sample: KeypointSample, n: int, options: EvaluateOptions) -> SimulatedUser:
    """Image ``n``'s user: exact clicks, or with the options' click noise seeded by (click_seed, n)."""
    if options.click_noise <= 0:
        return SimulatedUser()
    noise_px = options.click_noise * options.px_per_unit(sample.spacing)
    return SimulatedUser.with_click_noise(
        len(sample.points), noise_px, session.radiograph.size, (options.click_seed, n)
    )


def simulate_sample(
    session: KeypointSession, sample: KeypointSample, n: int, options: EvaluateOptions
) -> RevisionCurves:
    """Image ``n`` of the split, corrected by the options' user through ``session``."""
    user = simulated_user(session, sample, n, options)
    if options.user == "oracle":
        return simulate_revision(session, sample.points, options.max_clicks, user)
    tolerance_px = options.tolerance * options.px_per_unit(sample.spacing)
    return simulate_guided(session, sample.points, options.max_clicks, tolerance_px, user)


def evaluate_split(
    model: KeypointModel, samples: Sequence[KeypointSample], options: EvaluateOptions
) -> list[RevisionCurves]:
    """RevisionCurves for every sample, sharing one inference copy of the network. The
    correction field is the model config's (replace the config to override it)."""
    predictor = Predictor(model, options.device)
    progress = tqdm(samples, desc=f"evaluate ({options.user})", disable=not options.progress)
    return [
        simulate_sample(open_session(model, sample, predictor, options), sample, n, options)
        for n, sample in enumerate(progress)
    ]
