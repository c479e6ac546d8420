"""The training run's page (``workdir/report.html``, ``templates/run.html.j2``): what the
best checkpoint was selected by, the final evaluation of each split, the training curves
drawn with matplotlib and example captions, in one self-contained HTML file.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence

from mrnn_jax.pages import common
from mrnn_jax.run_dir import RunDir

"""The training run's page, in its work directory."""

# Scalars not worth a curve: counts, and NLL (perplexity carries it).
_NOT_PLOTTED = ("num_words", "num_images", "nll_per_word", "tokens_per_second", "grad_norm")


def read_metrics(path: str | os.PathLike[str]) -> list[dict]:
    """The rows of a ``metrics.jsonl``, one per (split, step): a step logged twice (a run
    resumed from an earlier checkpoint) keeps its last row. A torn last line is skipped."""
    rows: dict[tuple[str, int], dict] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and "step" in row and "split" in row:
                    rows[(str(row["split"]), int(row["step"]))] = row
    except FileNotFoundError:
        return []
    return sorted(rows.values(), key=lambda r: (int(r["step"]), str(r["split"])))


def curve_panels(rows: Sequence[Mapping], skip_splits: Sequence[str] = ()) -> dict[str, dict]:
    """The curves to draw, as ``{panel title: {line label: ([steps], [values])}}``.

    Panels: training loss; under SCST the reward and its baseline; perplexity of training
    and of every evaluator prefix; the
    learning rate; then one per other evaluator scalar, scalars that differ only by a
    trailing n-gram order or K (``BLEU-1..4``, ``image R@1/5/10``) sharing a panel. Splits
    in ``skip_splits`` (the final evaluation's single points) are left out.
    """
    panels: dict[str, dict[str, tuple[list, list]]] = {}

    def add(panel: str, label: str, step: int, value: object) -> None:
        if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            return
        steps, values = panels.setdefault(panel, {}).setdefault(label, ([], []))
        steps.append(step)
        values.append(float(value))

    for row in rows:
        split, step = str(row["split"]), int(row["step"])
        if split in skip_splits:
            continue
        for name, value in row.items():
            if name in ("step", "split", "time") or name in _NOT_PLOTTED:
                continue
            if split == "train" and name == "loss":
                add("loss", "train", step, value)
            elif split == "train" and name in ("reward", "reward_baseline"):
                add("reward", name, step, value)  # SCST: the sampled captions' CIDEr-D
            elif name == "perplexity":
                add("perplexity", split, step, value)
            elif name == "learning_rate":
                add("learning rate", split, step, value)
            else:
                panel = re.sub(r"(-\d|@\d+)$", "", name)
                panel = re.sub(r"-$", "", panel)
                add(f"{split}/{panel}", name, step, value)
    first = ("loss", "reward", "perplexity", "learning rate")
    ordered = {p: panels[p] for p in first if p in panels}
    ordered.update({p: v for p, v in panels.items() if p not in first})
    return ordered


def training_curves_png(rows: Sequence[Mapping], skip_splits: Sequence[str] = ()) -> bytes:
    """The run's training curves (:func:`curve_panels`) drawn with matplotlib, as PNG bytes;
    perplexity on a log scale. A run with nothing logged yet gives a one-line notice."""
    from matplotlib.figure import Figure  # slow to import: only drawing needs it

    panels = curve_panels(rows, skip_splits)
    columns = 3
    count = max(len(panels), 1)
    lines = -(-count // columns)
    figure = Figure(figsize=(4.2 * columns, 3.0 * lines), dpi=100, layout="constrained")
    if not panels:
        axes = figure.add_subplot()
        axes.text(0.5, 0.5, "nothing logged yet", ha="center", va="center")
        axes.set_axis_off()
    for index, (title, curves) in enumerate(panels.items()):
        axes = figure.add_subplot(lines, columns, index + 1)
        for label, (steps, values) in curves.items():
            axes.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, label=label)
        if title == "perplexity":
            from matplotlib.ticker import ScalarFormatter  # as Figure above

            axes.set_yscale("log")
            axes.yaxis.set_major_formatter(ScalarFormatter())
            axes.yaxis.set_minor_formatter(ScalarFormatter())
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("step", fontsize=8)
        axes.tick_params(labelsize=8)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_run_report(workdir: str | os.PathLike[str], results: Mapping) -> str:
    """Writes ``workdir/report.html`` (``templates/run.html.j2``): what the best checkpoint
    was selected by, the final evaluation of each split, the training curves
    (:func:`training_curves_png`, from ``workdir/metrics.jsonl``) and example captions.
    Returns the page's path."""
    workdir = os.fspath(workdir)
    run = RunDir.at(workdir)
    rows = read_metrics(run.metrics)
    splits = dict(results.get("splits", {}))
    png = training_curves_png(rows, skip_splits=tuple(splits))
    selected = results.get("selected_by", {})
    first = ("num_images", "perplexity", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR")
    first += ("ROUGE-L", "CIDEr-D")
    found = dict.fromkeys(k for values in splits.values() for k in values)
    names = [n for n in first if n in found] + [n for n in found if n not in first]
    text = common.render(
        "run.html.j2",
        title=f"m-RNN training run: {os.path.basename(os.path.abspath(workdir))}",
        best_step=str(results.get("best_step")),
        metric=str(selected.get("metric")),
        mode=str(selected.get("mode")),
        value=selected.get("value"),
        names=names,
        splits=[(str(split), [values.get(n) for n in names]) for split, values in splits.items()],
        curves=common.png_data_uri(png),
        workdir=workdir,
        examples=[
            (
                str(split),
                [
                    (
                        str(example.get("image_id")),
                        str(example.get("caption")),
                        [str(r) for r in example.get("references", [])],
                    )
                    for example in split_examples
                ],
            )
            for split, split_examples in results.get("examples", {}).items()
        ],
    )
    path = run.report
    common.write_page(path, text, "run report")
    return path
