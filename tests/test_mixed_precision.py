"""Mixed precision: bfloat16 matrix products with float32 parameters, optimiser state, loss
and outputs; a float32-trained checkpoint evaluated in bfloat16 keeps its perplexity."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrnn_jax import captioner, configs
from mrnn_jax.data.pipeline import CaptionTable
from mrnn_jax.errors import MrnnError
from mrnn_jax.evaluation import captioning
from mrnn_jax.model import make_model
from mrnn_jax.training.step import init_state, make_optimizer, make_train_step


def _model(dtype: str):
    return make_model({"compute_dtype": dtype}, {"name": "features", "features_dim": 32}, 500)


def _data():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((4, 32)).astype(np.float32)
    tokens = rng.integers(4, 500, (4, 9)).astype(np.int32)
    tokens[:, 0] = 1
    return images, tokens


def test_bfloat16_products_keep_float32_parameters_and_outputs():
    images, tokens = _data()
    full, mixed = _model("float32"), _model("bfloat16")
    params = full.init(jax.random.PRNGKey(0), images, tokens)
    assert {
        leaf.dtype for leaf in jax.tree.leaves(mixed.init(jax.random.PRNGKey(0), images, tokens))
    } == {jnp.dtype("float32")}
    a, b = full.apply(params, images, tokens), mixed.apply(params, images, tokens)
    assert b.dtype == jnp.float32
    assert 0 < float(jnp.abs(a - b).max()) < 0.05 * float(jnp.abs(a).max())
    program = str(jax.make_jaxpr(lambda p: mixed.apply(p, images, tokens))(params))
    assert "bf16" in program and "preferred_element_type=float32" in program


def test_a_bfloat16_training_step_keeps_float32_state():
    images, tokens = _data()
    model = _model("bfloat16")
    config = configs.load_config("default").train
    tx = make_optimizer(config)
    state = init_state(model, tx, 0, images, tokens[:, :-1])
    state, metrics = jax.jit(make_train_step(model, tx, 1e-6))(
        state, {"image": images, "tokens": tokens}
    )
    assert np.isfinite(float(metrics["loss"]))
    dtypes = {leaf.dtype for leaf in jax.tree.leaves((state.params, state.opt_state))}
    assert dtypes <= {jnp.dtype("float32"), jnp.dtype("int32")}


def test_float32_checkpoint_evaluated_in_bfloat16_keeps_its_perplexity(tiny_run):
    values = {}
    for dtype in ("float32", "bfloat16"):
        model = captioner.load(tiny_run, compute_dtype=dtype)
        setup = captioning.prepare_split_evaluation(model, "test")
        table = CaptionTable.build_uncut(setup.data.records, model.vocab, 20)
        values[dtype] = captioning.split_perplexity(
            model.model, setup.params, table, setup.data.inputs, setup.batch_size, setup.mesh
        )["perplexity"]
    assert values["float32"] != values["bfloat16"]  # the products really ran in bfloat16
    assert abs(values["bfloat16"] / values["float32"] - 1) < 0.01, values
    with pytest.raises(MrnnError, match="compute_dtype"):
        captioner.load(tiny_run, compute_dtype="float16")
