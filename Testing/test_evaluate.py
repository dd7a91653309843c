"""The evaluate package's own rules: its options and the local stage switch. The protocol's
outputs are tested where the models are trained (test_training, test_local_stage, test_review)."""

import argparse
import dataclasses

import pytest

from interactive_keypoints.evaluate import EvaluateOptions
from interactive_keypoints.evaluate.cli import add_arguments, uses_part
from interactive_keypoints.tiny_model import tiny_model, with_tiny_local_stage


def evaluate_args(*options):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--model", "m", "--dataset", "phantom", "--out", "o", *options])


@pytest.mark.parametrize(
    ("options", "note"),
    [
        ((), False),
        (("--local-stage", "on"), True),
        (("--local-stage", "both"), True),
        (("--local-stage", "off"), False),
    ],
)
def test_a_model_without_a_stage_is_noted_only_where_the_stage_was_asked_for(options, note, capsys):
    assert uses_part(evaluate_args(*options), tiny_model(), "local_stage") is False
    printed = capsys.readouterr().out
    assert ("has no local stage" in printed) == note
    if note:
        assert f"--local-stage {options[1]} evaluates the first stage" in printed


@pytest.mark.parametrize(
    ("options", "used"), [((), True), (("--local-stage", "both"), True), (("--local-stage", "off"), False)]
)
def test_a_model_with_a_stage_runs_it_unless_it_is_switched_off(options, used, capsys):
    assert uses_part(evaluate_args(*options), with_tiny_local_stage(tiny_model()), "local_stage") is used
    assert capsys.readouterr().out == ""


def test_the_options_leave_out_a_known_model_part_and_nothing_else():
    options = EvaluateOptions(max_clicks=3, user="guided", tolerance=2.0, local_stage=True)
    without = options.without("local_stage")
    assert without.local_stage is False
    assert dataclasses.replace(without, local_stage=True) == options
    with pytest.raises(ValueError, match="unknown model part 'decoder'"):
        options.without("decoder")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_clicks = 5  # type: ignore[misc]


def test_the_options_refuse_an_unknown_user_or_unit():
    with pytest.raises(ValueError, match="unknown user 'random'"):
        EvaluateOptions(user="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown unit 'cm'"):
        EvaluateOptions(unit="cm")  # type: ignore[arg-type]
    assert EvaluateOptions(max_clicks=4).noc_budget == 4 and EvaluateOptions(max_clicks=4, noc_clicks=2).noc_budget == 2
