"""Mesh construction and the logical-axis rules that map parameter axes onto it.

Parameters and batch fields name logical axes only (`embed`, `mlp`, `heads`, `batch`,
`length`, ...); this module alone turns those names into mesh PartitionSpecs, from the
table in `config.sharding.rules`. The batch's axes are declared in data/batch.py.
"""
from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from promethios_jax.config import MESH_AXES, resolve_mesh_shape, rules_as_tuples

log = logging.getLogger(__name__)


def make_mesh(config, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = resolve_mesh_shape(config.mesh, len(devices))
    # Auto axes: classic GSPMD propagation (the default explicit axes change how
    # gathers and other indexing ops shard).
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def logical_to_mesh(logical: tuple, rules, shape=None, mesh: Mesh | None = None) -> P:
    """Maps a tuple of logical axis names to a PartitionSpec.

    A mesh axis is used at most once per array, and a dimension that the mesh axes do
    not divide stays replicated rather than failing at device_put.
    """
    table = dict(rules_as_tuples(rules))
    used: set[str] = set()
    out = []
    for dim, name in enumerate(logical):
        axes = table.get(name) if name is not None else None
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no entry in config.sharding.rules")
        if axes is None:
            out.append(None)
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(a for a in axes if a not in used)
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape[a] > 1)
            if shape is not None and axes:
                size = int(np.prod([mesh.shape[a] for a in axes]))
                if shape[dim] % size:
                    log.debug("dim %d of %s (size %d) not divisible by %s; replicated", dim, logical, shape[dim], axes)
                    axes = ()
        used.update(axes)
        out.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
    return P(*out)


def _is_spec(x):
    return isinstance(x, P)


def param_specs(abstract_params, logical_specs, rules, mesh: Mesh):
    """PartitionSpecs for a params tree, from its logical specs (nnx.get_partition_spec)."""
    return jax.tree.map(
        lambda a, spec: logical_to_mesh(tuple(spec), rules, a.shape, mesh),
        abstract_params, logical_specs, is_leaf=lambda x: _is_spec(x))


def to_named(specs, mesh: Mesh):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=_is_spec)


def micro_batch_spec(spec: P) -> P:
    """A batch array's spec with a leading, unsharded micro-batch axis (gradient accumulation)."""
    return P(None, *spec)


def host_local_to_global(batch: dict, shardings: dict) -> dict:
    """Places each process's slice of the global batch on the mesh, each array with its
    sharding (data.batch.shardings)."""
    out = {}
    for k, v in batch.items():
        if jax.process_count() == 1:
            out[k] = jax.device_put(v, shardings[k])
        else:
            out[k] = jax.make_array_from_process_local_data(shardings[k], v)
    return out
