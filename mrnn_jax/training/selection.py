"""Model selection: which logged scalar picks the best checkpoint, and which way is better.

``train.select_by`` names one scalar an evaluator logs, as ``"<prefix>/<name>"`` (for example
``"val/perplexity"``, the default, or ``"val/CIDEr-D"``). The :class:`Selector` built from it
is the single place that reads that scalar and compares two values of it: checkpoint
selection uses it, and so does early stopping.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from ml_collections import ConfigDict

from mrnn_jax import configs

# Scalars where lower is better; every other scalar (BLEU, CIDEr-D, R@K, ...) is maximised.
_LOWER_IS_BETTER = ("perplexity", "nll", "loss", "rank")


@dataclasses.dataclass(frozen=True)
class Selector:
    """The selection scalar ``metric`` (``"<prefix>/<name>"``) and whether it is maximised.

    Attributes:
      metric: the scalar's full name, e.g. ``"val/CIDEr-D"``.
      maximise: True when a larger value is better.
      key: the config key that names it (``train.select_by``, or ``train.scst.select_by``).
    """

    metric: str
    maximise: bool
    key: str = "train.select_by"

    @classmethod
    def from_config(cls, train_config: ConfigDict) -> Selector:
        """The selector of ``train.select_by`` / ``train.select_mode`` ("auto" infers the
        direction from the name: perplexity, NLL, loss and ranks are minimised)."""
        metric, mode = configs.selection(train_config)
        if mode == "auto":
            name = metric.split("/", 1)[1].lower()
            maximise = not any(word in name for word in _LOWER_IS_BETTER)
        else:
            maximise = mode == "max"
        return cls(metric=metric, maximise=maximise, key=configs.selection_key(train_config))

    @property
    def prefix(self) -> str:
        """The evaluator prefix the scalar is logged under (``"val"`` of ``"val/CIDEr-D"``)."""
        return self.metric.split("/", 1)[0]

    @property
    def name(self) -> str:
        """The scalar's name within its prefix (``"CIDEr-D"`` of ``"val/CIDEr-D"``)."""
        return self.metric.split("/", 1)[1]

    @property
    def mode(self) -> str:
        """``"max"`` or ``"min"``."""
        return "max" if self.maximise else "min"

    @property
    def worst(self) -> float:
        """A value every finite value beats (the start of a run)."""
        return -math.inf if self.maximise else math.inf

    def read(self, scalars: Mapping[str, float]) -> float | None:
        """The selection scalar out of ``{"prefix/name": value}``; None when not logged."""
        value = scalars.get(self.metric)
        return None if value is None else float(value)

    def better(self, new: float | None, old: float | None) -> bool:
        """Whether ``new`` beats ``old``. A missing or non-finite ``new`` never does; any
        finite value beats a missing or non-finite ``old``. Ties are not better."""
        if new is None or not math.isfinite(new):
            return False
        if old is None or not math.isfinite(old):
            return True
        return new > old if self.maximise else new < old

    def describe(self) -> dict:
        """What results.json records about the selection: metric and mode."""
        return {"metric": self.metric, "mode": self.mode}
