"""The best evaluation so far, and early stopping on it: one scalar picks both.

Training keeps the checkpoint with the best value of one logged scalar (validation
perplexity, minimised, unless the config says otherwise) and stops after ``patience``
evaluations in a row without improving it. :class:`BestSoFar` is an immutable record of that
watch; :meth:`BestSoFar.observe` returns the next one, so the training loop can store it in a
checkpoint and a resumed run continues the count exactly.
"""

from __future__ import annotations

import dataclasses
import math

MODES = ("min", "max")


@dataclasses.dataclass(frozen=True)
class BestSoFar:
    """The best value of the watched scalar, where it was, and how long ago.

    Attributes:
      mode: ``"min"`` (lower is better, e.g. perplexity) or ``"max"`` (e.g. BLEU).
      patience: evaluations in a row without improvement after which training stops;
        0 never stops.
      best: the best value seen (``inf`` / ``-inf`` before the first evaluation).
      best_step: the step of that value (-1 before the first).
      stale: evaluations since the best one (0 right after an improvement).
      improved: whether the last observation was a new best.
    """

    mode: str = "min"
    patience: int = 0
    best: float = math.inf
    best_step: int = -1
    stale: int = 0
    improved: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: choose from {MODES}")
        if self.patience < 0:
            raise ValueError(f"patience={self.patience} must be 0 (never stop) or more")

    @classmethod
    def start(cls, mode: str = "min", patience: int = 0) -> BestSoFar:
        """The watch before any evaluation."""
        return cls(mode=mode, patience=patience, best=math.inf if mode == "min" else -math.inf)

    def is_better(self, value: float) -> bool:
        """Whether ``value`` beats the best so far (a non-finite value never does)."""
        if not math.isfinite(value):
            return False
        return value < self.best if self.mode == "min" else value > self.best

    def observe(self, step: int, value: float) -> BestSoFar:
        """The watch after an evaluation at ``step`` gave ``value``."""
        if self.is_better(value):
            return dataclasses.replace(
                self, best=float(value), best_step=int(step), stale=0, improved=True
            )
        return dataclasses.replace(self, stale=self.stale + 1, improved=False)

    @property
    def should_stop(self) -> bool:
        """Whether ``patience`` evaluations in a row have not improved on the best."""
        return self.patience > 0 and self.best_step >= 0 and self.stale >= self.patience

    def to_json(self) -> dict:
        """What a checkpoint stores to resume the watch (mode and patience come from the
        config, so that a resumed run may change its patience)."""
        return {"best": self.best, "best_step": self.best_step, "stale": self.stale}

    def resumed(self, saved: dict) -> BestSoFar:
        """This watch (mode and patience) continuing from a checkpoint's :meth:`to_json`."""
        return dataclasses.replace(
            self,
            best=float(saved["best"]),
            best_step=int(saved["best_step"]),
            stale=int(saved["stale"]),
            improved=False,
        )
