"""Every config value is checked when the config loads (mrnn_jax/configs/rules.py): one line
naming the key, the value and what is allowed; and every key of a built-in config has a rule."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from mrnn_jax import configs, decode, images
from mrnn_jax.configs import choices, rules
from mrnn_jax.data import shapes
from mrnn_jax.data.records import ImageRecord
from mrnn_jax.errors import MrnnError
from mrnn_jax.evaluation import captioning, coco_metrics, consensus
from mrnn_jax.text.vocab import build_vocab
from mrnn_jax.training import loop
from tests.conftest import subprocess_env

# --- every key has a rule ------------------------------------------------------------------


def _keys(node, prefix=""):
    for key, value in node.items():
        if hasattr(value, "items"):
            yield from _keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


@pytest.mark.parametrize("name", configs.BUILTIN)
def test_every_key_of_every_builtin_config_has_a_rule(name):
    config = configs.load_config(name)
    missing = [
        key
        for key in _keys({k: v for k, v in config.items() if k != "evaluators"})
        if rules.rule_for(key) is None
    ]
    for evaluator, entry in config.evaluators.items():
        missing += [
            f"evaluators.{evaluator}.{key}"
            for key in entry
            if rules.evaluator_rule(entry["kind"], key) is None
        ]
    assert not missing, f"keys without a rule in mrnn_jax/configs/rules.py: {missing}"


def test_every_evaluator_kind_has_rules_and_every_decoding_option_a_rule():
    assert tuple(rules.EVALUATOR_RULES) == choices.EVALUATOR_KINDS
    assert set(decode.FIELDS) <= set(rules.EVALUATOR_RULES["captions"])


def test_declared_names_match_the_modules_that_use_them():
    assert choices.SHAPES_SPLITS == shapes.SPLITS
    assert choices.RESIZE_MODES == images.RESIZE_MODES
    assert choices.STRATEGIES == decode.STRATEGIES
    assert choices.RERANK_FEATURES == consensus.FEATURES
    assert choices.RERANK_METRICS == consensus.METRICS
    assert tuple(m for m in choices.CAPTION_METRICS if m != "SPICE") == coco_metrics.METRICS
    scores = [s for names in choices.CAPTION_METRICS.values() for s in names]
    assert sorted(scores) == sorted(coco_metrics.SCORE_NAMES)
    assert captioning.PHRASE_ACCURACY == "largest object named"


@pytest.mark.parametrize(
    "spelling", ["BLEU", "bleu", "Rouge-L", "ROUGE", "rouge_l", "CIDEr-D", "cider", "METEOR", "x"]
)
def test_metric_spellings_are_those_the_scorer_accepts(spelling):
    try:
        expected = coco_metrics._normalise_metrics([spelling])[0]
    except MrnnError:
        expected = None
    assert rules.metric_name(spelling) == expected


# --- one line per bad value, when the config loads -----------------------------------------

BAD = [
    # (override, what the line must say)
    ("encoder.features_dim=0", "encoder.features_dim=0: must be an integer >= 1"),
    ("train.patience=-1", "train.patience=-1: must be an integer >= 0"),
    ("train.seed=-1", "train.seed=-1: must be an integer >= 0"),
    ("train.l2_weight=-1", "train.l2_weight=-1.0: must be a finite number >= 0"),
    ("train.l2_weight=1e999", "train.l2_weight=inf: must be a finite number >= 0"),
    ("train.final_learning_rate_fraction=-5", "final_learning_rate_fraction=-5.0: must be a"),
    ("train.final_learning_rate_fraction=2", "<= 1"),
    ("train.length_buckets=(0,)", "train.length_buckets=(0,): must be a tuple of integers >= 1"),
    ("train.length_buckets=(50,)", "train.length_buckets=(50,): each width must be between 1"),
    ("train.length_buckets=(9,2.5)", "train.length_buckets=(9, 2.5): must be a tuple"),
    ("eval.metrics=('NOPE',)", "eval.metrics=('NOPE',): must be a tuple of caption metrics"),
    ("eval.max_decode_words=0", "eval.max_decode_words=0"),
    ("train.select_by=val/nonsense", "train.select_by='val/nonsense': no enabled evaluator logs"),
    ("train.select_by=val/image R@1", "no enabled evaluator logs it"),  # retrieval is off
    ("train.select_by=dev/CIDEr-D", "no enabled evaluator logs under 'dev'"),
    ("evaluators.captions.metrics=('NOPE',)", "evaluators.captions.metrics=('NOPE',): must be"),
    ("evaluators.captions.strategy=sample", "choose from greedy, beam"),
    ("evaluators.captions.beam_size=0", "evaluators.captions.beam_size=0"),
    ("evaluators.captions.every=-2", "evaluators.captions.every=-2: must be an integer >= -1"),
    ("evaluators.captions.num_images=-1", "evaluators.captions.num_images=-1"),
    ("evaluators.captions.prefix=a/b", "must be a name without '/'"),
    ("evaluators.retrieval.num_images=-3", "evaluators.retrieval.num_images=-3"),
    ("dataset.shapes_sizes.val=0", "dataset.shapes_sizes.val=0: must be an integer >= 1"),
    ("dataset.shapes_sizes.test=-1", "dataset.shapes_sizes.test=-1: must be an integer >= 0"),
    ("dataset.min_count=0", "dataset.min_count=0: must be an integer >= 1"),
    ("dataset.max_words=0", "dataset.max_words=0"),
    ("dataset.seed=-1", "dataset.seed=-1"),
    ("dataset.on_bad_image=ignore", "choose from skip, error"),
    ("model.dropout_rate=1", "model.dropout_rate=1.0: must be a finite number >= 0 and < 1"),
    ("model.embed_dim=0", "model.embed_dim=0"),
    ("model.word_activation=gelu", "model.word_activation='gelu': choose from relu"),
    ("model.compute_dtype=float16", "choose from float32, bfloat16"),
    ("encoder.image_size=8", "encoder.image_size=8: must be >= 32"),
    ("encoder.channels=()", "encoder.channels=(): must be a non-empty tuple"),
    ("train.batch_size=0", "train.batch_size=0"),
    ("train.learning_rate=0", "train.learning_rate=0.0: must be a finite number > 0"),
    ("train.learning_rate=1e999", "train.learning_rate=inf"),
    ("train.grad_clip_norm=-1", "train.grad_clip_norm=-1.0"),
    ("train.warmup_steps=-1", "train.warmup_steps=-1"),
    ("train.max_checkpoints=0", "train.max_checkpoints=0"),
    ("train.on_nonfinite=ignore", "choose from skip, stop"),
    ("train.select_mode=up", "train.select_mode='up'"),
    ("rerank.num_neighbours=0", "rerank.num_neighbours=0"),
    ("rerank.num_references=-1", "rerank.num_references=-1"),
    ("rerank.metric=METEOR", "rerank.metric='METEOR': choose from CIDEr, BLEU"),
    ("rerank.features=pixels", "rerank.features='pixels'"),
    ("eval.splits=('test','')", "eval.splits=('test', ''): must be a tuple of split names"),
]


@pytest.mark.parametrize(("override", "message"), BAD, ids=[o for o, _ in BAD])
def test_a_bad_value_is_one_line_naming_it(override, message):
    with pytest.raises(MrnnError) as error:
        configs.load_config("tiny", [override])
    text = str(error.value)
    assert message in text
    assert "\n" not in text
    assert text.startswith(override.split("=")[0].rsplit(".", 1)[0])  # names the key first


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("default", ["encoder.learning_rate=0"], "encoder.learning_rate=0.0"),
        ("default", ["encoder.crop_fraction=1.5"], "encoder.crop_fraction=1.5"),
        ("default", ["encoder.pixel_order=RBG"], "encoder.pixel_order='RBG'"),
        ("default", ["encoder.pixel_mean=(1.0,2.0)"], "must be a tuple of 0 or 3 finite"),
        ("default", ["encoder.pixel_std=(1.0,0.0,1.0)"], "each > 0"),
        ("default", ["encoder.resize=stretch"], "choose from center_crop, squash"),
        ("default", ["encoder.features_dim=-4"], "encoder.features_dim=-4"),
        ("coco", ["train.select_by=val/largest object named"], "no enabled evaluator logs"),
        ("tiny", ["eval.splits=('dev',)"], "dataset.shapes_sizes.dev=0: must be an integer >= 1"),
        (
            "tiny",
            ["evaluators.retrieval.every=0", "evaluators.retrieval.split=novel"]
            + ["dataset.shapes_sizes.novel=0"],
            "dataset.shapes_sizes.novel=0",
        ),
    ],
)
def test_relations_and_other_configs_sections(name, overrides, message):
    with pytest.raises(MrnnError, match="^[^\n]*$") as error:
        configs.load_config(name, overrides)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.length_buckets=(20,)", "train.l2_weight=0", "train.patience=0"],
        ["train.final_learning_rate_fraction=1", "model.dropout_rate=0"],
        ["eval.metrics=bleu,rouge-l,CIDEr-D", "evaluators.captions.metrics=BLEU,SPICE"],
        ["train.select_by=val/BLEU-4", "train.select_by=val/nll_per_word"],
        ["evaluators.retrieval.every=0", "train.select_by=val/sentence R@5"],
        ["evaluators.captions.strategy=beam", "evaluators.captions.beam_size=1"],
        ["evaluators.perplexity.every=-1", "train.select_by=val/CIDEr-D"],
        ["dataset.shapes_sizes.novel=0", "eval.splits=test"],  # novel is not read
        ["evaluators.captions.every=-1", "eval.metrics=()", "train.length_buckets=()"],
    ],
)
def test_legal_values_load(overrides):
    configs.load_config("tiny", overrides)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"strategy": "beam", "num_return": 5}, "num_return=5: at most evaluators.captions.beam"),
        ({"num_return": 2}, "evaluators.captions.num_return=2: greedy decoding returns 1"),
        ({"rerank_metric": "BLEU"}, "rerank_metric='BLEU': needs evaluators.captions.rerank="),
        ({"rerank": "consensus", "rerank_metric": "METEOR"}, "rerank_metric='METEOR': choose"),
        ({"rerank": "mbr"}, "evaluators.captions.rerank='mbr': choose from none, consensus"),
        ({"temperature": 0.0}, "evaluators.captions.temperature=0.0: must be a finite number > 0"),
        ({"perplexity": 1}, "evaluators.captions.perplexity=1: must be true or false"),
    ],
)
def test_a_captions_evaluators_own_keys_are_checked(keys, message):
    config = configs.load_config("tiny")
    config.evaluators.captions.update(keys)
    with pytest.raises(MrnnError, match="^[^\n]*$") as error:
        configs.validate(config)
    assert message in str(error.value)


def test_an_evaluator_key_its_kind_does_not_have_is_refused():
    config = configs.load_config("tiny")
    config.evaluators.perplexity.beam_size = 3
    with pytest.raises(MrnnError, match="evaluators.perplexity.beam_size: a perplexity evaluator"):
        configs.validate(config)


def test_a_value_of_the_wrong_type_in_a_config_file_is_refused(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "from mrnn_jax.configs import tiny\n"
        "def get_config():\n"
        "    c = tiny.get_config()\n"
        "    del c.train['patience']\n"
        "    c.train.patience = '4'\n"
        "    return c\n"
    )
    with pytest.raises(MrnnError, match=r"^train.patience='4': must be an integer >= 0"):
        configs.load_config(str(path))


# --- the vocabulary warning ----------------------------------------------------------------


def _records(captions):
    return [
        ImageRecord(image_id=str(i), split="train", captions=(c,), tokens=(tuple(c.split()),))
        for i, c in enumerate(captions)
    ]


def test_a_vocabulary_min_count_made_tiny_is_one_warning_line(caplog):
    records = _records(["a red circle", "a blue square", "a red square"])
    vocab = build_vocab(records, min_count=3)
    with caplog.at_level(logging.WARNING, logger="mrnn_jax"):
        loop.warn_small_vocabulary(vocab, records, 3)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "vocabulary of 5 words" in lines[0] and "dataset.min_count=3" in lines[0]
    assert "4 of the 5 training words" in lines[0]


def test_a_small_closed_vocabulary_is_not_warned_about(caplog):
    records = _records(["a red circle", "a blue square"])
    with caplog.at_level(logging.WARNING, logger="mrnn_jax"):
        loop.warn_small_vocabulary(build_vocab(records, min_count=1), records, 1)
    assert not caplog.records


# --- the command as a user types it --------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "encoder.features_dim=0",
        "train.length_buckets=(50,)",
        "dataset.shapes_sizes.val=0",
    ],
)
def test_mrnn_train_refuses_a_bad_value_in_one_line(tmp_path, override):
    result = subprocess.run(
        [sys.executable, "-m", "mrnn_jax", "train", "--config", "tiny"]
        + ["--workdir", "runs/x", override],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"mrnn: error: {override.split('=')[0]}=")
    assert not os.path.exists(tmp_path / "runs")
