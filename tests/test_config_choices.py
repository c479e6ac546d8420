"""The names configs check against (mrnn_jax/configs/choices.py) are those the registries
implement, and checking a config imports nothing above the configs."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

from mrnn_jax import data, encoders, model
from mrnn_jax.configs import choices
from mrnn_jax.encoders import pretrained
from mrnn_jax.evaluation import evaluators

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "mrnn_jax" / "configs"


def test_registries_match_the_declared_names():
    assert tuple(model.ACTIVATIONS) == choices.ACTIVATIONS
    assert model.COMPUTE_DTYPES == choices.COMPUTE_DTYPES
    assert encoders.ENCODERS == choices.ENCODERS
    assert tuple(pretrained._architectures()) == choices.ARCHITECTURES
    assert ("shapes", *data.READERS) == choices.DATASETS
    assert tuple(evaluators.REGISTRY) == choices.EVALUATOR_KINDS


def test_every_declared_encoder_builds():
    for name in choices.ENCODERS:
        assert encoders.make_encoder({"name": name}) is not None


def test_configs_import_only_errors_from_the_package():
    for path in sorted(CONFIGS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "mrnn_jax":
                    assert name == "mrnn_jax.errors" or name.startswith("mrnn_jax.configs"), (
                        f"{path.name} imports {name}"
                    )


def test_loading_a_config_imports_only_the_configs_and_errors():
    # The package's __init__ imports the model (and JAX): stand in an empty package for it.
    script = (
        "import sys, types\n"
        f"package = types.ModuleType('mrnn_jax'); package.__path__ = [{str(CONFIGS.parent)!r}]\n"
        "sys.modules['mrnn_jax'] = package\n"
        "from mrnn_jax import configs\n"
        "configs.load_config('tiny', ['train.select_by=val/CIDEr-D'])\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('mrnn_jax'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    assert [m for m in out if m not in ("mrnn_jax", "mrnn_jax.errors")] == [
        m for m in out if m.startswith("mrnn_jax.configs")
    ]
    assert "mrnn_jax.configs.choices" in out
