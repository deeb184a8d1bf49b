"""The serving engine's device work alone: one decode step and one prefill, in-process.

    python -m promethios_jax.serve.bench_step                      # configs/tiny.py, fresh weights
    python -m promethios_jax.serve.bench_step --workdir=DIR        # a checkpoint's model

Times `_generate_step` for each slot count (every slot at its own cache position, the
cache at the model's full context) and `_prefill_insert` for each prompt bucket, with
the engine's own jitted functions and donation; the best of several repeats counts.
Weights do not change the arithmetic, so a fresh model times the same as a trained one.
Prints JSON on its last line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _best(fn, repeats: int, inner: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t) / inner)
    return best * 1e3


def run(model, slots_list, buckets, repeats: int = 5) -> dict:
    import jax
    from flax import nnx

    from promethios_jax.serve import engine as E

    spec = model.spec
    graphdef, state = nnx.split(model)
    params, treedef = jax.tree.flatten(state)
    static = E._Static(graphdef, treedef)
    length = spec.max_seq_len
    out = {"max_seq_len": length}
    for slots in slots_list:
        box = {"cache": model.init_cache(slots, length),
               "slots": jax.device_put(dict(
                   E.init_slots(spec, slots),
                   position=(np.arange(slots, dtype=np.int32) * 7) % (length // 2) + length // 4))}

        def step():
            box["cache"], box["slots"], tok = E._generate_step(static, params, box["cache"], box["slots"])
            return tok

        for _ in range(5):
            jax.block_until_ready(step())
        out[f"step_ms_{slots}_slots"] = round(_best(lambda: jax.block_until_ready(step()), repeats, 100), 3)
        if slots != max(slots_list):
            continue
        for b in buckets:
            tokens = np.zeros((1, b), np.int32)

            def prefill():
                box["cache"], box["slots"], first, _ = E._prefill_insert(
                    static, params, box["cache"], box["slots"], tokens, np.int32(b - 1),
                    np.zeros(spec.telemetry_dim, np.float32), np.int32(0), np.uint32(1), np.float32(0),
                    np.float32(1))
                return jax.block_until_ready(first)

            prefill()
            out[f"prefill_ms_{b}"] = round(_best(prefill, repeats, 10), 3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=None, help="time this checkpoint's model (default: a fresh --config model)")
    p.add_argument("--config", default="configs/tiny.py")
    p.add_argument("--slots", default="1,32", help="comma-separated slot counts")
    p.add_argument("--buckets", default="64,128", help="comma-separated prompt buckets to prefill")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    if a.workdir:
        from promethios_jax.serve import checkpoint_io as io
        model = io.load(a.workdir).model
    else:
        from flax import nnx

        from promethios_jax.config import load_config_file
        from promethios_jax.model.model import GovernanceTransformer
        from promethios_jax.model.spec import ModelSpec
        model = GovernanceTransformer(ModelSpec.from_config(load_config_file(a.config).model), rngs=nnx.Rngs(0))
    res = run(model, [int(s) for s in a.slots.split(",")], [int(b) for b in a.buckets.split(",")], a.repeats)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
