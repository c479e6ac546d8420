"""notebooks/quickstart.ipynb runs top to bottom (nbclient, a real kernel) on the committed
tiny checkpoint and a folder of shapes scenes, and shows what the library returns."""

from __future__ import annotations

import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO, write_scenes

NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")
CHECKPOINT = os.path.join(REPO, "tests", "data", "tiny_checkpoint")


@pytest.mark.slow
def test_the_quickstart_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    images = tmp_path / "images"
    split, _ = write_scenes(images, 5, seed=4)
    (images / "broken.jpg").write_bytes(b"not an image")
    # The kernel inherits this environment: the paths, this checkout, the CPU.
    monkeypatch.setenv("MRNN_RUN", CHECKPOINT)
    monkeypatch.setenv("MRNN_IMAGES", str(images))
    monkeypatch.setenv("MRNN_QUERY", split.records[0].captions[0])
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline figures
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert notebook.cells[1].source.count("pip") >= 1  # Colab-ready: it installs the package
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()  # raises CellExecutionError, with the cell and traceback, on any error

    def text(cell) -> str:
        return "".join(
            output.get("text", "") + output.get("data", {}).get("text/plain", "")
            for output in cell.get("outputs", [])
        )

    outputs = "\n".join(text(cell) for cell in notebook.cells if cell.cell_type == "code")
    assert "step 20, 37 words, encoder small_cnn" in outputs
    assert "5 images, 1 skipped" in outputs
    assert "| m-RNN | image retrieval, P(S\\|I) |" in outputs
    assert outputs.count("log p = ") >= 6  # 2 images x 3 beams
    images_shown = sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )
    assert images_shown == 2  # the captioned images and the search results
