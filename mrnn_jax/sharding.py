"""The device mesh: batches split over a ``data`` axis, parameters replicated.

``jax.jit`` over a mesh does what ``jax.pmap`` did (pmap is in maintenance mode since JAX 0.8);
a machine with one device is a mesh of one.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mrnn_jax.errors import MrnnError

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (all of them, of every process, by
    default), ordered by process so that each process's devices hold consecutive rows."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    count = len(devices) if num_devices is None else num_devices
    if not 1 <= count <= len(devices):
        raise MrnnError(f"asked for {count} devices; this process sees {len(devices)}")
    if count != len(devices) and jax.process_count() > 1:
        raise MrnnError("--devices cannot be used with several processes: all devices take part")
    # Mesh, not jax.make_mesh: the latter may reorder devices by topology (TPU rings),
    # which would interleave processes along the batch axis.
    return Mesh(np.asarray(devices[:count]), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


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
    """Places a global host batch (the same on every process) on the mesh, split along its
    leading axis; each process transfers only the rows its devices hold."""
    if jax.process_count() == 1:
        return jax.device_put(batch, data_sharding(mesh))
    return _from_host(batch, data_sharding(mesh))


def shard_local_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Places this process's part of a global batch (its consecutive share of the rows, as
    :func:`mrnn_jax.data.pipeline.train_batch` gives it) on the mesh."""
    if jax.process_count() == 1:
        return jax.device_put(batch, data_sharding(mesh))
    sharding = data_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree (parameters, optimiser state) on every device of the mesh."""
    if jax.process_count() == 1:
        return jax.device_put(tree, replicated(mesh))
    return _from_host(tree, replicated(mesh))


def _from_host(tree: Any, sharding: NamedSharding) -> Any:
    """Places host values that every process holds whole; each process transfers only the
    pieces its own devices keep."""

    def place(x):
        value = np.asarray(x)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(place, tree)


def to_host(tree: Any) -> Any:
    """NumPy copies of (possibly sharded or replicated, many-process) arrays, whole."""

    def fetch(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(fetch, tree)
