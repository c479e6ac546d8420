"""What a run does when a training step's loss or gradients are not finite (NaN or Inf).

The training step itself checks one reduction (the loss and the gradients' global norm) and,
on a non-finite value, leaves the parameters and the optimiser state as they were (the update
is skipped; see :func:`mrnn_jax.training.step.make_train_step`). The host reads those flags
whenever it logs, validates or saves, and applies the config's policy: ``train.on_nonfinite="skip"``
counts skipped steps and stops the run after ``train.max_nonfinite_steps`` in a row;
``"stop"`` stops at the first one. Either way no non-finite parameter reaches a checkpoint,
so the last checkpoint is the last finite state, and a rerun with a lower learning rate
resumes from it.
"""

from __future__ import annotations

import dataclasses
import logging

from ml_collections import ConfigDict

from mrnn_jax.errors import MrnnError

log = logging.getLogger("mrnn_jax")

POLICIES = ("skip", "stop")


@dataclasses.dataclass
class NonFiniteGuard:
    """Counts skipped (non-finite) steps and stops the run when the policy says so."""

    policy: str = "skip"
    limit: int = 10
    learning_rate: float = 0.0
    skipped: int = 0  # in the whole run
    in_a_row: int = 0  # ending at the last step seen

    @classmethod
    def from_config(cls, train_config: ConfigDict, saved: dict | None = None) -> NonFiniteGuard:
        """The guard of ``train_config``'s policy, with the counts of a resumed checkpoint."""
        saved = saved or {}
        return cls(
            policy=train_config.get("on_nonfinite", "skip"),
            limit=int(train_config.get("max_nonfinite_steps", 10)),
            learning_rate=float(train_config.learning_rate),
            skipped=int(saved.get("skipped", 0)),
            in_a_row=int(saved.get("in_a_row", 0)),
        )

    def to_json(self) -> dict:
        """The counts, for a checkpoint's metadata."""
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def check(self, flags: list[tuple[int, bool]], last_saved: int | None) -> None:
        """Takes the ``(step, finite)`` flags of the steps run since the last call (in
        order); raises :class:`MrnnError` when the run must stop."""
        bad = []
        for step, finite in flags:
            if finite:
                self.in_a_row = 0
                continue
            self.skipped += 1
            self.in_a_row += 1
            bad.append(step)
            limit = 1 if self.policy == "stop" else self.limit
            if self.in_a_row >= limit:
                where = (
                    f"the last checkpoint (step {last_saved}) holds the last finite "
                    "parameters: run again with a lower train.learning_rate (now "
                    f"{self.learning_rate:g}) to resume from it"
                    if last_saved is not None
                    else "no checkpoint was saved: run again with a lower "
                    f"train.learning_rate (now {self.learning_rate:g}) to start over"
                )
                what = (
                    "not finite"
                    if self.policy == "stop"
                    else f"not finite for {self.in_a_row} steps in a row"
                )
                raise MrnnError(
                    f"step {step}: the loss or the gradients are {what} (train.on_nonfinite="
                    f"{self.policy}, train.max_nonfinite_steps={self.limit}); {where}"
                )
        if bad:
            log.warning(
                "step%s %s: loss or gradients not finite, update skipped (%d in a row, %d in all)",
                "s" if len(bad) > 1 else "",
                ", ".join(str(s) for s in bad),
                self.in_a_row,
                self.skipped,
            )
