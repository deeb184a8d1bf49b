"""Input pipeline throughput: packed training tokens per second through the full pipeline.

    python -m promethios_jax.data.bench --config=configs/8b.py [--data_dir=DIR] [--seconds=20]

Reads ArrayRecord shards, tokenizes, packs, batches and prefetches exactly as training
does (one process feeding the whole host). Counts tokens that belong to an example
(segment id > 0), not padding. Without --data_dir it generates
`config.data.num_examples` examples into a temporary directory first (not timed). The
last line is `tokens_per_s=N`.
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from promethios_jax.data import generate, pipeline

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Config file (get_config()).")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Existing dataset; empty: generate one into a temp dir.")
_SECONDS = flags.DEFINE_float("seconds", 20.0, "How long to measure.")
_WARMUP = flags.DEFINE_integer("warmup_batches", 2, "Batches consumed before timing starts.")


def main(argv):
    del argv
    config = _CONFIG.value
    tmp = None
    data_dir = _DATA_DIR.value or config.data.path
    if not data_dir:
        tmp = tempfile.TemporaryDirectory(prefix="gov-bench-")
        data_dir = tmp.name
        t0 = time.perf_counter()
        generate.generate_dataset(data_dir, config.data.num_examples, config.data.seed, config.data.heldout_fraction,
                                  prompt_layout=config.data.prompt_layout)
        print(f"generated {config.data.num_examples} examples in {time.perf_counter() - t0:.1f}s", flush=True)

    t0 = time.perf_counter()
    it = pipeline.make_train_iterator(config, data_dir, 0, 1)
    build_s = time.perf_counter() - t0
    for _ in range(_WARMUP.value):
        next(it)
    tokens = slots = batches = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < _SECONDS.value:
        b = next(it)
        tokens += int(np.count_nonzero(b["segment_ids"]))
        slots += b["segment_ids"].size
        batches += 1
    elapsed = time.perf_counter() - t0
    it.close()
    rows = batches * config.train.global_batch_size
    print(f"config: max_seq_len={config.model.max_seq_len} global_batch_size={config.train.global_batch_size} "
          f"worker_count={config.data.worker_count} cpus={os.cpu_count()}")
    print(f"iterator build (length pass over {it.stats['examples']} examples): {build_s:.2f}s; "
          f"mean example {it.stats['mean_tokens']:.0f} tokens, truncated {it.stats['truncated']}, "
          f"skipped {it.stats['skipped']}")
    print(f"{batches} batches ({rows} rows) in {elapsed:.1f}s: {rows / elapsed:.0f} rows/s, "
          f"packing efficiency {tokens / max(slots, 1):.3f}")
    if tmp is not None:
        tmp.cleanup()
    print(f"tokens_per_s={tokens / elapsed:.0f}", flush=True)


if __name__ == "__main__":
    app.run(main)
