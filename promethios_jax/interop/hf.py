"""Hugging Face Llama import and export: a HF directory <-> a workdir's checkpoint.

Import writes WORKDIR/checkpoints/0 (the full train state, backbone from the HF
tensors) and WORKDIR/config.py; export writes a HF Llama directory from a checkpoint.
The governance parts (telemetry encoder, heads, loss weights) are not part of Llama:
export writes them to `governance.safetensors` beside the HF files (transformers ignores
it), and import reads them back from there when present and fitting (`governance="auto"`),
else initialises them fresh. The mapping itself is `promethios_jax.model.hf_llama`.
"""
from __future__ import annotations

import copy
import json
import math
import pprint
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from promethios_jax import checkpoint as ckpt
from promethios_jax import config as config_lib
from promethios_jax import sharding
from promethios_jax import workdir as workdir_lib
from promethios_jax.data.hf_tokenizer import HFTokenizer, VocabPlan, ships_tokenizer, vocab_plan
from promethios_jax.data.tokenizer import TokenizerError, build_tokenizer, is_hf_tokenizer
from promethios_jax.interop.safetensors_io import (DEFAULT_MAX_SHARD, GOVERNANCE_FILE, HF_CONFIG, INDEX_FILE,
                                                   PROMETHIOS_CONFIG, SINGLE_FILE, SafetensorsFile,
                                                   SafetensorsReader, ShardWriter, parse_size)
from promethios_jax.model.hf_llama import (ConversionError, TensorMap, check_hf_tensors, default_layer_ranges,
                                           hf_config_from_model, is_backbone, model_keys_from_hf, ranges_valid,
                                           tensor_map, to_hf, to_ours)
from promethios_jax.model.lora import LORA_LEAVES, merged_kernel
from promethios_jax.model.spec import ModelSpec
from promethios_jax.model.vocab import EMBED_PATH, LM_HEAD_PATH, grow_vocab
from promethios_jax.state import abstract_train_state


def flatten(tree, prefix=()) -> dict:
    """Nested dict → {key path tuple: leaf}."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, prefix + (k,)))
        return out
    return {prefix: tree}


def _set_path(tree: dict, path: tuple, value) -> None:
    for k in path[:-1]:
        tree = tree[k]
    tree[path[-1]] = value

def build_import_config(hf_dir, config_path: str | None = None, log=print):
    """The full config for an imported checkpoint: model keys from config.json, the rest from
    --config (else the exporter's promethios_config.json, else base_config())."""
    hf_dir = Path(hf_dir)
    if not (hf_dir / HF_CONFIG).exists():
        raise ConversionError(f"{hf_dir} has no {HF_CONFIG}")
    hf = json.loads((hf_dir / HF_CONFIG).read_text())
    keys = model_keys_from_hf(hf)
    explicit = config_path is not None
    if explicit:
        config = config_lib.load_config_file(config_path)
        source = config_path
    elif (hf_dir / PROMETHIOS_CONFIG).exists():
        config = workdir_lib.merge_config(json.loads((hf_dir / PROMETHIOS_CONFIG).read_text()))
        source = str(hf_dir / PROMETHIOS_CONFIG)
    else:
        config = config_lib.base_config()
        source = "base_config()"
    m = config.model
    n = keys["n_layers"]
    chosen_for_depth = explicit or int(m.n_layers) == n
    if explicit and int(m.max_seq_len) > 0:
        # The configured training length, capped at what the checkpoint's RoPE was trained for.
        keys["max_seq_len"] = min(int(m.max_seq_len), keys["max_seq_len"])
    for k, v in keys.items():
        if k == "rope_scaling_type" and v == "" and k not in m:
            continue  # no RoPE scaling, and the config has no such key: leave it absent
        m[k] = v
    if chosen_for_depth and ranges_valid(m, n):
        log(f"governance layers from {source}: anchors {list(m.anchor_layers)}, uncertainty "
            f"{list(m.uncertainty_layers)}, tool {list(m.tool_layers)}")
    else:
        ranges = default_layer_ranges(n)
        for k, v in ranges.items():
            m[k] = v
        log(f"governance layers placed for {n} layers: anchors {ranges['anchor_layers']}, uncertainty "
            f"{ranges['uncertainty_layers']}, tool {ranges['tool_layers']}")
    config_lib.validate(config)
    return config, hf


def _local_mesh_config(config):
    c = copy.deepcopy(config)
    c.mesh.update({"data": 1, "fsdp": -1, "tensor": 1})
    return c


def _check_tokenizer(config, hf_dir: Path, log=print) -> None:
    """Warns where the training tokenizer and the checkpoint's vocabulary do not go together."""
    shipped = [n for n in ("tokenizer.model", "tokenizer.json") if (hf_dir / n).exists()]
    if shipped:
        log(f"NOTE: {hf_dir} ships its own tokenizer ({', '.join(shipped)}); training here tokenizes with "
            f"config.data.tokenizer={config.data.tokenizer!r}, whose ids are not the ones the checkpoint was "
            "pretrained on")
    try:
        probe = copy.deepcopy(config)
        probe.model.vocab_size = 2**31 - 1
        needed = build_tokenizer(probe).vocab_size
    except Exception:  # noqa: BLE001 -- advisory only
        return
    if needed > config.model.vocab_size:
        log(f"WARNING: config.data.tokenizer={config.data.tokenizer!r} uses {needed} ids but the checkpoint's "
            f"vocabulary has {config.model.vocab_size}: load/eval/export work, training on the generated data "
            "does not")


_CONFIG_PY = '''"""Config of the checkpoint imported by `promethios_jax.convert import` from {hf_dir}.

Train on: python -m promethios_jax.train --workdir={out} --config={out}/config.py
(override keys with --config.train.steps=... etc., but keep config.model as it is).
"""
from promethios_jax.workdir import merge_config

_SAVED = {saved}


def get_config():
    return merge_config(_SAVED)
'''


def adopt_tokenizer(config, hf_dir: Path, out: Path, log=print) -> VocabPlan:
    """Copies the base's tokenizer into OUT/tokenizer, points config.data.tokenizer at it
    and sizes config.model.vocab_size for it (the base's ids plus the governance tokens,
    rounded up to 128); returns how the checkpoint's rows grow."""
    try:
        base = HFTokenizer(hf_dir)
        copied = base.copy_base(workdir_lib.tokenizer_dir(out))
        tok = HFTokenizer(copied, use_chat_template=bool(config.data.chat_template))
    except TokenizerError as e:
        raise ConversionError(str(e)) from None
    plan = vocab_plan(tok, int(config.model.vocab_size))
    config.data.tokenizer = str(copied)
    config.model.vocab_size = plan.rows
    if tok.base_vocab_size > plan.base_rows:
        log(f"WARNING: the tokenizer has {tok.base_vocab_size} ids but the checkpoint only {plan.base_rows} "
            "embedding rows: the ids past them start at the mean row")
    log(f"tokenizer of {hf_dir} copied to {copied}: {tok.base_vocab_size} base ids kept, "
        f"{len(tok.added_pieces)} governance/special tokens added ({', '.join(tok.added_pieces[:3])}, ...); "
        f"embedding rows {plan.base_rows} -> {plan.rows}, new rows at the mean of the base's")
    return plan


def _hf_vocab_shape(path: tuple, shape: tuple, grow: VocabPlan | None) -> tuple:
    """The shape a leaf has in the HF checkpoint: the vocabulary leaves before growth."""
    if grow is None or grow.rows == grow.base_rows:
        return tuple(shape)
    if path == EMBED_PATH:
        return (grow.base_rows,) + tuple(shape[1:])
    if path == LM_HEAD_PATH:
        return tuple(shape[:-1]) + (grow.base_rows,)
    return tuple(shape)


def import_hf(hf_dir, out, config_path: str | None = None, governance: str = "auto", log=print,
              tokenizer: str = "auto"):
    """Writes OUT/checkpoints/0 (the full train state, backbone from HF_DIR) and OUT/config.py.

    `tokenizer`: "auto" trains with the base's own tokenizer when HF_DIR ships one (the
    embedding grows for the governance tokens), else with `config.data.tokenizer`; "base"
    requires the base's; "config" keeps `config.data.tokenizer`. Returns the saved config."""
    hf_dir, out = Path(hf_dir), Path(out).absolute()
    if governance not in ("auto", "fresh"):
        raise ConversionError(f"--governance={governance!r}: use 'auto' or 'fresh'")
    if tokenizer not in ("auto", "base", "config"):
        raise ConversionError(f"--tokenizer={tokenizer!r}: use 'auto', 'base' or 'config'")
    if tokenizer == "base" and not ships_tokenizer(hf_dir):
        raise ConversionError(f"--tokenizer=base: {hf_dir} holds neither tokenizer.json nor tokenizer.model")
    cdir = workdir_lib.checkpoint_dir(out)
    if workdir_lib.checkpoint_steps(out):
        raise ConversionError(f"{cdir} already holds checkpoints; import into an empty workdir")

    config, _ = build_import_config(hf_dir, config_path, log=log)
    # The HF tensors are read at the checkpoint's vocabulary, then grown to the tokenizer's.
    hf_model = copy.deepcopy(config.model)
    grow = None
    if tokenizer == "base" or (tokenizer == "auto" and ships_tokenizer(hf_dir)):
        grow = adopt_tokenizer(config, hf_dir, out, log=log)
        config_lib.validate(config)
    tmap = tensor_map(hf_model)
    reader = SafetensorsReader(hf_dir)
    check_hf_tensors(reader, tmap, bool(hf_model.tie_embeddings))

    mesh_config = _local_mesh_config(config)
    mesh = sharding.make_mesh(mesh_config, jax.local_devices())
    setup = abstract_train_state(mesh_config, mesh)
    abs_params = flatten(setup.abstract["params"])
    param_sh = flatten(setup.shardings["params"])

    # Backbone leaves, one stacked leaf at a time on host, then onto the mesh.
    by_leaf: dict[tuple, list[TensorMap]] = {}
    for tm in tmap:
        by_leaf.setdefault(tm.path, []).append(tm)
    for path in by_leaf:
        if path not in abs_params:
            raise ConversionError(f"the model has no parameter {'.'.join(path)} (the converter and the model "
                                  "disagree on the param tree)")
    loaded = {}
    vocab_leaves = {}
    for path, tms in by_leaf.items():
        a = abs_params[path]
        shape = _hf_vocab_shape(path, a.shape, grow)
        host = np.empty(shape, np.float32)
        for tm in tms:
            w = to_ours(reader.get(tm.hf_name), tm, shape)
            if tm.index is None:
                host[...] = w
            else:
                host[tm.index] = w
        if shape != a.shape:
            vocab_leaves[path] = host
            continue
        loaded[path] = jax.device_put(host.astype(a.dtype), param_sh[path])
        del host
    if vocab_leaves:
        tree = {}
        for path, host in vocab_leaves.items():
            _set_path(tree.setdefault(path[0], {}), path[1:], host)
        grown = grow_vocab(tree, grow.rows, mean_rows=grow.mean_rows, reset_ids=grow.reset_ids)
        for path in vocab_leaves:
            leaf = grown
            for k in path:
                leaf = leaf[k]
            loaded[path] = jax.device_put(np.asarray(leaf, abs_params[path].dtype), param_sh[path])
        del vocab_leaves, tree, grown

    gov_file = hf_dir / GOVERNANCE_FILE
    if governance == "auto" and gov_file.exists():
        gov = SafetensorsFile(gov_file)
        wanted = {p: a for p, a in abs_params.items() if not is_backbone(p)}
        names = {".".join(map(str, p)): p for p in wanted}
        misfit = [f"{n}: expected {tuple(wanted[p].shape)}, got {gov.shape(n) if n in gov.header else 'missing'}"
                  for n, p in names.items() if n not in gov.header or gov.shape(n) != tuple(wanted[p].shape)]
        misfit += [f"{n}: not in this model" for n in gov.header if n not in names]
        if misfit:
            log(f"{gov_file} does not fit this config ({'; '.join(misfit[:3])}{' ...' if len(misfit) > 3 else ''}); "
                "governance parts initialised fresh")
        else:
            for n, p in names.items():
                loaded[p] = jax.device_put(np.asarray(gov.get(n), abs_params[p].dtype), param_sh[p])
            log(f"governance parts from {gov_file}")
    else:
        log("governance parts initialised fresh")

    def build(leaves):
        state = setup.init()
        params = state["params"]
        for p, x in leaves.items():
            _set_path(params, p, x)
        state["opt_state"] = setup.tx.init(params)
        return state

    # Under jit the random init of every replaced leaf is dead code and never computed.
    donate = (0,) if jax.default_backend() != "cpu" else ()  # CPU cannot donate; spare the warning
    state = jax.jit(build, out_shardings=setup.shardings, donate_argnums=donate)(loaded)
    del loaded

    out.mkdir(parents=True, exist_ok=True)
    if grow is None:
        _check_tokenizer(config, hf_dir, log=log)
    ckpt_cfg = config.checkpoint.copy_and_resolve_references()
    ckpt_cfg.async_save = False
    manager = ckpt.make_manager(out, ckpt_cfg)
    ckpt.save(manager, 0, state, {"batches_consumed": 0, "global_batch_size": int(config.train.global_batch_size)},
              config, force=True)
    manager.wait_until_finished()
    manager.close()
    saved = pprint.pformat(json.loads(config.to_json()), indent=1, width=110, sort_dicts=False)
    (out / "config.py").write_text(_CONFIG_PY.format(hf_dir=hf_dir.absolute(), out=out, saved=saved))
    n_backbone = sum(int(np.prod(abs_params[p].shape)) for p in by_leaf)
    log(f"imported {n_backbone:,} backbone parameters from {hf_dir} into {cdir / '0'}; "
        f"train on with: python -m promethios_jax.train --workdir={out} --config={out / 'config.py'}")
    return config

# ---------------------------------------------------------------------------------------
# Export


def _tokenizer_ids(config) -> dict:
    try:
        tok = build_tokenizer(config)
        return {"bos_token_id": int(tok.bos_id), "eos_token_id": int(tok.eos_id), "pad_token_id": int(tok.pad_id)}
    except Exception:  # noqa: BLE001 -- optional metadata
        return {}


def export_params(params, config, out, max_shard_size=DEFAULT_MAX_SHARD, log=print) -> dict:
    """Writes a HF Llama directory from our params (pure dict) and config; returns config.json's dict.

    Host memory holds one stacked parameter and one shard at a time."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [out / SINGLE_FILE, out / INDEX_FILE, out / GOVERNANCE_FILE, *out.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    flat = flatten(params)
    tmap = tensor_map(config.model)
    by_leaf: dict[tuple, list[TensorMap]] = {}
    for tm in tmap:
        by_leaf.setdefault(tm.path, []).append(tm)
    missing = [".".join(p) for p in by_leaf if p not in flat]
    if missing:
        raise ConversionError(f"the checkpoint has no parameter(s) {', '.join(missing)}")
    writer = ShardWriter(out, parse_size(max_shard_size))
    n = merged = 0
    lora_scale = ModelSpec.from_config(config.model).lora_scale
    for path, tms in by_leaf.items():
        host = np.asarray(jax.device_get(flat[path]), np.float32)
        a, b = (flat.get(path[:-1] + (leaf,)) for leaf in LORA_LEAVES)
        if a is not None:  # an adapter: Llama has none, so it goes into the weight (W + alpha/r A@B)
            host = merged_kernel(host, jax.device_get(a), jax.device_get(b), lora_scale)
            merged += 1
        for tm in tms:
            x = host if tm.index is None else host[tm.index]
            if math.prod(x.shape) != math.prod(tm.hf_shape):
                raise ConversionError(f"{'.'.join(path)}[{tm.index}]: shape {x.shape} cannot become "
                                      f"{tm.hf_name} {tm.hf_shape}")
            writer.add(tm.hf_name, to_hf(x, tm))
            n += x.size
        del host
    files = writer.close()

    hf = hf_config_from_model(config.model, _tokenizer_ids(config))
    (out / HF_CONFIG).write_text(json.dumps(hf, indent=2) + "\n")
    gov = {".".join(map(str, p)): np.ascontiguousarray(np.asarray(jax.device_get(x), np.float32))
           for p, x in flat.items() if not is_backbone(p)}
    if gov:
        save_file(gov, str(out / GOVERNANCE_FILE), metadata={"format": "promethios"})
    (out / PROMETHIOS_CONFIG).write_text(config.to_json(indent=2) + "\n")
    if is_hf_tokenizer(str(config.data.tokenizer)):
        # The tokenizer the checkpoint was trained with, governance tokens included, so that
        # AutoTokenizer.from_pretrained(out) gives our ids.
        files = files + build_tokenizer(config).save_pretrained(out)
    msg = f"exported {n:,} backbone parameters to {out} ({', '.join(files)})"
    if merged:
        msg += f"; low-rank adapters merged into {merged} weight stacks (W + alpha/r A@B)"
    log(msg + (f"; governance parts in {GOVERNANCE_FILE}" if gov else ""))
    return hf


def export_workdir(workdir, out, step: int | None = None, max_shard_size=DEFAULT_MAX_SHARD, log=print) -> dict:
    model, config = ckpt.load(workdir, step)
    params = nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])
    return export_params(params, config, out, max_shard_size, log=log)
