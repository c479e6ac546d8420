"""The device mesh: batches split over a ``data`` axis, parameters replicated.

``jax.jit`` over a mesh does what ``jax.pmap`` did (pmap is in maintenance mode since JAX 0.8);
a machine with one device is a mesh of one.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mrnn_jax.errors import MrnnError

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (all of them by default)."""
    devices = jax.devices()
    count = len(devices) if num_devices is None else num_devices
    if not 1 <= count <= len(devices):
        raise MrnnError(f"asked for {count} devices; this process sees {len(devices)}")
    return jax.make_mesh(
        (count,),
        (DATA_AXIS,),
        axis_types=(jax.sharding.AxisType.Auto,),
        devices=devices[:count],
    )


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the mesh."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    """Raises a clear error unless ``batch_size`` splits evenly over the mesh."""
    if batch_size % mesh.size:
        raise MrnnError(
            f"{what}={batch_size} does not split evenly over {mesh.size} devices; "
            f"use a multiple of {mesh.size}"
        )


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Places a host batch on the mesh, split along its leading axis."""
    return jax.device_put(batch, data_sharding(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree (parameters, optimiser state) on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
