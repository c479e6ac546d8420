"""Configs: commented Python files with ``get_config()``, overridable as ``key.path=value``."""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import json
import os
from collections.abc import Iterable, Mapping, Sequence

from ml_collections import ConfigDict

from mrnn_jax.configs import rules
from mrnn_jax.configs.choices import EVALUATOR_KINDS, SELECT_MODES
from mrnn_jax.errors import MrnnError

BUILTIN = ("default", "shapes", "tiny", "flickr8k", "flickr30k", "coco", "iapr", "folder")

# Sections whose values fix the shape of the parameters (or the vocabulary): a checkpoint
# cannot be resumed under a config that changes them.
MODEL_SECTIONS = ("model", "encoder")


def load_config(name_or_path: str, overrides: Iterable[str] = ()) -> ConfigDict:
    """The config called ``name_or_path`` (built-in name or ``.py`` file) with overrides applied.

    Each override is ``section.key=value``; values are Python literals or bare strings, cast to
    the type of the value they replace. Unknown keys raise :class:`MrnnError`.
    """
    if name_or_path in BUILTIN:
        module = importlib.import_module(f"mrnn_jax.configs.{name_or_path}")
    elif name_or_path.endswith(".py") and os.path.isfile(name_or_path):
        spec = importlib.util.spec_from_file_location("mrnn_user_config", name_or_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        raise MrnnError(
            f"unknown config {name_or_path!r}: use one of {', '.join(BUILTIN)} or a .py file"
        )
    config = module.get_config()
    apply_overrides(config, overrides)
    validate(config)
    return config


def validate(config: ConfigDict) -> None:
    """Raises :class:`MrnnError` (one line: the key, the value, what is allowed) for a value no
    run could use: each value against its rule in :data:`rules.RULES`, each evaluator entry
    against its kind's, then the relations between values (:data:`rules.RELATIONS`)."""
    rules.check_values(config)
    selection(config.train)
    if "evaluators" in config:
        check_evaluators(config.evaluators)
    rules.check_relations(config)


def selection(train_config: ConfigDict) -> tuple[str, str]:
    """``(select_by, train.select_mode)``, checked: the scalar that picks the best
    checkpoint (``PREFIX/NAME``: ``train.select_by``, or ``train.scst.select_by`` when the
    objective is SCST) and one of :data:`~mrnn_jax.configs.choices.SELECT_MODES`
    (``mrnn_jax.training.selection.Selector`` is built from them)."""
    key = selection_key(train_config)
    metric = str(train_config.get("select_by", "val/perplexity"))
    if key == "train.scst.select_by":
        metric = str(train_config.scst.select_by)
    mode = str(train_config.get("select_mode", "auto"))
    if mode not in SELECT_MODES:
        raise MrnnError(f"train.select_mode={mode!r}: choose from {', '.join(SELECT_MODES)}")
    if "/" not in metric or not all(metric.split("/", 1)):
        raise MrnnError(
            f"{key}={metric!r} must name a logged scalar as PREFIX/NAME, "
            "e.g. val/perplexity or val/CIDEr-D"
        )
    return metric, mode


def selection_key(train_config: ConfigDict) -> str:
    """The config key that names the selection scalar under ``train.objective``."""
    if train_config.get("objective", "cross_entropy") == "scst":
        return "train.scst.select_by"
    return "train.select_by"


def check_evaluator(name: str, entry: Mapping, kinds: Sequence[str] = EVALUATOR_KINDS) -> None:
    """Raises :class:`MrnnError` for an evaluator entry no run could use (``kinds``: the
    evaluator kinds there are; ``mrnn_jax.evaluation.evaluators`` passes its registry's)."""
    kind = entry.get("kind")
    if kind not in kinds:
        raise MrnnError(f"evaluators.{name}.kind={kind!r}: choose from {', '.join(kinds)}")
    for key in ("split", "every", "num_images"):
        if key in entry or key == "split":
            rules.EVALUATOR_COMMON[key].check(f"evaluators.{name}.{key}", entry.get(key))


def check_evaluators(evaluators_config: ConfigDict, kinds: Sequence[str] = EVALUATOR_KINDS) -> None:
    """Raises :class:`MrnnError` for an entry of ``config.evaluators`` no run could use: its
    kind's keys only, each within its rule (during training, captions are greedy or beam
    search)."""
    for name, entry in evaluators_config.items():
        check_evaluator(name, entry, kinds)
        rules.check_evaluator_values(name, entry)


def _all_keys(config: ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        keys.append(path)
        if isinstance(value, ConfigDict):
            keys.extend(_all_keys(value, path + "."))
    return keys


def _parse_value(text: str, old: object, key: str) -> object:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a bare string such as relu
    if isinstance(old, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise MrnnError(f"config key {key!r} takes true or false, got {text!r}")
        return value
    if isinstance(old, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(old, float) and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(old, tuple | list):
        if isinstance(value, tuple | list):
            return tuple(value)
        if isinstance(value, str):  # test,novel
            return tuple(_parse_item(v) for v in value.split(",") if v.strip())
        return (value,)
    if isinstance(old, str) and not isinstance(value, str):
        return text
    if old is None or type(value) is type(old):
        return value
    raise MrnnError(f"config key {key!r} expects {type(old).__name__}, got {text!r}")


def _parse_item(text: str) -> object:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def apply_overrides(config: ConfigDict, overrides: Iterable[str]) -> ConfigDict:
    """Sets ``section.key=value`` overrides on ``config`` in place; returns it."""
    known = _all_keys(config)
    for item in overrides:
        if "=" not in item:
            raise MrnnError(f"config override {item!r} is not of the form key.path=value")
        key, text = item.split("=", 1)
        key = key.strip().removeprefix("--").removeprefix("config.")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise MrnnError(f"unknown config key {key!r}{hint}")
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        old = node[leaf]
        if isinstance(old, ConfigDict):
            raise MrnnError(f"config key {key!r} is a section; set one of its keys instead")
        node[leaf] = _parse_value(text.strip(), old, key)
    return config


def to_json(config: ConfigDict) -> dict:
    """The config as plain JSON data (tuples become lists)."""
    return json.loads(config.to_json())


def from_json(data: dict) -> ConfigDict:
    """A config from :func:`to_json`'s output, on top of the defaults (for old checkpoints)."""
    config = importlib.import_module("mrnn_jax.configs.default").get_config()
    _merge(config, data)
    return config


def _merge(config: ConfigDict, data: dict) -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in config or not isinstance(config[key], ConfigDict):
                config[key] = ConfigDict()
            _merge(config[key], value)
        else:
            config[key] = tuple(value) if isinstance(value, list) else value


# Values that define the data a run sees, or its order: resuming under other values would not
# continue the same run.
DATA_KEYS = ("train.seed", "train.batch_size", "train.captions_per_image", "train.length_buckets")

# What a run optimises: an SCST run cannot resume as a cross-entropy one, nor the reverse.
OBJECTIVE_KEYS = ("train.objective",)


def flatten(data: dict, prefix: str = "") -> dict[str, object]:
    """A nested JSON config as ``{"section.key": value}``."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# Where the data lies (not what it is): a resumed run may find it somewhere else.
DATA_PATH_KEYS = tuple(
    f"dataset.{key}"
    for key in (
        "data_dir",
        "features",
        "features_names",
        "karpathy_json",
        "train_list",
        "val_list",
        "test_list",
        "captions_file",
    )
) + ("encoder.weights",)


def _fixed_on_resume(key: str) -> bool:
    if key in DATA_PATH_KEYS:
        return False
    section = key.split(".", 1)[0]
    return section in (*MODEL_SECTIONS, "dataset") or key in DATA_KEYS + OBJECTIVE_KEYS


def resume_conflicts(saved: dict, new: dict) -> list[str]:
    """Differences that forbid resuming: the model's shape, the dataset, the data order."""
    a, b = flatten(saved), flatten(new)
    return [
        f"{key}: {a.get(key)!r} in the checkpoint, {b.get(key)!r} now"
        for key in sorted(set(a) | set(b))
        if _fixed_on_resume(key) and a.get(key) != b.get(key)
    ]


def other_differences(saved: dict, new: dict) -> list[str]:
    """Differences allowed on resume (schedule, logging, evaluation), as ``key: old -> new``."""
    a, b = flatten(saved), flatten(new)
    return [
        f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
        for key in sorted(set(a) | set(b))
        if not _fixed_on_resume(key) and a.get(key) != b.get(key)
    ]
