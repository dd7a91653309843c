"""Labelled radiograph datasets: loaders for AASCE, ISBI 2015, a generic folder and
in-memory phantoms, all returning a :class:`DatasetSplit` of :class:`KeypointSample`.

>>> train = get_dataset("aasce", "/data/boostnet_labeldata", "train")
>>> split_record = get_split_ids("aasce", "/data/boostnet_labeldata")  # save with the model
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from ..recipe import DATASETS, DataSection, add_fields
from . import aasce, folder, isbi, synthetic
from .common import DatasetNotFoundError, DatasetSplit, KeypointSample, label_problem, load_grey_image, read_image_size
from .training import KeypointTrainingDataset

__all__ = [
    "DATASETS", "add_dataset_arguments", "DatasetNotFoundError", "DatasetSplit", "KeypointSample", "KeypointTrainingDataset",
    "dataset_options", "disordered_label_options", "get_dataset", "get_split_ids", "label_problem",
    "load_grey_image", "read_image_size", "training_splits",
]  # fmt: skip


def add_dataset_arguments(
    group: argparse._ActionsContainer, *, phantom_images: int, dataset_group: argparse._ActionsContainer | None = None
) -> None:
    """The dataset options of the train, train-local, pack and evaluate command lines:
    ``--dataset``, ``--data-root``, ``--split-seed``, ``--phantom-images`` and
    ``--drop-disordered-labels``, added to ``group`` (declared once, in :class:`.recipe.DataSection`).
    ``dataset_group``: where ``--dataset`` goes instead, not required there (train's group of one
    data source: --dataset or --pack). ``phantom_images`` is the command's default (the phantom
    splits are seeded prefixes, so a smaller default evaluates the first images of the same split a
    model validated on)."""
    names = ("dataset", "data_root", "split_seed", "phantom_images", "drop_disordered_labels")
    required = () if dataset_group is not None else ("dataset",)
    exclusive = {"source": dataset_group} if dataset_group is not None else {"source": group}
    add_fields(group, DataSection, only=names, defaults={"phantom_images": phantom_images}, required=required,
               exclusive=exclusive)  # fmt: skip


def dataset_options(name: str, split_seed: int = 0, phantom_images: int = 16) -> dict:
    """The loader options that the train / evaluate command lines set."""
    if name in ("aasce", "folder"):
        return {"seed": split_seed}
    if name in synthetic.TASKS:
        return {"num_images": phantom_images, "seed": split_seed}
    return {}


def disordered_label_options(name: str, drop_disordered: bool) -> dict:
    """The loader option of ``--drop-disordered-labels``: AASCE labels with vertebrae out of
    order left out (see :func:`aasce.vertebra_order_problem`); no other dataset has the check."""
    if not drop_disordered:
        return {}
    if name != "aasce":
        raise UsageError("--drop-disordered-labels applies to the AASCE dataset only")
    return {"drop_disordered": True}


def get_dataset(name: str, root: str | Path | None = None, split: str = "train", **options) -> DatasetSplit:
    """One split of a dataset. Options go to the loader: AASCE ``num_val``, ``seed``;
    ISBI ``annotators``; folder ``val_fraction``, ``seed``; phantom ``num_images``, ``seed``,
    ``height``, ``width`` (no root)."""
    if name in synthetic.TASKS:
        return synthetic.load(split, task=name, **options)
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    if root is None:
        raise UsageError(f"dataset {name!r} needs a root folder (--data-root)")
    loader = {"aasce": aasce.load, "isbi": isbi.load, "folder": folder.load}[name]
    return loader(root, split, **options)


def get_split_ids(name: str, root: str | Path | None = None, **options) -> dict[str, list[str]]:
    """The ids in every split (before label validation), to record next to a trained model."""
    if name == "aasce":
        return aasce.split_ids(root, **options)
    if name == "isbi":
        return {split: isbi.split_ids(split) for split in isbi.SPLITS}
    if name == "folder":
        return folder.split_ids(root, **options)
    if name in synthetic.TASKS:
        return synthetic.split_ids(**options)
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")


def training_splits(
    name: str,
    root: str | Path | None = None,
    split_seed: int = 0,
    phantom_images: int = 16,
    drop_disordered: bool = False,
) -> tuple[DatasetSplit, DatasetSplit, dict]:
    """(train, val, split record) as training uses them; the record is saved with the model and
    compared on resume. Disordered labels are dropped from training only (validation keeps them)."""
    options = dataset_options(name, split_seed, phantom_images)
    drop = disordered_label_options(name, drop_disordered)
    train = get_dataset(name, root, "train", **options, **drop)
    val = get_dataset(name, root, "val", **options)
    split_record = {
        "dataset": name,
        "split_seed": split_seed,
        "ids": get_split_ids(name, root, **options),
        "skipped": {"train": train.skipped, "val": val.skipped},
    }
    return train, val, split_record
