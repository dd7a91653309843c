"""``interactive-keypoints evaluate``: the options, the model and the split, then a run."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import add_dataset_arguments, dataset_options, disordered_label_options, get_dataset
from ..data.common import DatasetSplit, KeypointSample
from ..errors import UsageError
from ..model_io import KeypointModel, load_model
from ..review import SCORES
from ..session import review_score_for
from .options import MODEL_PARTS, USERS, EvaluateOptions, User
from .outputs import print_measurement_summary, print_summary, print_users, print_variant_comparison, write_outputs
from .report import summarise, summarise_measurements, summarise_users, variant_comparison
from .simulate import RevisionCurves, evaluate_split


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="model folder")
    # 16 phantoms: the first 16 of the 64 validation images train gives a phantom model (quick)
    add_dataset_arguments(parser, phantom_images=16)
    parser.add_argument("--split", default="val")
    add_protocol_arguments(parser)
    add_model_arguments(parser)
    add_sample_arguments(parser)
    add_user_arguments(parser)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, all cores)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quiet", action="store_true")


def add_protocol_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-clicks", type=int, default=10, help="clicks per image (MRE curve 0..N)")
    parser.add_argument(
        "--noc-clicks",
        type=int,
        default=None,
        help="click budget of NoC / FR (default: --max-clicks; the ceph protocol uses 5)",
    )
    parser.add_argument("--targets", type=float, nargs="+", default=[20, 30, 40, 50])
    parser.add_argument("--unit", choices=["px", "mm"], default="px", help="unit of --targets")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The inference rule and the model's parts; a new part's on / off / both switch goes here."""
    parser.add_argument(
        "--prev-mode",
        choices=["fixed", "all"],
        default="fixed",
        help="previous prediction in fixed channels only (paper) or all channels",
    )
    parser.add_argument(
        "--correction-length",
        type=float,
        default=None,
        help="correction field length, fraction of the landmarks' extent (default: the model's; "
        "0 = the network alone moves the points, the paper's rule)",
    )
    parser.add_argument(
        "--correction-noise",
        type=float,
        default=None,
        help="correction field noise, relative to the kernel's variance (default: the model's)",
    )
    parser.add_argument(
        "--propagation-limit",
        type=float,
        default=None,
        help="a correction farther than this fraction of the landmarks' extent from the network's first "
        "point moves no other point (default: the model's; 0 = every correction propagates)",
    )
    parser.add_argument(
        "--local-stage",
        choices=["on", "off", "both"],
        default=None,  # None: on, unasked (no note where the model has no stage)
        help="the model's full-resolution local stage (where its folder has one): on (default), off, or both "
        "(the outputs are with it; metrics.json 'local_stage' has both curves)",
    )
    parser.add_argument(
        "--click-decoder",
        choices=["on", "off", "both"],
        default=None,  # None: on, unasked
        help="the model's click decoder (where its folder has one): on (default), off, or both "
        "(the outputs are with it; metrics.json 'click_decoder' has both curves)",
    )


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument(
        "--sample",
        type=int,
        default=None,
        help="evaluate N images drawn at random from the split (seeded by --sample-seed; metrics.json records the ids)",
    )
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of --sample")


def add_user_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--user",
        nargs="+",
        choices=USERS,
        default=["oracle"],
        help="simulated user(s): oracle clicks the worst point (the protocol); guided checks the "
        "point the model ranks first and corrects or confirms it. Several: compared in "
        "metrics.json 'users'; the first gives the other outputs",
    )
    parser.add_argument(
        "--review-score",
        choices=SCORES,
        default=None,
        help="the guided user's ranking score (default: the session's default for the model)",
    )
    parser.add_argument(
        "--guided-tolerance",
        type=float,
        default=None,
        help="the guided user corrects a point whose error is above this (in --unit; "
        "default: the smallest --targets), else confirms it",
    )
    parser.add_argument(
        "--click-noise", type=float, default=0.0, help="SD of the Gaussian error of every click, in --unit (px, or mm)"
    )
    parser.add_argument("--click-seed", type=int, default=0, help="seed of --click-noise")


def check_options(args: argparse.Namespace) -> None:
    """The option checks that need neither the model nor the data: before loading either."""
    if args.max_clicks < 0:
        raise UsageError(f"--max-clicks {args.max_clicks} must be 0 or more")
    if args.noc_clicks is not None and not 0 <= args.noc_clicks <= args.max_clicks:
        raise UsageError(f"--noc-clicks {args.noc_clicks} must be between 0 and --max-clicks {args.max_clicks}")
    if args.click_noise < 0:
        raise UsageError(f"--click-noise {args.click_noise} must be 0 or more")
    if args.limit is not None and args.sample is not None:
        raise UsageError("--limit (the first N images) and --sample (N images at random) exclude each other")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit} must be at least 1")
    if args.sample is not None and args.sample < 1:
        raise UsageError(f"--sample {args.sample} must be at least 1")


def options_from(args: argparse.Namespace, user: User, parts: dict[str, bool]) -> EvaluateOptions:
    """The options of one run of the split by ``user``."""
    return EvaluateOptions(
        max_clicks=args.max_clicks,
        targets=tuple(args.targets),
        unit=args.unit,
        noc_clicks=args.noc_clicks,
        user=user,
        tolerance=min(args.targets) if args.guided_tolerance is None else args.guided_tolerance,
        review_score=args.review_score,
        click_noise=args.click_noise,
        click_seed=args.click_seed,
        prev_mode=args.prev_mode,
        local_stage=parts["local_stage"],
        click_decoder=parts["click_decoder"],
        device=args.device,
        progress=not args.quiet,
    )


def load_evaluated_model(args: argparse.Namespace) -> KeypointModel:
    """The model folder, with the propagation settings the command line overrides."""
    model = load_model(args.model)
    overrides = (
        ("correction_length", args.correction_length),
        ("correction_noise", args.correction_noise),
        ("propagation_limit", args.propagation_limit),
    )
    field_settings = {name: value for name, value in overrides if value is not None}
    if field_settings:  # a sweep of the propagation settings, without editing model.json
        model.config = dataclasses.replace(model.config, **field_settings)
        model.config.validate()
    return model


def load_samples(args: argparse.Namespace, model: KeypointModel) -> tuple[DatasetSplit, list[KeypointSample]]:
    """The split and the images of it to evaluate, checked against the model and the unit."""
    options = dataset_options(args.dataset, args.split_seed, args.phantom_images)
    options.update(disordered_label_options(args.dataset, args.drop_disordered_labels))
    split = get_dataset(args.dataset, args.data_root, args.split, **options)
    if split.num_keypoints != model.config.num_keypoints:
        raise UsageError(f"the model has {model.config.num_keypoints} keypoints, the dataset {split.num_keypoints}")
    samples = choose_samples(
        split.samples, args.limit, args.sample, args.sample_seed, f"{args.dataset} split {args.split!r}"
    )
    if args.unit == "mm" and not all(s.spacing_known for s in samples):  # before the run, not after it
        raise UsageError(f"--unit mm: {args.dataset} has no known pixel spacing; give --unit px")
    return split, samples


def choose_samples(samples: list, limit: int | None, sample: int | None, seed: int, what: str) -> list:
    """The images to evaluate: all, the first ``limit``, or ``sample`` drawn at random
    (seeded, kept in split order)."""
    if limit is not None and sample is not None:
        raise UsageError("--limit (the first N images) and --sample (N images at random) exclude each other")
    if not samples:
        raise UsageError(f"no images in {what}")
    if limit is not None:
        if limit < 1:
            raise UsageError(f"--limit {limit} must be at least 1")
        return samples[:limit]
    if sample is not None:
        if not 1 <= sample <= len(samples):
            raise UsageError(f"--sample {sample} must be between 1 and the {len(samples)} images of {what}")
        chosen = np.random.default_rng(seed).choice(len(samples), size=sample, replace=False)
        return [samples[i] for i in sorted(chosen)]
    return samples


# what a run of a model without the part evaluates, for the note
WITHOUT_PART = {"local_stage": "the first stage", "click_decoder": "the network and the correction field"}


def uses_part(args: argparse.Namespace, model: KeypointModel, part: str) -> bool:
    """Whether the run's outputs are with the model part ``part`` (one of ``MODEL_PARTS``: the
    local stage, the click decoder). A model without it runs without; that is said only where
    the part was asked for by name."""
    asked, present = getattr(args, part), getattr(model, part) is not None
    if asked in ("on", "both") and not present:
        name, option = part.replace("_", " "), "--" + part.replace("_", "-")
        print(f"note: {args.model} has no {name}; {option} {asked} evaluates {WITHOUT_PART[part]}")
    return asked != "off" and present


def run(args: argparse.Namespace) -> int:
    check_options(args)
    if args.threads:  # e.g. beside a training: oversubscribed OpenMP threads crawl
        torch.set_num_threads(args.threads)
    model = load_evaluated_model(args)
    split, samples = load_samples(args, model)
    users = list(dict.fromkeys(args.user))
    parts = {part: uses_part(args, model, part) for part in MODEL_PARTS}
    runs = {user: options_from(args, user, parts) for user in users}
    options = runs[users[0]]  # the first user gives the classic outputs
    results_by_user = {user: evaluate_split(model, samples, run_options) for user, run_options in runs.items()}
    results = results_by_user[users[0]]
    metrics = summarise(results, samples, options, split.landmark_names)
    for part, used in parts.items():
        if getattr(args, part) == "both" and used:
            metrics[part] = compare_without(part, model, samples, options, results, split.landmark_names)
        metrics[f"{part}_used"] = used
    describe_run(metrics, args, model, split)
    if not (users == ["oracle"] and options.click_noise == 0):  # beyond the protocol: metrics.json grows
        add_users(metrics, results_by_user, samples, options, model, split.landmark_names)
    if args.sample is not None:
        metrics["sample"] = {"size": args.sample, "seed": args.sample_seed, "of": len(split.samples)}
        metrics["sample"]["ids"] = [s.id for s in samples]  # which images the seed drew
    measurement_report = None
    if model.config.measurements:  # the model's clinical measurements against the ground truth's
        measurement_report = summarise_measurements(results, samples, model.config.measurements)
    write_outputs(Path(args.out), metrics, results, samples, options, measurement_report)
    print_summary(metrics, options)
    if measurement_report is not None:
        print_measurement_summary(measurement_report)
    if "users" in metrics:
        print_users(metrics, options)
    return 0


def compare_without(
    part: str,
    model: KeypointModel,
    samples: list[KeypointSample],
    options: EvaluateOptions,
    results: list[RevisionCurves],
    landmark_names: list[str] | None,
) -> dict[str, Any]:
    """metrics.json's entry ``part`` (a name of ``MODEL_PARTS``): the curves ``with`` the
    model part (``results``, the run's) and ``without`` it, the same user and options."""
    without = evaluate_split(model, samples, options.without(part))
    variants = {"with": results, "without": without}
    comparison = variant_comparison(variants, samples, options, landmark_names, model.config.measurements)
    print_variant_comparison(part.replace("_", " "), comparison, options)
    return comparison


def describe_run(metrics: dict[str, Any], args: argparse.Namespace, model: KeypointModel, split: DatasetSplit) -> None:
    """What was evaluated, into metrics.json: the model, the data, the rule and the field."""
    metrics.update(
        model=str(args.model),
        dataset=args.dataset,
        split=args.split,
        prev_mode=args.prev_mode,
        correction_length=model.config.correction_length,
        correction_noise=model.config.correction_noise,
        propagation_limit=model.config.propagation_limit,
        skipped=split.skipped,
    )


def add_users(
    metrics: dict[str, Any],
    results_by_user: dict[str, list[RevisionCurves]],
    samples: list,
    options: EvaluateOptions,
    model: KeypointModel,
    landmark_names: list[str] | None,
) -> None:
    """metrics.json's comparison of the users, their click noise and the guided user's rule."""
    metrics["users"] = summarise_users(results_by_user, samples, options, landmark_names)
    metrics["user"] = options.user
    metrics["click_noise"] = {"sd": options.click_noise, "unit": options.unit, "seed": options.click_seed}
    if "guided" in results_by_user:
        metrics["guided"] = {
            "review_score": review_score_for(model, options.review_score, options.click_decoder),
            "tolerance": options.tolerance,
            "unit": options.unit,
            "rule": "check the first-ranked unfixed point; correct it if its error is above "
            "the tolerance, else confirm it; each is one click",
        }
