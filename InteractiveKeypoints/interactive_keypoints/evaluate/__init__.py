"""The paper's evaluation protocol: a simulated user corrects the worst point, one per click.

    interactive-keypoints evaluate --model DIR --dataset aasce --data-root ROOT --split val \
        --max-clicks 10 --targets 20 30 40 50 --out OUT

For every image: MRE after 0..max clicks for *model revision* (the model re-runs after
each click) and *manual revision* (only the clicked point moves). MRE is in original
pixels, and in mm where the dataset has a pixel spacing. Writes OUT/metrics.json,
OUT/per_image.csv and two plots (MRE vs clicks, paper Fig. 4; NoC vs target, Fig. 6), and
the propagation gain (manual minus model MRE after 1, 2, 3, 5 clicks, on all landmarks and
on those near the clicked ones; see :mod:`..propagation`) in metrics.json,
OUT/propagation_gain.csv and OUT/propagation_gain.png.
Where the model names a measurement set (model.json ``measurements``), also the clinical
measurements after each click against those of the ground truth: OUT/measurements.json
(Cobb SMAPE and MAE per angle, or ceph class accuracy per measurement),
OUT/measurements_per_image.csv and OUT/measurements_vs_clicks.png.

``--user guided``: instead of the oracle, a user who has no oracle looks at the point the
model ranks first for review (:func:`..review.rank_for_review`, score ``--review-score``),
corrects it if its error is above ``--guided-tolerance`` and otherwise confirms it (a
click either way). ``--user oracle guided`` runs both and compares them in
metrics.json ``users`` and OUT/users_mre_vs_clicks.png; the first user listed gives the
classic outputs. ``--click-noise SD``: the user's clicks land with Gaussian error of SD
(in ``--unit``), seeded by ``--click-seed``.

One module per concern: :mod:`.options` (:class:`EvaluateOptions`, what one run of a
split is), :mod:`.simulate` (the simulated user through a session, image by image),
:mod:`.report` (the summaries: MRE curves, NoC / FR, SDR, propagation gain, measurements),
:mod:`.outputs` (metrics.json, the CSV tables, the plots, the console) and :mod:`.cli`
(the command line).
"""

from __future__ import annotations

from .options import USERS, EvaluateOptions
from .report import sample_measurements, summarise, summarise_measurements, summarise_propagation, summarise_users
from .simulate import (
    RevisionCurves,
    evaluate_split,
    next_for_review,
    noisy_clicks,
    sample_radiograph,
    simulate_guided,
    simulate_revision,
    user_click,
)

__all__ = [
    "USERS",
    "EvaluateOptions",
    "RevisionCurves",
    "evaluate_split",
    "next_for_review",
    "noisy_clicks",
    "sample_measurements",
    "sample_radiograph",
    "simulate_guided",
    "simulate_revision",
    "summarise",
    "summarise_measurements",
    "summarise_propagation",
    "summarise_users",
    "user_click",
]
