"""The options of one evaluation run: the protocol, the simulated user, the model's parts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

User = Literal["oracle", "guided"]
Unit = Literal["px", "mm"]
USERS: tuple[str, ...] = get_args(User)
# the model's parts a run can leave out: bool fields of EvaluateOptions, on / off / both at the command line
MODEL_PARTS = ("local_stage", "click_decoder")


@dataclass(frozen=True)
class EvaluateOptions:
    """How :func:`.simulate.evaluate_split` runs a split and :mod:`.report` sums it up.

    ``user``: ``oracle`` (the protocol) or ``guided`` (see :func:`.simulate.simulate_guided`,
    with ``tolerance`` and ``review_score``). ``click_noise``: SD of the clicks' error;
    ``tolerance``, ``click_noise`` and ``targets`` are in ``unit`` (mm: divided by each
    image's spacing). Image n's click noise is seeded by (``click_seed``, n). NoC / FR count
    at most ``noc_clicks`` clicks (None: ``max_clicks``).

    A model part that can be left out is a bool here (one of ``MODEL_PARTS``), handed to
    each image's session by :func:`.simulate.open_session`; the command line's ``both`` runs
    the split again with :meth:`without` and compares the two in metrics.json.
    """

    # the protocol
    max_clicks: int = 10
    targets: tuple[float, ...] = (20.0, 30.0, 40.0, 50.0)
    unit: Unit = "px"
    noc_clicks: int | None = None
    # the simulated user
    user: User = "oracle"
    tolerance: float = 0.0
    review_score: str | None = None
    click_noise: float = 0.0
    click_seed: int = 0
    # the model: its inference rule and its parts
    prev_mode: str = "fixed"
    local_stage: bool = True  # the model's full-resolution local stage, where it has one
    click_decoder: bool = True  # the model's click decoder, where it has one
    # where and how it runs
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.user not in USERS:
            raise ValueError(f"unknown user {self.user!r}; expected one of {USERS}")
        if self.unit not in get_args(Unit):
            raise ValueError(f"unknown unit {self.unit!r}; expected one of {get_args(Unit)}")

    @property
    def noc_budget(self) -> int:
        """The click budget of NoC / FR."""
        return self.max_clicks if self.noc_clicks is None else self.noc_clicks

    @property
    def curve_key(self) -> str:
        """metrics.json's MRE curve in ``unit``."""
        return "MRE_by_clicks_mm" if self.unit == "mm" else "MRE_by_clicks"

    def px_per_unit(self, spacing: tuple[float, float]) -> float:
        """Pixels per ``unit`` on an image of ``spacing`` (mm per pixel)."""
        return 1.0 / spacing[0] if self.unit == "mm" else 1.0

    def without(self, part: str) -> EvaluateOptions:
        """The same run with the model part ``part`` (one of ``MODEL_PARTS``) left out."""
        if part not in MODEL_PARTS:
            raise ValueError(f"unknown model part {part!r}; expected one of {MODEL_PARTS}")
        off: dict[str, Any] = {part: False}
        return dataclasses.replace(self, **off)
