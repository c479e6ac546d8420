"""What every config value may be: one rule per key, and the relations between keys.

:data:`RULES` maps each dotted key (``*`` standing for any one name) to its :class:`Rule`,
:data:`EVALUATOR_RULES` each evaluator kind to the rules of its entry's keys (besides
:data:`EVALUATOR_COMMON`, every kind's), and :data:`RELATIONS` lists the checks that read
several keys. A new config key needs a row here: tests/test_config_validation.py fails for a
key of a built-in config that has no rule. A value that breaks a rule raises
:class:`~mrnn_jax.errors.MrnnError` with one line: the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from mrnn_jax.configs.choices import (
    ACTIVATIONS,
    CAPTION_METRICS,
    COMPUTE_DTYPES,
    DATASETS,
    ENCODERS,
    EVALUATOR_KINDS,
    OBJECTIVES,
    PIXEL_ORDERS,
    RERANK_FEATURES,
    RERANK_METRICS,
    RESIZE_MODES,
    REWARD_METRICS,
    SCST_BASELINES,
    SELECT_MODES,
    SHAPES_SPLITS,
    STRATEGIES,
)
from mrnn_jax.errors import MrnnError


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one config value may be.

    Attributes:
      allowed: what is allowed, in words (the error's text after the value).
      test: whether a value is allowed.
    """

    allowed: str
    test: Callable[[Any], bool]

    def check(self, key: str, value: Any) -> None:
        """Raises :class:`MrnnError` (one line) unless ``value`` is allowed at ``key``."""
        if not self.test(value):
            raise MrnnError(f"{key}={value!r}: {self.allowed}")


# --- rule makers ---------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _note(note: str) -> str:
    return f" ({note})" if note else ""


def integer(least: int, note: str = "") -> Rule:
    """An integer of at least ``least``."""
    return Rule(f"must be an integer >= {least}{_note(note)}", lambda v: _is_int(v) and v >= least)


def number(
    least: float | None = None,
    most: float | None = None,
    above: float | None = None,
    below: float | None = None,
    note: str = "",
) -> Rule:
    """A finite number (int or float) within the bounds given (``above``, ``below``:
    strictly)."""
    bounds = [f">= {least}"] * (least is not None) + [f"> {above}"] * (above is not None)
    bounds += [f"<= {most}"] * (most is not None) + [f"< {below}"] * (below is not None)

    def test(v: Any) -> bool:
        return (
            _is_number(v)
            and (least is None or v >= least)
            and (above is None or v > above)
            and (most is None or v <= most)
            and (below is None or v < below)
        )

    words = " and ".join(bounds)
    return Rule(f"must be a finite number{' ' + words if words else ''}{_note(note)}", test)


def choice(options: tuple[str, ...], note: str = "") -> Rule:
    """One of ``options``."""
    shown = ", ".join(o if o else repr(o) for o in options)
    return Rule(f"choose from {shown}{_note(note)}", lambda v: isinstance(v, str) and v in options)


def text(note: str = "") -> Rule:
    """Any string."""
    return Rule(f"must be a string{_note(note)}", lambda v: isinstance(v, str))


def name(note: str = "") -> Rule:
    """A non-empty string."""
    return Rule(f"must be a non-empty string{_note(note)}", lambda v: isinstance(v, str) and v)


def flag(note: str = "") -> Rule:
    """True or False."""
    return Rule(f"must be true or false{_note(note)}", lambda v: isinstance(v, bool))


def integers(least: int, nonempty: bool = False, note: str = "") -> Rule:
    """A tuple of integers of at least ``least`` (``nonempty``: one at least)."""
    what = "a non-empty tuple" if nonempty else "a tuple"

    def test(v: Any) -> bool:
        return (
            isinstance(v, tuple | list)
            and (bool(v) or not nonempty)
            and all(_is_int(x) and x >= least for x in v)
        )

    return Rule(f"must be {what} of integers >= {least}{_note(note)}", test)


def numbers(lengths: tuple[int, ...], above: float | None = None, note: str = "") -> Rule:
    """A tuple of ``lengths`` finite numbers (each above ``above`` when given)."""
    sizes = " or ".join(str(n) for n in lengths)

    def test(v: Any) -> bool:
        return (
            isinstance(v, tuple | list)
            and len(v) in lengths
            and all(_is_number(x) and (above is None or x > above) for x in v)
        )

    each = f", each > {above}" if above is not None else ""
    return Rule(f"must be a tuple of {sizes} finite numbers{each}{_note(note)}", test)


def optional(rule: Rule) -> Rule:
    """None, or what ``rule`` allows."""
    return Rule(f"{rule.allowed}, or None", lambda v: v is None or rule.test(v))


def metric_name(spelling: object) -> str | None:
    """The coco-caption metric (a key of :data:`CAPTION_METRICS`) ``spelling`` names, or None:
    case, "-", "_" and " " are ignored; ROUGE is ROUGE_L, CIDEr-D is CIDEr."""
    key = re.sub(r"[-_ ]", "", str(spelling)).upper()
    key = {"ROUGE": "ROUGEL", "CIDERD": "CIDER"}.get(key, key)
    return next((m for m in CAPTION_METRICS if m.replace("_", "").upper() == key), None)


def metric_names(none: bool = False) -> Rule:
    """A tuple of coco-caption metric names (``none``: or None, meaning all of them)."""
    known = ", ".join(CAPTION_METRICS)

    def test(v: Any) -> bool:
        if v is None:
            return none
        return isinstance(v, tuple | list) and all(metric_name(m) for m in v)

    return Rule(f"must be a tuple of caption metrics from {known}{', or None (all)' * none}", test)


def split_names() -> Rule:
    """A tuple of non-empty split names."""
    return Rule(
        "must be a tuple of split names, e.g. test,novel",
        lambda v: isinstance(v, tuple | list) and all(isinstance(s, str) and s for s in v),
    )


# --- the rules -----------------------------------------------------------------------------

_PATH = text("a path; '' = none")

#: Dotted key (``*``: any one name) -> its rule.
RULES: dict[str, Rule] = {
    "dataset.name": choice(DATASETS),
    "dataset.data_dir": _PATH,
    "dataset.features": _PATH,
    "dataset.features_names": _PATH,
    "dataset.karpathy_json": _PATH,
    "dataset.train_list": _PATH,
    "dataset.val_list": _PATH,
    "dataset.test_list": _PATH,
    "dataset.captions_file": _PATH,
    "dataset.merge_restval": flag(),
    "dataset.on_bad_image": choice(("skip", "error")),
    "dataset.min_count": integer(1, "words seen fewer times become <unk>"),
    "dataset.max_words": integer(1, "captions are cut to this many words"),
    "dataset.shapes_sizes.*": integer(0, "images in the split"),
    "dataset.seed": integer(0),
    "model.embed_dim": integer(1),
    "model.word_dim": integer(1),
    "model.multimodal_dim": integer(1),
    "model.word_activation": choice(ACTIVATIONS),
    "model.recurrent_activation": choice(ACTIVATIONS),
    "model.multimodal_activation": choice(ACTIVATIONS),
    "model.dropout_rate": number(least=0, below=1, note="the share of units dropped"),
    "model.zero_image": flag(),
    "model.compute_dtype": choice(COMPUTE_DTYPES),
    "encoder.name": choice(ENCODERS),
    "encoder.features_dim": integer(1, "the width of the image features"),
    "encoder.weights": _PATH,
    "encoder.feature": text("'' = the architecture's own"),
    "encoder.fine_tune_from": text("a layer name; '' = frozen"),
    "encoder.learning_rate": number(above=0),
    "encoder.image_size": integer(0, "pixels; 0 = the weights file's"),
    "encoder.resize": choice(RESIZE_MODES),
    "encoder.crop_fraction": number(least=0, most=1, note="0 = the weights file's"),
    "encoder.pixel_order": choice(PIXEL_ORDERS, "'' = the weights file's"),
    "encoder.pixel_scale": number(least=0, note="0 = the weights file's"),
    "encoder.pixel_mean": numbers((0, 3), note="() = the weights file's"),
    "encoder.pixel_std": numbers((0, 3), above=0, note="() = the weights file's"),
    "encoder.channels": integers(1, nonempty=True, note="the small CNN's blocks"),
    "train.seed": integer(0),
    "train.batch_size": integer(1),
    "train.captions_per_image": integer(1),
    "train.length_buckets": integers(1, note="widths in words, at most dataset.max_words"),
    "train.num_steps": integer(1),
    "train.learning_rate": number(above=0),
    "train.warmup_steps": integer(0),
    "train.final_learning_rate_fraction": number(least=0, most=1, note="of the peak rate"),
    "train.grad_clip_norm": number(above=0),
    "train.l2_weight": number(least=0),
    "train.device_data": flag(),
    "train.log_every": integer(1),
    "train.eval_every": integer(1),
    "train.checkpoint_every": integer(1),
    "train.patience": integer(0, "0 never stops early"),
    "train.max_checkpoints": integer(1),
    "train.on_nonfinite": choice(("skip", "stop")),
    "train.max_nonfinite_steps": integer(1),
    "train.select_by": name("a logged scalar as PREFIX/NAME, e.g. val/perplexity"),
    "train.select_mode": choice(SELECT_MODES),
    "train.objective": choice(OBJECTIVES),
    "train.init_from": text("a trained run or step folder; '' = none"),
    "train.scst.samples": integer(1, "captions sampled per image"),
    "train.scst.baseline": choice(SCST_BASELINES),
    "train.scst.reward": Rule(
        f"must be a tuple of reward metrics from {', '.join(REWARD_METRICS)}, each once",
        lambda v: (
            isinstance(v, tuple | list)
            and bool(v)
            and all(m in REWARD_METRICS for m in v)
            and len(set(v)) == len(v)
        ),
    ),
    "train.scst.reward_weights": Rule(
        "must be a tuple of finite numbers > 0",
        lambda v: isinstance(v, tuple | list) and all(_is_number(w) and w > 0 for w in v),
    ),
    "train.scst.learning_rate": number(above=0),
    "train.scst.max_words": integer(1, "words per sampled caption"),
    "train.scst.entropy_weight": number(least=0, note="0 = no entropy bonus"),
    "train.scst.select_by": name("a logged scalar as PREFIX/NAME, e.g. val/CIDEr-D"),
    "rerank.features": choice(RERANK_FEATURES),
    "rerank.num_neighbours": integer(1),
    "rerank.num_references": integer(0, "0 = the authors' value for the metric"),
    "rerank.num_hypotheses": integer(1),
    "rerank.metric": choice(RERANK_METRICS),
    "eval.batch_size": integer(1),
    "eval.splits": split_names(),
    "eval.metrics": metric_names(),
    "eval.max_decode_words": integer(1),
}

#: The keys of every evaluator entry (``evaluators.<name>.<key>``).
EVALUATOR_COMMON: dict[str, Rule] = {
    "kind": choice(EVALUATOR_KINDS),
    "split": name("the split it reads"),
    "prefix": Rule(
        "must be a name without '/' ('' = the split's name)",
        lambda v: isinstance(v, str) and "/" not in v,
    ),
    "every": integer(-1, "steps; 0 = every train.eval_every, -1 = never"),
    "num_images": integer(0, "0 = all"),
}

#: Evaluator kind -> the rules of its own keys.
EVALUATOR_RULES: dict[str, dict[str, Rule]] = {
    "perplexity": {},
    "captions": {
        "strategy": choice(tuple(s for s in STRATEGIES if s != "sample"), "during training"),
        "max_words": optional(integer(1)),
        "beam_size": optional(integer(1)),
        "num_return": optional(integer(1)),
        "temperature": optional(number(above=0)),
        "length_penalty": optional(number()),
        "seed": optional(integer(0)),
        "allow_unk": optional(flag()),
        "metrics": metric_names(none=True),
        "perplexity": flag(),
        "rerank": choice(("none", "consensus")),
        "rerank_metric": optional(choice(("", *RERANK_METRICS))),
        "rerank_features": optional(choice(("", *RERANK_FEATURES))),
        "rerank_hypotheses": optional(integer(1)),
    },
    "retrieval": {
        "prior_images": integer(0, "0 = P(S) over the split's images"),
        "fold_size": integer(0, "0 = one fold"),
        "sentence_tile": integer(1),
        "image_tile": integer(1),
    },
}


def rule_for(key: str) -> Rule | None:
    """The rule of the dotted ``key`` (an evaluator's key by its ``kind``), or None."""
    if key in RULES:
        return RULES[key]
    parent, _, leaf = key.rpartition(".")
    return RULES.get(f"{parent}.*")


def evaluator_rule(kind: str, key: str) -> Rule | None:
    """The rule of ``key`` in an evaluator entry of ``kind``, or None."""
    return EVALUATOR_COMMON.get(key) or EVALUATOR_RULES.get(kind, {}).get(key)


def _items(node: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in node.items():
        if hasattr(value, "items"):  # a section: a dict or a ConfigDict
            yield from _items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def check_values(config: Mapping) -> None:
    """Raises :class:`MrnnError` for the first value of ``config`` outside its rule (keys of
    ``evaluators`` are checked by :func:`check_evaluator_values`; keys without a rule, in a
    user's own config, are left alone)."""
    for key, value in _items({k: v for k, v in config.items() if k != "evaluators"}):
        rule = rule_for(key)
        if rule is not None:
            rule.check(key, value)


def check_evaluator_values(name: str, entry: Mapping) -> None:
    """Raises :class:`MrnnError` for a key of evaluator entry ``name`` its kind does not have
    or a value outside its rule (its ``kind`` is checked first)."""
    EVALUATOR_COMMON["kind"].check(f"evaluators.{name}.kind", entry.get("kind"))
    kind = entry["kind"]
    for key, value in entry.items():
        rule = evaluator_rule(kind, key)
        if rule is None:
            keys = ", ".join([*EVALUATOR_COMMON, *EVALUATOR_RULES[kind]])
            raise MrnnError(f"evaluators.{name}.{key}: a {kind} evaluator has no such key ({keys})")
        rule.check(f"evaluators.{name}.{key}", value)


# --- relations between values --------------------------------------------------------------


def _enabled(config: Mapping) -> dict[str, Mapping]:
    return {
        name: entry
        for name, entry in config.get("evaluators", {}).items()
        if int(entry.get("every", 0)) >= 0
    }


def splits_read(config: Mapping) -> set[str]:
    """The splits a training run reads: train, val, eval.splits and the enabled evaluators'."""
    evaluated = {str(entry["split"]) for entry in _enabled(config).values()}
    return {"train", "val", *config["eval"]["splits"], *evaluated}


def logged_scalars(entry: Mapping, dataset: str) -> tuple[str, ...]:
    """The scalar names (without prefix) an evaluator entry logs during training on
    ``dataset`` (a value that cannot be computed, e.g. METEOR without Java, is not logged)."""
    kind = entry["kind"]
    if kind == "perplexity":
        return ("perplexity", "nll_per_word", "num_words")
    if kind == "retrieval":
        return tuple(
            f"{direction} {key}"
            for direction in ("image", "sentence")
            for key in ("R@1", "R@5", "R@10", "median rank")
        )
    metrics = entry.get("metrics", ("BLEU", "ROUGE_L", "CIDEr"))
    chosen = {metric_name(m) for m in (CAPTION_METRICS if metrics is None else metrics)}
    names = [
        score for metric in CAPTION_METRICS if metric in chosen for score in CAPTION_METRICS[metric]
    ]
    if entry.get("perplexity", False):
        names.insert(0, "perplexity")
    if dataset == "shapes":
        names.append("largest object named")
    return tuple(names)


def buckets_within_max_words(config: Mapping) -> None:
    """Each of train.length_buckets is at most dataset.max_words."""
    buckets, most = tuple(config["train"]["length_buckets"]), config["dataset"]["max_words"]
    if any(width > most for width in buckets):
        raise MrnnError(
            f"train.length_buckets={buckets!r}: each width must be between 1 and "
            f"dataset.max_words={most} (captions are cut to it)"
        )


def shapes_splits_not_empty(config: Mapping) -> None:
    """The shapes dataset has each split a run reads, with at least one image."""
    if config["dataset"]["name"] != "shapes":
        return
    sizes = config["dataset"]["shapes_sizes"]
    for split in sizes:
        if split not in SHAPES_SPLITS:
            raise MrnnError(
                f"dataset.shapes_sizes.{split}: the shapes dataset has splits "
                f"{', '.join(SHAPES_SPLITS)}"
            )
    for split in sorted(splits_read(config)):
        if not sizes.get(split, 0):
            raise MrnnError(
                f"dataset.shapes_sizes.{split}={sizes.get(split, 0)!r}: must be an integer >= 1 "
                f"(the run reads split {split!r}: training, eval.splits or an enabled evaluator)"
            )


def select_by_is_logged(config: Mapping) -> None:
    """train.select_by (train.scst.select_by under SCST) names a scalar that an enabled
    evaluator logs."""
    key = "train.select_by"
    metric = str(config["train"]["select_by"])
    if config["train"].get("objective") == "scst":
        key, metric = "train.scst.select_by", str(config["train"]["scst"]["select_by"])
    prefix, _, scalar = metric.partition("/")
    logged: dict[str, list[str]] = {}
    for entry in _enabled(config).values():
        under = str(entry.get("prefix", "") or entry["split"])
        logged.setdefault(under, []).extend(logged_scalars(entry, config["dataset"]["name"]))
    if prefix not in logged:
        listed = ", ".join(f"{p}/" for p in logged) or "none enabled"
        raise MrnnError(
            f"{key}={metric!r}: no enabled evaluator logs under {prefix!r} "
            f"(the enabled evaluators log under {listed})"
        )
    if scalar not in logged[prefix]:
        raise MrnnError(
            f"{key}={metric!r}: no enabled evaluator logs it; under {prefix}/ they "
            f"log {', '.join(f'{prefix}/{s}' for s in dict.fromkeys(logged[prefix]))}"
        )


def captions_decoding(config: Mapping) -> None:
    """Each captions evaluator's decoding and reranking keys fit together."""
    for name, entry in config.get("evaluators", {}).items():
        if entry["kind"] != "captions":
            continue
        key = f"evaluators.{name}"
        strategy = entry.get("strategy") or "greedy"
        beams = entry.get("beam_size") or 3
        returned = entry.get("num_return") or 1
        if strategy == "greedy" and returned != 1:
            raise MrnnError(f"{key}.num_return={returned!r}: greedy decoding returns 1 caption")
        if strategy == "beam" and returned > beams:
            raise MrnnError(
                f"{key}.num_return={returned!r}: at most {key}.beam_size={beams} (beam search)"
            )
        if (entry.get("rerank") or "none") == "none":
            for other in ("rerank_metric", "rerank_features", "rerank_hypotheses"):
                if entry.get(other):
                    raise MrnnError(
                        f"{key}.{other}={entry[other]!r}: needs {key}.rerank='consensus'"
                    )


def image_size_fits_encoder(config: Mapping) -> None:
    """A small CNN reads images of at least 2 ** blocks pixels (each block halves them), and
    the shapes dataset draws images of at least 32 pixels."""
    encoder = config["encoder"]
    if encoder["name"] != "small_cnn":
        return
    size, blocks = encoder.get("image_size", 64), len(encoder.get("channels", (0,) * 4))
    least = max(2**blocks, 32 if config["dataset"]["name"] == "shapes" else 1)
    if size < least:
        raise MrnnError(
            f"encoder.image_size={size!r}: must be >= {least} for the small CNN's "
            f"{blocks} blocks{' on shapes images' if least == 32 else ''}"
        )


def scst_settings_fit(config: Mapping) -> None:
    """SCST's mean baseline has other samples to average (2 or more per image), and its
    reward has one weight per metric."""
    scst = config["train"].get("scst")
    if scst is None:
        return
    if scst["baseline"] == "mean" and scst["samples"] < 2:
        raise MrnnError(
            f"train.scst.samples={scst['samples']!r}: must be an integer >= 2 (the mean "
            "baseline is of the image's other samples; train.scst.baseline=greedy takes 1)"
        )
    reward, weights = tuple(scst["reward"]), tuple(scst["reward_weights"])
    if len(weights) != len(reward):
        raise MrnnError(
            f"train.scst.reward_weights={weights!r}: one weight per metric of "
            f"train.scst.reward={reward!r}"
        )


#: The checks between values, run after every value passed its own rule.
RELATIONS: tuple[Callable[[Mapping], None], ...] = (
    buckets_within_max_words,
    shapes_splits_not_empty,
    select_by_is_logged,
    captions_decoding,
    image_size_fits_encoder,
    scst_settings_fit,
)


def check_relations(config: Mapping) -> None:
    """Raises :class:`MrnnError` for the first relation of :data:`RELATIONS` that fails."""
    for relation in RELATIONS:
        relation(config)
