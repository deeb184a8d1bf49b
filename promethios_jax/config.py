"""Config schema, validation and derived values.

Every config file in `configs/` starts from `base_config()` and overrides keys; the
schema lives here so that one place says which keys exist and what they mean.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path
from typing import Sequence

import ml_collections

from promethios_jax.data.control import TokenizerError, trained_vocab_size
from promethios_jax.data.prompt import PROMPT_LAYOUTS
from promethios_jax.model import heads
from promethios_jax.model.lora import RANK_AXIS
from promethios_jax.model.spec import ModelSpec

# Logical axis → mesh axes. Parameters and the batch name logical axes only; this
# table (overridable as `config.sharding.rules`) is the single place that maps them.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("layers", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("telemetry", None),
    ("classes", None),
    ("length", None),
    ("lora", None),  # the adapters' rank axis (model/lora.py): small, replicated
)

MESH_AXES = ("data", "fsdp", "tensor")
GPU_BACKENDS = ("gpu", "cuda", "rocm")


class ConfigError(ValueError):
    """A config value that cannot work, named with its key."""


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # The model's keys and defaults are ModelSpec's (model/spec.py documents them).
    c.model = m = ml_collections.ConfigDict(
        {f.name: f.default for f in dataclasses.fields(ModelSpec) if f.name != "learned_loss_weights"})

    c.loss = lw = ml_collections.ConfigDict()
    lw.lm = 1.0
    for head in heads.HEADS:  # one weight per loss part
        lw[head.name] = head.loss_weight
    lw.uncertainty_weighting = False  # Kendall et al. learned task weights
    # The model holds the learned log-variances only when asked; this reference keeps the
    # model key equal to loss.uncertainty_weighting (set either one).
    m.learned_loss_weights = lw.get_ref("uncertainty_weighting")

    c.data = d = ml_collections.ConfigDict()
    d.path = ""  # empty: generate into WORKDIR/data
    d.num_examples = 10000
    d.seed = 0
    d.heldout_fraction = 0.03
    # "byte"; "sentencepiece:N" (N pieces trained on the train split on first use, kept in
    # DATA_DIR/tokenizer/ and in every checkpoint); a SentencePiece model file trained here;
    # or a Hugging Face tokenizer (a directory with tokenizer.json / tokenizer.model, or the
    # file): see data/tokenizer.py and data/hf_tokenizer.py.
    d.tokenizer = "byte"
    d.chat_template = False  # format prompts with the HF tokenizer's chat template
    # "request_tags": request, newline, tags, then <assess> (every tag at a fixed distance
    # from where the verdict is read); "tags_request": the layout before this key existed.
    d.prompt_layout = "request_tags"
    # Start each response with its outcome's piece (<outcome:safeguards>, ...; hidden when
    # decoded): byte and SentencePiece tokenizers trained here (data/control.py says why).
    d.outcome_token = False
    d.max_segments_per_row = 8
    d.mix = ()  # ((category, weight), ...): a stage's category mix (set by stages.py); empty: as generated
    d.shuffle_seed = 0
    d.worker_count = 0  # Grain worker processes for prefetch; 0 keeps it in-process
    d.prefetch_buffer_size = 2

    c.train = t = ml_collections.ConfigDict()
    t.steps = 300
    t.epochs = 0.0  # > 0: the step count is derived from the packed rows per epoch (stages.py)
    t.schedule = "cosine"  # after warm-up: cosine | linear | constant
    t.trainable = "all"  # what trains: all | groups joined by "+" (trainable.py)
    t.stage_start = 0  # set per stage by stages.py: the global step the schedule counts from
    t.global_batch_size = 16
    t.grad_accum_steps = 1
    t.learning_rate = 3e-3
    t.warmup_steps = 30
    t.min_lr_ratio = 0.1
    t.weight_decay = 0.1
    t.b1 = 0.9
    t.b2 = 0.95
    t.eps = 1e-8
    t.moments_dtype = "float32"  # Adam moments: float32 | bfloat16 (saves 4 bytes per parameter)
    t.grad_clip = 1.0
    t.seed = 0
    t.log_every = 10
    t.nan_policy = "stop"  # "stop" | "skip"

    # Training stages, run in order (stages.py); empty: one stage from config.train.
    c.stages = ()

    c.mesh = mesh = ml_collections.ConfigDict()
    mesh.data = -1
    mesh.fsdp = 1
    mesh.tensor = 1

    c.sharding = s = ml_collections.ConfigDict()
    s.rules = DEFAULT_RULES  # tuples: ml-collections overrides tuples, not lists

    c.checkpoint = ck = ml_collections.ConfigDict()
    ck.every_steps = 100
    ck.max_to_keep = 3
    ck.keep_period = 0  # 0: off; otherwise also keep every step divisible by it
    ck.async_save = True

    c.monitor = mo = ml_collections.ConfigDict()
    mo.hourly_cost_usd = 0.0
    mo.peak_tflops = 0.0  # 0: look the device up in the peak table

    c.profile = p = ml_collections.ConfigDict()
    p.start_step = -1
    p.num_steps = 0

    c.eval = e = ml_collections.ConfigDict()
    e.batch_size = 32
    e.num_generate = 64
    e.max_new_tokens = 160
    e.hitl_escalation_threshold = 0.5

    return c


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """get_config() of a config file; `file.py:arg` passes arg, as ml_collections' config flags do."""
    arg = None
    if ":" in path and not Path(path).exists():
        path, arg = path.split(":", 1)
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"--config {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_promethios_config_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()


def resolve_mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
    """Fills one -1 axis with the remaining devices; refuses shapes that do not fit."""
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1:
        raise ConfigError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    for a, s in zip(MESH_AXES, sizes):
        if s == 0 or s < -1:
            raise ConfigError(f"config.mesh.{a}={s}: axis sizes must be positive or -1")
    fixed = math.prod(s for s in sizes if s != -1)
    if free:
        if num_devices % fixed:
            raise ConfigError(
                f"config.mesh {dict(zip(MESH_AXES, sizes))}: the fixed axes ({fixed} devices) "
                f"do not divide the {num_devices} available devices")
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ConfigError(
            f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"but {num_devices} are available")
    return tuple(sizes)


def validate(config, num_devices: int | None = None, process_count: int = 1, backend: str | None = None) -> None:
    """Checks everything that can be checked before any compile; raises ConfigError.

    `backend` (jax.default_backend(), when known) refuses settings the platform cannot run.
    """
    m, t = config.model, config.train
    if backend is not None and m.attention_impl == "cudnn" and backend not in GPU_BACKENDS:
        raise ConfigError(f"config.model.attention_impl='cudnn' needs an NVIDIA GPU with cuDNN, but JAX runs on "
                          f"{backend!r}: set config.model.attention_impl='xla'")
    try:
        ModelSpec.from_config(m)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        pieces = trained_vocab_size(config.data.tokenizer)
    except TokenizerError as e:
        raise ConfigError(str(e)) from None
    if pieces is not None and pieces > m.vocab_size:
        raise ConfigError(f"config.data.tokenizer={config.data.tokenizer!r} trains {pieces} pieces but "
                          f"config.model.vocab_size={m.vocab_size}; raise the vocabulary to at least {pieces}")
    if config.data.get("prompt_layout", PROMPT_LAYOUTS[0]) not in PROMPT_LAYOUTS:
        raise ConfigError(f"config.data.prompt_layout={config.data.prompt_layout!r}: use one of {PROMPT_LAYOUTS}")
    if t.steps < 0:
        raise ConfigError(f"config.train.steps={t.steps} must be >= 0")
    if t.grad_accum_steps < 1:
        raise ConfigError(f"config.train.grad_accum_steps={t.grad_accum_steps} must be >= 1")
    if t.nan_policy not in ("stop", "skip"):
        raise ConfigError(f"config.train.nan_policy={t.nan_policy!r}: use 'stop' or 'skip'")
    if config.checkpoint.every_steps <= 0:
        raise ConfigError("config.checkpoint.every_steps must be positive")
    if m.get("lora_rank", 0) and RANK_AXIS not in dict(rules_as_tuples(config.sharding.rules)):
        raise ConfigError(f"config.model.lora_rank={m.lora_rank} needs a {RANK_AXIS!r} entry in config.sharding.rules "
                          f"(e.g. ({RANK_AXIS!r}, None), as config.DEFAULT_RULES has)")
    for rule in config.sharding.rules:
        axes = rule[1]
        axes = [] if axes is None else ([axes] if isinstance(axes, str) else list(axes))
        for a in axes:
            if a not in MESH_AXES:
                raise ConfigError(f"config.sharding.rules: {rule[0]!r} maps to unknown mesh axis {a!r}")
    if num_devices is not None:
        data, fsdp, tensor = resolve_mesh_shape(config.mesh, num_devices)
        if m.n_heads % tensor or m.n_kv_heads % tensor:
            raise ConfigError(
                f"config.model heads ({m.n_heads}) and kv heads ({m.n_kv_heads}) must be divisible by "
                f"config.mesh.tensor={tensor}")
        shards = data * fsdp * t.grad_accum_steps
        if t.global_batch_size % shards:
            raise ConfigError(
                f"config.train.global_batch_size={t.global_batch_size} is not divisible by "
                f"data*fsdp*grad_accum_steps = {data}*{fsdp}*{t.grad_accum_steps} = {shards}")
        if t.global_batch_size % process_count:
            raise ConfigError(
                f"config.train.global_batch_size={t.global_batch_size} is not divisible by the "
                f"{process_count} processes")


def rules_as_tuples(rules: Sequence) -> tuple:
    out = []
    for name, axes in rules:
        if isinstance(axes, (list, tuple)):
            axes = tuple(axes) if axes else None
        out.append((name, axes))
    return tuple(out)
