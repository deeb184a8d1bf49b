"""The train state: optimizer, abstract state with shardings, and its init.

What train, checkpoint loading, interop, the benchmarks and eval all need, so that none
of them imports the train loop. The state itself is a plain dict (its keys are the
checkpoint format, docs/interfaces.md):

    {"step", "params", "opt_state", "nonfinite_count", "first_nonfinite_step"}

with `params` the pure dict of `nnx.split(model, nnx.Param)`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from promethios_jax import sharding
from promethios_jax.model import GovernanceTransformer

STATE_KEYS = ("step", "params", "opt_state", "nonfinite_count", "first_nonfinite_step")


def _is_spec(x) -> bool:
    return isinstance(x, PartitionSpec)


def make_optimizer(config, logical_specs):
    """(tx, schedule): AdamW under warmup + cosine decay, clipped by global norm."""
    t = config.train
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=t.learning_rate, warmup_steps=max(1, t.warmup_steps),
        decay_steps=max(t.steps, t.warmup_steps + 1), end_value=t.learning_rate * t.min_lr_ratio)
    # Decay matrices only: norms, gains and per-layer vectors stay undecayed.
    decay_mask = jax.tree.map(lambda spec: len([a for a in spec if a != "layers"]) >= 2, logical_specs,
                              is_leaf=_is_spec)
    tx = optax.chain(
        optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity(),
        optax.adamw(schedule, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay, mask=decay_mask),
    )
    return tx, schedule


def _model_factory(config) -> Callable[[], GovernanceTransformer]:
    return lambda: GovernanceTransformer(config.model, rngs=nnx.Rngs(config.train.seed))


@dataclasses.dataclass(frozen=True)
class AbstractParams:
    """The params of a config's model on a mesh, nothing allocated."""
    graphdef: Any
    shapes: dict  # ShapeDtypeStructs with shardings
    shardings: dict  # NamedShardings
    logical: dict  # logical PartitionSpecs (axis names, before the rules)


def abstract_params(config, mesh: Mesh) -> AbstractParams:
    graphdef, abs_state = nnx.split(nnx.eval_shape(_model_factory(config)), nnx.Param)
    shapes = nnx.to_pure_dict(abs_state)
    logical = nnx.to_pure_dict(nnx.get_partition_spec(abs_state))
    shardings = sharding.to_named(sharding.param_specs(shapes, logical, config.sharding.rules, mesh), mesh)
    placed = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)
    return AbstractParams(graphdef, placed, shardings, logical)


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """Everything the step, init and restore need, derived from (config, mesh)."""
    abstract: dict  # the state as ShapeDtypeStructs with shardings
    shardings: dict
    graphdef: Any
    tx: optax.GradientTransformation
    schedule: Callable
    init: Callable[[], dict]  # builds the initial state; jit it with out_shardings=shardings
    mesh: Mesh

    @property
    def param_count(self) -> int:
        return param_count(self.abstract)


def abstract_train_state(config, mesh: Mesh) -> TrainSetup:
    params = abstract_params(config, mesh)
    tx, schedule = make_optimizer(config, params.logical)
    abs_opt = jax.eval_shape(tx.init, params.shapes)
    pspecs = jax.tree.map(lambda s: s.spec, params.shardings)
    # Optimizer moments are sharded like their parameters (ZeRO-3 / FSDP).
    ospecs = optax.tree_utils.tree_map_params(
        tx, lambda _, spec: spec, abs_opt, pspecs,
        transform_non_params=lambda _: PartitionSpec(), is_leaf=_is_spec)
    rep = sharding.to_named(PartitionSpec(), mesh)
    shardings = {"step": rep, "params": params.shardings, "opt_state": sharding.to_named(ospecs, mesh),
                 "nonfinite_count": rep, "first_nonfinite_step": rep}
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
    abstract = {
        "step": scalar,
        "params": params.shapes,
        "opt_state": jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abs_opt, shardings["opt_state"]),
        "nonfinite_count": scalar,
        "first_nonfinite_step": scalar,
    }
    make_model = _model_factory(config)

    def init():
        p = nnx.to_pure_dict(nnx.split(make_model(), nnx.Param)[1])
        return {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p),
                "nonfinite_count": jnp.zeros((), jnp.int32), "first_nonfinite_step": jnp.full((), -1, jnp.int32)}

    return TrainSetup(abstract, shardings, params.graphdef, tx, schedule, init, mesh)


def param_count(abstract_state: dict) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_state["params"])))
