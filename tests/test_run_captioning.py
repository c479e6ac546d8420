"""experiments/run_captioning.py and ``mrnn evaluate`` on a tiny trained run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_mrnn, subprocess_env

SCRIPT = os.path.join(REPO, "experiments", "run_captioning.py")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=600,
    )


def test_help_documents_every_option():
    result = _run_script("--help")
    assert result.returncode == 0
    options = set(re.findall(r"add_argument\(\s*\"(--[a-z-]+)\"", _read(SCRIPT)))
    assert len(options) >= 10
    for option in options:
        assert option in result.stdout, option


def test_writes_json_markdown_results_and_html(tiny_run, tmp_path):
    out = str(tmp_path / "out")
    result = _run_script(
        "--checkpoint",
        tiny_run,
        "--split",
        "test",
        "--beam",
        "2",
        "--max-images",
        "6",
        "--out",
        out,
        "--no-progress",
        "--batch-size",
        "4",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(out, "captioning_test.json"), encoding="utf-8") as f:
        table = json.load(f)
    assert table["num_images"] == 6
    assert set(table["strategies"]) == {"greedy", "beam K=2"}
    for entry in table["strategies"].values():
        metrics = entry["metrics"]
        for name in ("perplexity", "BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr-D"):
            assert isinstance(metrics[name], float), name
        assert "METEOR" in metrics  # a number, or None when Java is missing
    assert "SPICE" in table["unavailable"]

    markdown = _read(os.path.join(out, "captioning_test.md"))
    assert markdown.startswith("| decoding | perplexity | BLEU-1 |")
    assert "| greedy |" in markdown and "| beam K=2 |" in markdown

    for name in ("captions_test_greedy.json", "captions_test_beamK2.json"):
        with open(os.path.join(out, name), encoding="utf-8") as f:
            captions = json.load(f)
        assert len(captions) == 6
        assert all(set(c) == {"image_id", "caption"} for c in captions)

    page = _read(os.path.join(out, "captioning_test.html"))
    assert page.count('class="item"') == 6
    assert page.count("data:image/png;base64,") == 6
    assert "[greedy]" in page and "[beam K=2]" in page


def test_mrnn_evaluate_prints_metrics_and_writes_json(tiny_run, tmp_path):
    path = str(tmp_path / "metrics.json")
    result = run_mrnn(
        "evaluate",
        "--checkpoint",
        tiny_run,
        "--split",
        "novel",
        "--beam",
        "2",
        "--max-images",
        "4",
        "--batch-size",
        "4",
        "--json",
        path,
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CIDEr-D" in result.stdout and "perplexity" in result.stdout
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    assert data["split"] == "novel" and data["num_images"] == 4
    assert data["decoding"]["strategy"] == "beam" and data["decoding"]["beam_size"] == 2


def test_mrnn_evaluate_unknown_split_is_one_line_error(tiny_run):
    result = run_mrnn("evaluate", "--checkpoint", tiny_run, "--split", "nope")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "has no split 'nope'" in result.stderr


def test_consensus_reranking_rows_beside_the_plain_n_best(tiny_run, tmp_path):
    out = str(tmp_path / "out")
    result = _run_script(
        "--checkpoint",
        tiny_run,
        "--beam",
        "--max-images",
        "4",
        "--rerank",
        "consensus",
        "--rerank-hypotheses",
        "2",
        "--rerank-metric",
        "CIDEr",
        "BLEU",
        "--out",
        out,
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(out, "captioning_test.json"), encoding="utf-8") as f:
        table = json.load(f)
    rows = ["greedy", "beam K=2 n-best", "beam K=2 + consensus CIDEr", "beam K=2 + consensus BLEU"]
    assert set(table["strategies"]) == set(rows)
    assert [r["metric"] for r in table["rerank"]] == ["CIDEr", "BLEU"]
    assert all(r["num_hypotheses"] == 2 and r["num_neighbours"] == 60 for r in table["rerank"])
    assert [r["references_kept"] for r in table["rerank"]] == [125, 175]
    for row in rows[1:]:
        assert table["strategies"][row]["metrics"]["perplexity"] == pytest.approx(
            table["strategies"]["greedy"]["metrics"]["perplexity"]
        )
    assert "| beam K=2 + consensus CIDEr |" in _read(os.path.join(out, "captioning_test.md"))
