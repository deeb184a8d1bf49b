"""Hugging Face Llama interop: import and export parity against transformers (float32, CPU)."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from promethios_jax import checkpoint as ckpt  # noqa: E402
from promethios_jax import config as config_lib  # noqa: E402
from promethios_jax import convert  # noqa: E402
from promethios_jax import sharding  # noqa: E402
from promethios_jax.interop import hf as interop  # noqa: E402
from promethios_jax.interop import safetensors_io as st  # noqa: E402
from promethios_jax.model import hf_llama  # noqa: E402
from promethios_jax.state import abstract_train_state  # noqa: E402

SEQ = 16
RTOL = 1e-4

# (name, LlamaConfig overrides): GQA ratios 1 and 4, rope theta 1e4 and 5e5, tied and
# untied, odd vocabularies, an explicit head_dim != hidden/heads, llama3 RoPE scaling.
MHA_UNTIED = dict(vocab_size=97, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                  rope_theta=10000.0, tie_word_embeddings=False)
GQA4_TIED = dict(vocab_size=300, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
                 tie_word_embeddings=True,
                 rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8})


def llama_config(**overrides):
    kw = dict(hidden_size=64, intermediate_size=96, max_position_embeddings=64, rms_norm_eps=1e-5,
              attn_implementation="eager")
    kw.update(overrides)
    return transformers.LlamaConfig(**kw)


def randomize_(model, seed=0):
    """Weights large enough that attention is peaked and every mapping error shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # RMSNorm gains
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(2.0 / p.shape[1] ** 0.5 * torch.randn(p.shape, generator=g))
    return model


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


def our_logits(model, tokens):
    from flax import nnx

    return np.asarray(nnx.jit(lambda m, t: m(t, telemetry=None).logits)(model, jnp.asarray(tokens, jnp.int32)))


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def tokens_for(vocab, seed=0, batch=2):
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, SEQ)).astype(np.int32)


def make_hf_dir(path, seed=0, dtype=None, **overrides):
    model = randomize_(transformers.LlamaForCausalLM(llama_config(**overrides)).eval(), seed)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path)
    return model


# ---------------------------------------------------------------------------------------
# (a) import → load → logits equal transformers'


def test_import_parity_gqa4_tied_llama3_rope(tmp_path):
    """GQA 4:1, tied embeddings, vocab 300, head_dim 32 != 64/8, theta 5e5 with llama3 scaling;
    one float32 model.safetensors."""
    import promethios_jax

    hf = make_hf_dir(tmp_path / "hf", **GQA4_TIED)
    assert (tmp_path / "hf" / "model.safetensors").exists()
    interop.import_hf(tmp_path / "hf", tmp_path / "wd", log=lambda *_: None)
    model, config = promethios_jax.load(tmp_path / "wd")
    assert (config.model.vocab_size, config.model.n_kv_heads, config.model.head_dim) == (300, 2, 32)
    assert config.model.tie_embeddings and config.model.rope_scaling_type == "llama3"
    assert list(config.model.anchor_layers) == [2, 4]  # base_config's, made for 4 layers: kept
    tokens = tokens_for(300)
    err = rel_err(our_logits(model, tokens), hf_logits(hf, tokens))
    assert err < RTOL, f"relative logits error {err:.2e}"


def test_import_parity_mha_untied_bf16_sharded_and_resume(tmp_path):
    """MHA, untied, vocab 97, theta 1e4, saved in bf16 across several shards (cast to float32);
    the CLI; and the train loop's resume path (abstract state from the written config.py)
    finds the step-0 state at batch 0."""
    import importlib.util

    import promethios_jax

    hf = randomize_(transformers.LlamaForCausalLM(llama_config(**MHA_UNTIED)).eval(), seed=3)
    with torch.no_grad():  # the float32 reference holds the bf16-rounded weights
        for p in hf.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    sd = {k: v.to(torch.bfloat16) for k, v in hf.state_dict().items()}
    hf.save_pretrained(tmp_path / "hf", state_dict=sd, max_shard_size="40KB")
    assert (tmp_path / "hf" / st.INDEX_FILE).exists()
    assert '"BF16"' in next((tmp_path / "hf").glob("model-0000*.safetensors")).read_bytes()[:2000].decode("latin1")
    assert convert.main(["import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "wd")]) == 0
    # A second import into the same workdir is refused rather than mixed in.
    assert convert.main(["import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "wd")]) == 2

    model, config = promethios_jax.load(tmp_path / "wd")
    assert (config.model.n_layers, config.model.tie_embeddings, config.model.rope_theta) == (2, False, 10000.0)
    assert list(config.model.anchor_layers) == [1, 2]  # placed for the depth
    tokens = tokens_for(97)
    err = rel_err(our_logits(model, tokens), hf_logits(hf, tokens))
    assert err < RTOL, f"relative logits error {err:.2e}"

    spec = importlib.util.spec_from_file_location("imported_config", tmp_path / "wd" / "config.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config()
    # Compared as JSON: the checkpoint's copy holds lists where the config file holds tuples.
    assert json.loads(cfg.model.to_json()) == json.loads(config.model.to_json())
    config_lib.validate(cfg)
    mesh = sharding.make_mesh(cfg)
    abstract = abstract_train_state(cfg, mesh).abstract
    manager = ckpt.make_manager(tmp_path / "wd", cfg.checkpoint)
    state, it, step = ckpt.restore_latest(manager, abstract)
    manager.close()
    assert step == 0 and int(state["step"]) == 0
    assert it == {"batches_consumed": 0, "global_batch_size": cfg.train.global_batch_size}
    emb = np.asarray(state["params"]["embed_tokens"]["embedding"])
    np.testing.assert_array_equal(emb, hf.model.embed_tokens.weight.detach().numpy())
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(state["opt_state"]))


# ---------------------------------------------------------------------------------------
# (b) train-init → export → LlamaForCausalLM.from_pretrained → same logits


def _our_workdir(tmp_path, **model):
    """A workdir as the train loop writes it (train state in our param tree, saved at step 0),
    with random values large enough that attention is peaked and norms are not all ones."""
    config = config_lib.base_config()
    config.model.update(dict(d_model=64, d_ff=96, max_seq_len=64, **model))
    config.checkpoint.async_save = False
    mesh = sharding.make_mesh(config)
    setup = abstract_train_state(config, mesh)
    abstract, shardings = setup.abstract, setup.shardings
    rng = np.random.default_rng(1)

    def value(path, a):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if names[0] != "params":
            return np.full(a.shape, -1 if names[0] == "first_nonfinite_step" else 0, a.dtype)
        if names[-1] == "scale":
            return (1.0 + 0.3 * rng.standard_normal(a.shape)).astype(a.dtype)
        if names[-1] == "embedding":
            return rng.standard_normal(a.shape).astype(a.dtype)
        return (0.25 * rng.standard_normal(a.shape)).astype(a.dtype)

    host = jax.tree_util.tree_map_with_path(value, abstract)
    state = jax.tree.map(jax.device_put, host, shardings)
    wd = tmp_path / "ours"
    manager = ckpt.make_manager(wd, config.checkpoint)
    ckpt.save(manager, 0, state, {"batches_consumed": 0, "global_batch_size": 16}, config, force=True)
    manager.wait_until_finished()
    manager.close()
    return wd


EXPORT_SHAPES = {
    "gqa4_untied_v97_theta5e5": dict(vocab_size=97, n_layers=3, n_heads=8, n_kv_heads=2, rope_theta=500000.0,
                                     tie_embeddings=False, anchor_layers=[2, 3], uncertainty_layers=[2, 3],
                                     tool_layers=[3, 3]),
    "mha_tied_v300_theta1e4": dict(vocab_size=300, n_layers=2, n_heads=4, n_kv_heads=4, rope_theta=10000.0,
                                   tie_embeddings=True, anchor_layers=[1, 2], uncertainty_layers=[1, 2],
                                   tool_layers=[2, 2]),
}


@pytest.mark.parametrize("shape", list(EXPORT_SHAPES))
def test_export_parity_and_round_trip(tmp_path, shape):
    import promethios_jax

    wd = _our_workdir(tmp_path, **EXPORT_SHAPES[shape])
    assert convert.main(["export", "--workdir", str(wd), "--out", str(tmp_path / "hf"),
                         "--max_shard_size", "60KB"]) == 0
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_cfg["architectures"] == ["LlamaForCausalLM"] and hf_cfg["torch_dtype"] == "float32"
    assert (tmp_path / "hf" / st.INDEX_FILE).exists() and (tmp_path / "hf" / st.GOVERNANCE_FILE).exists()

    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    assert hf.config.tie_word_embeddings == EXPORT_SHAPES[shape]["tie_embeddings"]
    model, config = promethios_jax.load(wd)
    tokens = tokens_for(config.model.vocab_size, seed=1)
    ours = our_logits(model, tokens)
    err = rel_err(hf_logits(hf, tokens), ours)
    assert err < RTOL, f"{shape}: relative logits error {err:.2e}"

    if shape != "gqa4_untied_v97_theta5e5":
        return
    # And back: import of our own export restores every parameter, governance included.
    interop.import_hf(tmp_path / "hf", tmp_path / "back", log=lambda *_: None)
    back, back_cfg = promethios_jax.load(tmp_path / "back")
    assert list(back_cfg.model.anchor_layers) == list(config.model.anchor_layers)
    from flax import nnx

    a = interop.flatten(nnx.to_pure_dict(nnx.split(model, nnx.Param)[1]))
    b = interop.flatten(nnx.to_pure_dict(nnx.split(back, nnx.Param)[1]))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=".".join(map(str, k)))


# ---------------------------------------------------------------------------------------
# (c) mismatches name the tensor and both shapes


def _write_tensors(path, tensors):
    from safetensors.numpy import save_file

    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_import_mismatch_names_tensor_and_shapes(tmp_path):
    from safetensors.numpy import load_file

    make_hf_dir(tmp_path / "hf", **MHA_UNTIED)
    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((95, 64), np.float32)
    del tensors["model.layers.0.self_attn.k_proj.weight"]
    tensors["model.layers.2.mlp.up_proj.weight"] = np.zeros((96, 64), np.float32)
    _write_tensors(tmp_path / "hf", tensors)
    with pytest.raises(hf_llama.ConversionError) as e:
        interop.import_hf(tmp_path / "hf", tmp_path / "wd", log=lambda *_: None)
    msg = str(e.value)
    assert "model.layers.1.mlp.up_proj.weight: expected shape (96, 64), got (95, 64)" in msg
    assert "model.layers.0.self_attn.k_proj.weight: missing" in msg
    assert "model.layers.2.mlp.up_proj.weight (96, 64)" in msg
    assert not (tmp_path / "wd" / "checkpoints").exists()

    # A config.json that disagrees with the tensors: the CLI exits 2 with the same naming.
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    hf_cfg["intermediate_size"] = 128
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hf_cfg))
    with pytest.raises(hf_llama.ConversionError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight: expected shape "
                                                      r"\(128, 64\), got \(96, 64\)"):
        interop.import_hf(tmp_path / "hf", tmp_path / "wd", log=lambda *_: None)


def test_import_refuses_non_llama_features(tmp_path):
    make_hf_dir(tmp_path / "hf", **MHA_UNTIED)
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    for key, value, match in (("attention_bias", True, "attention_bias"), ("hidden_act", "gelu", "hidden_act"),
                              ("rope_parameters", {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}, "yarn")):
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**hf_cfg, key: value}))
        with pytest.raises(hf_llama.ConversionError, match=match):
            interop.build_import_config(tmp_path / "hf", log=lambda *_: None)


def test_layer_ranges_follow_depth():
    assert hf_llama.default_layer_ranges(24) == {"anchor_layers": [8, 16, 24], "uncertainty_layers": [18, 24],
                                                "tool_layers": [20, 24]}
    r = hf_llama.default_layer_ranges(48)
    assert r["anchor_layers"] == [16, 32, 48] and r["uncertainty_layers"] == [36, 48]
    for n in (1, 2, 3, 5):
        r = hf_llama.default_layer_ranges(n)
        assert all(1 <= a <= n for a in r["anchor_layers"])
        assert 1 <= r["uncertainty_layers"][0] <= n and 1 <= r["tool_layers"][0] <= n


def test_hf_config_round_trip_and_transformers_reads_it():
    m = config_lib.base_config().model
    m.update(dict(vocab_size=300, d_model=64, n_heads=8, n_kv_heads=2, head_dim=32, d_ff=96, n_layers=3,
                  rope_theta=500000.0, tie_embeddings=True, max_seq_len=64, norm_eps=1e-5,
                  rope_scaling_type="llama3", rope_scaling_factor=8.0, rope_low_freq_factor=1.0,
                  rope_high_freq_factor=4.0, rope_original_max_len=16, anchor_layers=[2], uncertainty_layers=[2, 3],
                  tool_layers=[3, 3]))
    hf = hf_llama.hf_config_from_model(m)
    keys = hf_llama.model_keys_from_hf(hf)
    for k, v in keys.items():
        assert m[k] == v, k
    cfg = transformers.LlamaConfig(**hf)
    assert (cfg.num_key_value_heads, cfg.head_dim, cfg.tie_word_embeddings) == (2, 32, True)
    rope = cfg.rope_parameters
    assert rope["rope_type"] == "llama3" and rope["rope_theta"] == 500000.0 and rope["factor"] == 8.0
    assert rope["original_max_position_embeddings"] == 16
    # transformers 4 style keys only (no rope_parameters) read the same.
    legacy = {k: v for k, v in hf.items() if k != "rope_parameters"}
    assert hf_llama.model_keys_from_hf(legacy) == keys
