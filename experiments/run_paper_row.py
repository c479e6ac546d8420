"""One row of the m-RNN papers' tables: train, evaluate, and compare with the reported numbers.

    python experiments/run_paper_row.py flickr30k_vgg16 --data-dir data/flickr30k \
        --features data/flickr30k/vgg16_fc7.npz [--workdir runs/paper/flickr30k_vgg16] \
        [KEY=VALUE ...]

Rows (experiments/paper_rows/): flickr8k_alexnet, flickr30k_alexnet, flickr30k_vgg16,
coco_vgg16, iapr_alexnet. Each trains with its config (mrnn train), scores the test split's
perplexity and beam-3 captions (mrnn evaluate: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D), runs
image-sentence retrieval where the paper reports it (mrnn retrieve), and writes
WORKDIR/paper/comparison.md and .json next to the reported values. --dry-run does all of it
for two training steps, to check the data and the command before a long run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

from mrnn_jax import cli, logs
from mrnn_jax.files import write_json_atomic, write_text_atomic

ROWS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_rows")
ROWS = sorted(f[:-3] for f in os.listdir(ROWS_DIR) if f.endswith(".py") and f[0] != "_")
# Two steps of the real config and data: checks files, features, shapes and every command.
DRY_RUN = [
    "train.num_steps=2",
    "train.batch_size=4",
    "train.warmup_steps=1",
    "train.log_every=1",
    "train.eval_every=1",
    "train.checkpoint_every=1",
    "eval.batch_size=8",
    "dataset.min_count=1",
]
DIRECTIONS = ("sentence retrieval", "image retrieval")


def _row_module(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROWS_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(argv: list[str]) -> None:
    print("$ mrnn " + " ".join(argv), flush=True)
    status = cli.main(argv)
    if status:
        sys.exit(status)


def comparison(reported: dict, measured: dict) -> list[dict]:
    """One row per reported value: ``{"table", "metric", "paper", "ours"}``."""
    rows = []
    for table, values in reported.items():
        for metric, paper in values.items():
            ours = measured.get(table, {}).get(metric)
            rows.append({"table": table, "metric": metric, "paper": paper, "ours": ours})
    return rows


def markdown(name: str, source: str, rows: list[dict], note: str) -> str:
    """The comparison as a Markdown table."""
    lines = [
        f"## {name}",
        "",
        f"Reported: {source}. {note}",
        "",
        "| table | metric | paper | ours |",
        "|---|---|---|---|",
    ]
    for row in rows:
        ours = "n/a" if row["ours"] is None else f"{row['ours']:.4g}"
        lines.append(f"| {row['table']} | {row['metric']} | {row['paper']:g} | {ours} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Runs one paper row (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("row", choices=ROWS, help="which row of the papers' tables")
    parser.add_argument("--data-dir", required=True, help="the dataset's folder")
    parser.add_argument("--features", required=True, help="precomputed features (.npz / .npy)")
    parser.add_argument("--workdir", default=None, help="default: runs/paper/ROW")
    parser.add_argument("--beam", type=int, default=3, help="beam width for captions (3)")
    parser.add_argument("--dry-run", action="store_true", help="two training steps only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    logs.add_argument(parser)
    args = parser.parse_intermixed_args(argv)
    logs.setup(args.verbose)

    module = _row_module(args.row)
    workdir = args.workdir or os.path.join("runs", "paper", args.row)
    out = os.path.join(workdir, "paper")
    quiet = ["--no-progress"] if args.no_progress else []
    quiet += ["--verbose"] if args.verbose else []  # each command sets up logging again
    data = ["--data-dir", args.data_dir, "--features", args.features]
    overrides = [*(DRY_RUN if args.dry_run else []), *args.overrides]
    config_path = os.path.join(ROWS_DIR, f"{args.row}.py")
    _run(["train", "--config", config_path, "--workdir", workdir, *data, *quiet, *overrides])

    captioning_json = os.path.join(out, "captioning.json")
    _run(
        ["evaluate", "--checkpoint", workdir, "--beam", str(args.beam)]
        + ["--json", captioning_json, *data, *quiet]
    )
    with open(captioning_json, encoding="utf-8") as f:
        measured = {"captioning": json.load(f)["metrics"]}
    if any(direction in module.REPORTED for direction in DIRECTIONS):
        retrieval_json = os.path.join(out, "retrieval.json")
        _run(
            ["retrieve", "--checkpoint", workdir, "--json", retrieval_json]
            + [*module.RETRIEVAL_OPTIONS, *data, *quiet]
        )
        with open(retrieval_json, encoding="utf-8") as f:
            measured.update(json.load(f)["metrics"])

    rows = comparison(module.REPORTED, measured)
    note = "DRY RUN (2 steps): the numbers are meaningless." if args.dry_run else ""
    table = markdown(args.row, module.SOURCE, rows, note)
    write_text_atomic(os.path.join(out, "comparison.md"), table)
    write_json_atomic(
        os.path.join(out, "comparison.json"),
        {"row": args.row, "source": module.SOURCE, "dry_run": args.dry_run, "rows": rows},
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
