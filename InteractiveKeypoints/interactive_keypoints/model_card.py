"""The card (README.md) of a model trained on a landmark folder: what a user needs to judge it
before using it - the images it learnt from, its error on the images held back, the time
and the CPU it took, how it started, and the command that trains it again."""

from __future__ import annotations

import json
import time
from pathlib import Path

CARD_FILE = "README.md"


def _names(ids: list[str], limit: int = 40) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "") if ids else "none"


def seen_by_start(init_from: str | None, held_back: list[str]) -> list[str]:
    """Held-back images the model training started from was trained on (their error flatters)."""
    split = Path(init_from) / "split.json" if init_from else None
    if split is None or not split.is_file():
        return []
    try:
        record = json.loads(split.read_text())
        trained = set(record["ids"]["train"]) - {i for i, _ in record.get("skipped", {}).get("train", [])}
    except (ValueError, KeyError, TypeError):
        return []
    same_data = record.get("dataset") == "folder"
    return sorted(set(held_back) & trained) if same_data else []


def card_text(config, summary: dict, split_record: dict, metrics: dict | None, partial: int) -> str:
    ids = split_record["ids"]
    skipped = {part: [i for i, _ in pairs] for part, pairs in split_record.get("skipped", {}).items()}
    trained = [i for i in ids["train"] if i not in skipped.get("train", [])]
    held = [i for i in ids["val"] if i not in skipped.get("val", [])]
    if summary.get("init_from"):
        start = f"`{summary['init_from']}` ({summary.get('start', 'its weights')})"
    elif summary.get("transfer_from"):
        start = f"the tensors of `{summary['transfer_from']}` that fit by name and shape"
    else:
        start = "random weights (from scratch)"
    if metrics:
        error = (
            f"MRE {metrics['mre0_px']:.2f} px at 0 clicks, {metrics['mre3_px']:.2f} px after "
            f"{metrics['clicks']} simulated clicks, on {metrics['images']} image(s); best epoch "
            f"{summary['best_epoch'] + 1} of {summary['epochs']}"
        )
    else:
        error = "not measured (the run ended before its first validation)"
    budget = summary.get("budget_minutes")
    time_line = f"{summary['wall_s'] / 60:.1f} min wall clock, {summary['cpu_s'] / 60:.1f} min of CPU time"
    if budget:
        time_line += f" (budget {budget:g} min of {'CPU' if summary['budget_clock'] == 'cpu' else 'wall-clock'} time)"
    lines = [
        f"# {config.name}: {config.num_keypoints} landmarks",
        "",
        f"Trained with `interactive-keypoints train` on the landmark folder `{split_record.get('root', '')}`, "
        f"{time.strftime('%Y-%m-%d %H:%M')}. Made by the program; numbers from this run only.",
        "",
        "| | |",
        "|---|---|",
        f"| landmarks | {', '.join(config.landmark_names)} |",
        f"| started from | {start} |",
        f"| images | {len(trained) + len(held)} annotated: {len(trained)} trained on"
        + (f" ({partial} partly reviewed: their reviewed points only)" if partial else "")
        + f", {len(held)} held back |",
        f"| held-back error | {error} |",
        f"| time | {time_line} |",
        f"| CPU / device | {summary['device_name']}, torch {summary['torch']} |",
        f"| input | {config.input_size[0]} x {config.input_size[1]} px, HRNet width {config.width} |",
        "",
        f"Trained on: {_names(trained)}.",
        "",
        f"Held back: {_names(held)}.",
    ]
    seen = seen_by_start(summary.get("init_from"), held)
    if seen:
        lines += [
            "",
            f"Held back here but trained on by the model this one started from: {_names(seen)} "
            "(their error flatters the model).",
        ]
    skipped_all = [f"{i}: {why}" for pairs in split_record.get("skipped", {}).values() for i, why in pairs]
    if skipped_all:
        lines += ["", "Left out: " + "; ".join(skipped_all) + "."]
    lines += ["", "Train it again:", "", "```bash", summary["command"], "```", ""]
    return "\n".join(lines)


def write_card(folder, config, summary: dict, split_record: dict, metrics: dict | None, partial: int) -> Path:
    path = Path(folder) / CARD_FILE
    path.write_text(card_text(config, summary, split_record, metrics, partial))
    return path
