"""The engine without HTTP against `transformers` greedy `generate` on the exported weights.

    python -m promethios_jax.convert export --workdir=DIR --out=HF_DIR
    python -m promethios_jax.serve.bench_engine --workdir=DIR --hf_dir=HF_DIR --batch=32 --max_tokens=64

Both get the same held-out prompts (the same token ids, left-padded for transformers)
and produce exactly --max_tokens greedy tokens each (eos ignored), batch 32 at once.
transformers runs only the Llama backbone (no telemetry conditioning, no heads); the
engine also conditions on telemetry and reads the verdict. Prints JSON on its last line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def engine_run(workdir, prompts, max_tokens: int, batch: int, repeats: int) -> dict:
    from promethios_jax.serve import checkpoint_io as io
    from promethios_jax.serve.engine import Engine, Request, SamplingParams

    served = io.load(workdir)
    eng = Engine(served, num_slots=batch, max_queue=0)
    compile_s = eng.warm_up()
    eng.start(warm_up=False)
    while not eng.accepting:
        time.sleep(0.01)

    def reqs(tag):
        return [Request(f"{tag}-{i}", io.prompt_ids(served.tokenizer, p["telemetry"], p["domain"], p["text"],
                                                      served.config.data.prompt_layout),
                        io.telemetry_vector(p["telemetry"], p["domain"]),
                        SamplingParams(max_tokens=max_tokens, ignore_eos=True)) for i, p in enumerate(prompts)]

    eng.generate(reqs("warm"))
    times = []
    for r in range(repeats):
        batch_reqs = reqs(r)
        t0 = time.perf_counter()
        eng.generate(batch_reqs)
        times.append(time.perf_counter() - t0)
    eng.stop(timeout=10)
    ids = [r.prompt_ids for r in batch_reqs]
    return {"seconds": min(times), "tokens": sum(len(r.output_ids) for r in batch_reqs), "compile_s": compile_s,
            "prompt_ids": ids, "outputs": [r.output_ids for r in batch_reqs]}


def hf_run(hf_dir, prompt_ids, max_tokens: int, repeats: int, threads: int, device: str = "cpu") -> dict:
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(threads)
    model = LlamaForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval().to(device)
    n = max(len(p) for p in prompt_ids)
    ids = torch.zeros((len(prompt_ids), n), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompt_ids):
        ids[i, n - len(p):] = torch.tensor(p)
        mask[i, n - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    kw = dict(attention_mask=mask, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
              num_beams=1, pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        model.generate(ids, **kw)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model.generate(ids, **kw)
            if device != "cpu":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "tokens": int((out.shape[1] - n) * out.shape[0])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m promethios_jax.serve.bench_engine", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--hf_dir", required=True, help="python -m promethios_jax.convert export --out=HF_DIR")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max_tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="timed runs each; the fastest counts")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--hf_device", default="cpu", help="torch device for transformers (cuda on a GPU)")
    a = p.parse_args(argv)
    from promethios_jax.serve.checkpoint_io import heldout_requests

    prompts = heldout_requests(a.workdir)[:a.batch]
    if len(prompts) < a.batch:
        p.error(f"--batch={a.batch}: the held-out split has only {len(prompts)} prompts")
    eng = engine_run(a.workdir, prompts, a.max_tokens, a.batch, a.repeats)
    hf = hf_run(a.hf_dir, eng["prompt_ids"], a.max_tokens, a.repeats, a.threads, a.hf_device)
    res = {"batch": a.batch, "max_tokens": a.max_tokens,
           "mean_prompt_tokens": round(float(np.mean([len(x) for x in eng["prompt_ids"]])), 1),
           "engine_tokens_per_s": round(eng["tokens"] / eng["seconds"], 1),
           "transformers_tokens_per_s": round(hf["tokens"] / hf["seconds"], 1),
           "engine_warmup_compile_s": round(eng["compile_s"], 1)}
    res["ratio"] = round(res["engine_tokens_per_s"] / res["transformers_tokens_per_s"], 2)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
