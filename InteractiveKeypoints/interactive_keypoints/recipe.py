"""The training recipe: every setting of ``interactive-keypoints train`` as typed, nested data.

A :class:`Recipe` has one frozen dataclass per concern (data, model, loss, interaction,
optimisation, validation, start, runtime, output). Each field declares its command-line
option once: the flag is the field's name (``--batch-size`` is ``optimisation.batch_size``),
its help, choices (a ``Literal``) and parsing are in the field, and from these the train
command line is generated (:func:`add_arguments`), a recipe file is read and written
(:func:`from_json`, :func:`to_json`) and the command that gives a recipe is rebuilt
(:func:`arguments`, :func:`command_line`).

A recipe file is JSON: ``{"format_version": 1, "data": {...}, "model": {...}, ...}``; a
section or field it leaves out has its default. ``train --config FILE`` starts from it and the
options given beside it override it. ``train_config.json`` in a model folder is the recipe a
run used; the flat files of older versions (one key per option) are read too.

Only the standard library here: the GPU job and the command line's help import it cheaply.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import UsageError

DATASETS = ("aasce", "isbi", "folder", "phantom", "phantom-hidden")
FORMAT_VERSION = 1
GIVEN = "given_options"  # on a parsed namespace: the names of the options given on the command line
Dataset = Literal["aasce", "isbi", "folder", "phantom", "phantom-hidden"]


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 256x128, got {text!r}") from None
    return h, w


def format_size(size: tuple[int, int]) -> str:
    return "x".join(str(v) for v in size)


def parse_fold(text: str) -> str:
    """``I/K``: fold I (1-based) of K; returned as written, checked."""
    try:
        fold, folds = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/K such as 1/2, got {text!r}") from None
    if not 1 <= fold <= folds or folds < 2:
        raise argparse.ArgumentTypeError(f"expected 1 <= I <= K and K >= 2, got {text!r}")
    return f"{fold}/{folds}"


def option(
    default: Any,
    help: str = "",
    *,
    parse: typing.Callable[[str], Any] | None = None,
    show: typing.Callable[[Any], str] | None = None,
    nargs: int | None = None,
    metavar: str | tuple[str, ...] | None = None,
    exclusive: str | None = None,
) -> Any:
    """A recipe field and its command-line option. ``parse`` / ``show``: text to value and back
    (``--input 256x128``); ``exclusive``: options of the same name exclude each other (on the
    command line, and a given one replaces the recipe file's other)."""
    metadata = {"help": help, "parse": parse, "show": show, "nargs": nargs, "metavar": metavar, "exclusive": exclusive}
    return field(default=default, metadata={k: v for k, v in metadata.items() if v is not None})


# ------------------------------------------------------------------ the sections
@dataclass(frozen=True)
class DataSection:
    """where the images and labels come from: a dataset, or a training pack (interactive-keypoints pack)"""

    pack: Path | None = option(
        None,
        "a training pack (interactive-keypoints pack) instead of --dataset; "
        "--split-seed and --drop-disordered-labels must be the pack's",
        exclusive="source",
    )
    dataset: Dataset | None = option(None, exclusive="source")
    data_root: Path | None = option(None, "the dataset's own top folder")
    split_seed: int = option(0, "seed of the train/val split")
    phantom_images: int = option(64, "phantom dataset size per split")
    drop_disordered_labels: bool = option(
        False,
        "AASCE: leave labels with vertebrae out of order out (train and pack: from training only, "
        "validation keeps them; evaluate: from the split, metrics.json lists them under 'skipped')",
    )
    hold_out_fold: str | None = option(
        None,
        "cross-fitting: leave fold I of K of the training images out of training (folds by a hash of each "
        "id and --split-seed; split.json lists them under 'skipped'), so a part trained later on this "
        "network's points of those images sees the errors of images it never trained on",
        parse=parse_fold,
        metavar="I/K",
    )


@dataclass(frozen=True)
class ModelSection:
    """the network"""

    width: int = option(18, "HRNet width (18, 32, ...)")
    depth: Literal["compact", "full"] = option(
        "compact", "compact: HRNet-small stages; full: the paper's HRNetV2 (1/4/3 modules)"
    )
    input: tuple[int, int] = option((256, 128), "network input HxW", parse=parse_size, show=format_size, metavar="HxW")
    ocr_channels: tuple[int, int] = option(
        (256, 128),
        "OCR head sizes (the paper's 256 128; smaller for tiny test models)",
        nargs=2,
        metavar=("MID", "KEY"),
    )
    sigma: float | None = option(None, "heatmap sigma in input px (default: 7.5 at 512 px high, scaled)")
    no_gating: bool = option(False, "ablation: no interaction-guided gating")
    gating_pool: Literal["max", "avg"] = option("max")
    gate_channels: int = option(256, "the gating network's width (paper: 256)")


@dataclass(frozen=True)
class LossSection:
    """the morphology-aware loss term"""

    morphology: Literal["low", "high", "adjacent", "off"] = option("low", "which pairs and triplets it constrains")
    n_pairs: int = option(70)
    n_triplets: int = option(70)
    morphology_weight: float = option(0.01)


@dataclass(frozen=True)
class InteractionSection:
    """how simulated clicks teach the hint path"""

    iterative_max: int = option(2, "extra no-grad click passes (0..N, uniform)")
    click_pass_bn: Literal["eval", "train"] = option(
        "eval",
        "BatchNorm mode of the no-grad click passes: eval (as the paper's and RITM's code; "
        "running statistics see only graded passes) or train",
    )
    train_prev: Literal["all", "clicked"] = option(
        "all",
        "previous prediction fed in training: all channels (paper) or only clicked ones (the paper's inference rule)",
    )
    clicked_loss_weight: float = option(1.0, "heatmap-loss weight of clicked keypoints relative to unclicked ones")
    hint_scale_init: float | None = option(
        None,
        "set the hint-fusion scale |s| before training (RITM's 0.05 suits a pretrained "
        "backbone; from scratch the hints then stay too faint to learn from); default: keep",
    )
    occlusion_prob: float = option(
        0.0, "probability of blanking a square around a random keypoint (clicks become informative)"
    )


@dataclass(frozen=True)
class OptimisationSection:
    """Adam, its schedule, and when training ends"""

    epochs: int = option(300)
    batch_size: int = option(4, "per process")
    lr: float = option(1e-3)
    lr_schedule: Literal["constant", "cosine"] = option(
        "constant", "cosine: decay from --lr to --min-lr over --epochs (over --max-minutes when given)"
    )
    min_lr: float = option(1e-5)
    seed: int = option(0, "everything random derives from it: initial weights, augmentation, clicks")
    max_steps: int | None = option(None, "stop after this many optimiser steps (tests)")
    max_minutes: float | None = option(None, "stop (with a checkpoint) after this long")
    budget_clock: Literal["wall", "cpu"] = option(
        "wall", "what --max-minutes counts: wall-clock time, or this process's CPU time (a shared machine)"
    )


@dataclass(frozen=True)
class ValidationSection:
    """which weights are kept"""

    val_every: int = option(1, "validate every N epochs (and after the last)")
    select_on: Literal["mre0", "mre3", "cobb3"] = option(
        "mre0", "keep the weights with the best val MRE at 0 clicks or after 3, or (spine) Cobb SMAPE after 3"
    )
    patience: int = option(50, "early stopping on validation MRE (epochs)")


@dataclass(frozen=True)
class StartSection:
    """the weights training starts from (default: initialised anew)"""

    init_from: Path | None = option(
        None,
        "start from the weights of this model folder: the same landmarks and architecture (fine-tuning), "
        "or other landmarks (transfer: the landmark-sized layers start new)",
        exclusive="start",
    )
    transfer_from: Path | None = option(
        None,
        "start from the tensors of this model folder whose name and shape match "
        "(another dataset's model: backbone yes, K-sized hint and head layers no)",
        exclusive="start",
    )


@dataclass(frozen=True)
class RuntimeSection:
    """where and how fast it runs (results do not depend on --workers)"""

    device: str = option("auto")
    threads: int | None = option(None, "CPU threads (default: all cores, shared between torchrun processes)")
    no_fast: bool = option(False, "disable bf16 autocast / channels_last")
    workers: int = option(0, "DataLoader worker processes (persistent); results do not depend on the number")


@dataclass(frozen=True)
class OutputSection:
    """the model folder"""

    out: Path | None = option(None, "model folder to write (required)")
    resume: bool = option(False, "continue from OUT/checkpoint.*")
    checkpoint_every: int = option(1, "write the resumable checkpoint every N epochs; 0: only at the end")
    save_dtype: Literal["float32", "float16"] = option("float16")
    max_shard_mb: float = option(15.0, "split the model weights into files of at most this many MB")
    quiet: bool = option(False, "no progress bars")


@dataclass(frozen=True)
class Recipe:
    """Every setting of a training run (``interactive-keypoints train``), by section."""

    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    loss: LossSection = field(default_factory=LossSection)
    interaction: InteractionSection = field(default_factory=InteractionSection)
    optimisation: OptimisationSection = field(default_factory=OptimisationSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    start: StartSection = field(default_factory=StartSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    output: OutputSection = field(default_factory=OutputSection)


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Recipe)}  # type: ignore[misc]
OPTIONS: dict[str, str] = {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


# ------------------------------------------------------------------ field types
def _hint(section: type, name: str) -> Any:
    return typing.get_type_hints(section)[name]


def _without_none(hint: Any) -> tuple[Any, bool]:
    """(the type of a value, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(hint) if a is not type(None)]
        return kinds[0], len(kinds) < len(typing.get_args(hint))
    return hint, False


def _choices(kind: Any) -> tuple | None:
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else None


def _typed(section: type, name: str, value: Any) -> Any:
    """``value`` (from JSON or the command line) as the field's type; a UsageError if it is none."""
    kind, optional = _without_none(_hint(section, name))
    if value is None and optional:
        return None
    choices = _choices(kind)
    if choices is not None and value in choices:
        return value
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind in (str, Path) and isinstance(value, (str, Path)):
        return kind(value)
    if typing.get_origin(kind) is tuple and isinstance(value, (list, tuple)) and len(value) == 2:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
    expected = f"one of {', '.join(map(str, choices))}" if choices else getattr(kind, "__name__", str(kind))
    raise UsageError(f"{name} = {value!r} is no {expected}{' (or null)' if optional else ''}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ------------------------------------------------------------------ the command line
class _Option(argparse.Action):
    """Stores an option's value and notes that it was given (a recipe file's value yields to it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        setattr(namespace, GIVEN, getattr(namespace, GIVEN, frozenset()) | {self.dest})


def _shown(f: dataclasses.Field, value: Any) -> str:
    """A value as its option writes it: ``256x128``, ``32 16``, ``0.001``."""
    if "show" in f.metadata:
        return f.metadata["show"](value)
    return " ".join(map(str, value)) if "nargs" in f.metadata else str(value)


def _argument(section: type, f: dataclasses.Field, default: Any) -> dict[str, Any]:
    """The keyword arguments of ``add_argument`` for a field."""
    kind, _ = _without_none(_hint(section, f.name))
    meta, choices = f.metadata, _choices(kind)
    shown = "" if default is None or default is False else f" (default: {_shown(f, default)})"
    kwargs: dict[str, Any] = {"action": _Option, "default": default, "help": (meta["help"] + shown).strip() or None}
    if kind is bool:
        kwargs.update(nargs=0, const=True)
    elif choices:
        kwargs.update(type=str, choices=choices)
    else:  # a pair of numbers is one text (--input 256x128) or two (--ocr-channels 32 16)
        kwargs.update(type=meta.get("parse", int if "nargs" in meta else kind), nargs=meta.get("nargs"))
    if "metavar" in meta:
        kwargs["metavar"] = meta["metavar"]
    return kwargs


def add_fields(
    container: argparse._ActionsContainer,
    section: type,
    *,
    only: typing.Iterable[str] | None = None,
    defaults: dict[str, Any] | None = None,
    required: typing.Collection[str] = (),
    exclusive: dict[str, argparse._ActionsContainer] | None = None,
) -> None:
    """The options of ``section``'s fields (``only`` these), added to ``container``.
    ``defaults``: a command's own defaults; ``exclusive``: the containers of the fields that
    exclude each other, by their ``exclusive`` name (made here when not given)."""
    groups = {} if exclusive is None else dict(exclusive)
    container.set_defaults(**{GIVEN: frozenset()})  # a parse says which options it was given
    names = None if only is None else set(only)
    for f in dataclasses.fields(section):
        if names is not None and f.name not in names:
            continue
        default = (defaults or {}).get(f.name, f.default)
        target = container
        if "exclusive" in f.metadata:
            if f.metadata["exclusive"] not in groups:
                groups[f.metadata["exclusive"]] = container.add_mutually_exclusive_group()
            target = groups[f.metadata["exclusive"]]
        kwargs = _argument(section, f, default)
        if f.name in required:
            kwargs["required"] = True
        target.add_argument(_flag(f.name), **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every recipe option, one argument group per section."""
    for name, section in SECTIONS.items():
        add_fields(parser.add_argument_group(name, section.__doc__), section)


def from_arguments(args: argparse.Namespace, base: Recipe | None = None) -> Recipe:
    """The recipe of parsed arguments: ``base`` (default: the defaults) with the options given on
    the command line; a namespace that does not say which were given gives all its options."""
    given = getattr(args, GIVEN, None)
    values = vars(args) if given is None else {name: getattr(args, name) for name in given}
    return with_options(base or Recipe(), {name: v for name, v in values.items() if name in OPTIONS})


def with_options(recipe: Recipe, values: dict[str, Any]) -> Recipe:
    """``recipe`` with options set by name (``{"lr": 1e-4}``); an option given replaces the
    recipe's value of the options it excludes (``--pack`` a recipe's ``dataset``)."""
    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
        raise UsageError(f"unknown options {', '.join(unknown)}")
    changes: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        section = SECTIONS[OPTIONS[name]]
        group = next(f.metadata.get("exclusive") for f in dataclasses.fields(section) if f.name == name)
        for other in dataclasses.fields(section) if group else ():
            if other.metadata.get("exclusive") == group and other.name not in values:
                changes.setdefault(OPTIONS[name], {})[other.name] = other.default
        changes.setdefault(OPTIONS[name], {})[name] = _typed(section, name, value)
    return dataclasses.replace(
        recipe, **{name: dataclasses.replace(getattr(recipe, name), **fields) for name, fields in changes.items()}
    )


def check(recipe: Recipe) -> Recipe:
    """The recipe, when a run can start from it: it names its data and its folder."""
    if recipe.data.pack is None and recipe.data.dataset is None:
        raise UsageError("no data: give --dataset or --pack (on the command line or in the --config recipe)")
    if recipe.output.out is None:
        raise UsageError("no model folder: give --out (on the command line or as output.out in the --config recipe)")
    return recipe


def arguments(recipe: Recipe) -> list[str]:
    """The command-line arguments that give ``recipe``: the options off their default."""
    argv: list[str] = []
    for section_name, section in SECTIONS.items():
        values = getattr(recipe, section_name)
        for f in dataclasses.fields(section):
            value = getattr(values, f.name)
            if value == f.default:
                continue
            if value is True:
                argv.append(_flag(f.name))
            else:  # --ocr-channels MID KEY: two arguments
                argv += [_flag(f.name), *(_shown(f, value).split(" ") if "nargs" in f.metadata else [_shown(f, value)])]
    return argv


def command_line(recipe: Recipe) -> str:
    """The shell command that trains with ``recipe`` (for model cards)."""
    return shlex.join(["interactive-keypoints", "train", *arguments(recipe)])


# ------------------------------------------------------------------ recipe files
def to_json(recipe: Recipe, leave_out: typing.Collection[str] = ()) -> dict:
    """The recipe as JSON data, by section (``leave_out``: options to omit, e.g. a machine's paths)."""

    def plain(value: Any) -> Any:
        return str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value

    data: dict[str, Any] = {"format_version": FORMAT_VERSION}
    for name in SECTIONS:
        values = getattr(recipe, name)
        fields = {f.name: plain(getattr(values, f.name)) for f in dataclasses.fields(values) if f.name not in leave_out}
        data[name] = fields
    return data


def from_json(data: dict) -> Recipe:
    """The recipe of JSON data: by section (:func:`to_json`; left-out fields get their default)
    or, as older versions wrote train_config.json, one key per option."""
    if not isinstance(data, dict):
        raise UsageError("a recipe is a JSON object")
    if "format_version" not in data and not any(isinstance(v, dict) for v in data.values()):  # older, flat
        return with_options(Recipe(), data)
    version = data.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise UsageError(f"recipe format_version {version}: this version reads {FORMAT_VERSION}")
    unknown = sorted(set(data) - set(SECTIONS) - {"format_version"})
    if unknown:
        raise UsageError(f"unknown recipe sections {', '.join(unknown)} (sections: {', '.join(SECTIONS)})")
    values = {}
    for section, fields in data.items():
        if section == "format_version":
            continue
        if not isinstance(fields, dict):
            raise UsageError(f"recipe section {section} is no JSON object")
        misplaced = sorted(name for name in fields if OPTIONS.get(name) != section)
        if misplaced:
            raise UsageError(f"unknown options {', '.join(misplaced)} in recipe section {section}")
        values.update(fields)
    return with_options(Recipe(), values)


def load(path: str | Path) -> Recipe:
    """A recipe file (JSON)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"--config {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise UsageError(f"--config {path}: not JSON ({e})") from None
    try:
        return from_json(data)
    except UsageError as e:
        raise UsageError(f"--config {path}: {e}") from None


def save(recipe: Recipe, path: str | Path, leave_out: typing.Collection[str] = ()) -> Path:
    path = Path(path)
    path.write_text(json.dumps(to_json(recipe, leave_out), indent=1) + "\n")
    return path
