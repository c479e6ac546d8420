"""Many processes (hosts): starting ``jax.distributed``, and who writes files.

One process per host (or per GPU); together they see every device, the mesh spans them all,
and each process feeds its own part of each global batch. Only process 0 writes logs,
reports and results; all of them take part in orbax checkpoints.
"""

from __future__ import annotations

import logging

import jax

log = logging.getLogger("mrnn_jax")


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> None:
    """Joins a multi-process run: explicitly (``coordinator`` = ``host:port`` of process 0,
    the number of processes and this one's id) or, with ``auto``, from the cluster's
    environment (SLURM, Open MPI, Cloud TPU pods: ``jax.distributed.initialize()``'s own
    detection). Does nothing when neither is asked for. On CPUs, collectives go over gloo.
    Must run before anything touches a device."""
    if coordinator is None and not auto:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    log.info(
        "process %d of %d: %d local device(s), %d in all",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def is_primary() -> bool:
    """Whether this is process 0, the one that writes logs, reports and results."""
    return jax.process_index() == 0
