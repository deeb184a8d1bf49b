"""The train step: a pure function (state, batch) -> (state, metrics).

Both NaN policies keep the state finite: a step whose loss or gradient norm is not
finite applies no update and is counted in `nonfinite_count` (the loop decides whether
to stop). Jitting it with shardings and donation is `promethios_jax.aot`'s job.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from promethios_jax import accum, trainable
from promethios_jax.data import batch as batch_lib
from promethios_jax.model import loss as loss_lib
from promethios_jax.state import TrainSetup


def make_train_step(config, setup: TrainSetup):
    graphdef, tx, schedule = setup.graphdef, setup.tx, setup.schedule
    n_micro = config.train.grad_accum_steps
    micro_sh = batch_lib.micro_shardings(config, setup.mesh, n_micro) if n_micro > 1 else None

    mask = setup.trainable

    def micro_loss(train_params, frozen_params, mb, counts):
        model = nnx.merge(graphdef, trainable.join(train_params, frozen_params))
        with jax.sharding.use_abstract_mesh(setup.mesh.abstract_mesh):  # the cuDNN path pins q/k/v to it
            out = model(mb["tokens"], telemetry=mb["telemetry"], segment_ids=mb["segment_ids"],
                        positions=mb["positions"], head_positions=mb["head_positions"])
        return loss_lib.combine(loss_lib.loss_sums(out, mb), counts, config.loss, model, num_micro=n_micro)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def train_step(state, batch):
        params = state["params"]
        counts = loss_lib.loss_counts(batch)  # over the whole global batch
        # Gradients (and their accumulation buffers) of the trainable parameters only
        # (config.train.trainable): a frozen base costs no gradient memory.
        train_params, frozen_params = trainable.split(params, mask)
        (loss, parts), grads = accum.accumulate(lambda p, mb: grad_fn(p, frozen_params, mb, counts), train_params,
                                                batch, n_micro, micro_sh)
        grad_norm = optax.global_norm(grads)
        # The masked optimizer ignores the frozen leaves' values: zeros that are never computed.
        grads = trainable.join(grads, jax.tree.map(jnp.zeros_like, frozen_params))
        updates, new_opt = tx.update(grads, state["opt_state"], params)
        new_params = trainable.apply_updates(params, updates, mask)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        new_params = keep(new_params, params)
        new_opt = keep(new_opt, state["opt_state"])
        step = state["step"]
        new_state = {
            "step": step + 1,
            "params": new_params,
            "opt_state": new_opt,
            "nonfinite_count": state["nonfinite_count"] + (~finite).astype(jnp.int32),
            "first_nonfinite_step": jnp.where((state["first_nonfinite_step"] < 0) & ~finite,
                                              step + 1, state["first_nonfinite_step"]),
        }
        metrics = {
            "loss": loss,
            **{f"loss_{k}": v for k, v in parts.items()},
            "grad_norm": grad_norm,
            "param_norm": optax.global_norm(new_params),
            "learning_rate": schedule(step),
            "finite": finite.astype(jnp.float32),
        }
        return new_state, metrics

    return train_step
