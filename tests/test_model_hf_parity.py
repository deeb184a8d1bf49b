"""The backbone against transformers' LlamaForCausalLM: same weights, same logits.

This parity is what makes Hugging Face import and export possible; the mapping below is
the one promethios_jax.model.hf_llama declares (a transpose and a reshape per tensor).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from promethios_jax.model import GovernanceTransformer, layer_location
from tests.test_model_backbone import assert_rel, fwd, tiny_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CASES = {
    "gqa": dict(n_layers=3, n_heads=4, n_kv_heads=2, rope_theta=10000.0, tie_embeddings=False, vocab_size=61,
                anchor_layers=[2, 3], uncertainty_layers=[2, 3], tool_layers=[3, 3]),
    "mqa_tied_theta1e6": dict(n_layers=2, n_heads=4, n_kv_heads=1, rope_theta=1e6, tie_embeddings=True,
                              vocab_size=97, anchor_layers=[2], uncertainty_layers=[1, 2], tool_layers=[2, 2]),
    "mha_head_dim": dict(n_layers=2, n_heads=2, n_kv_heads=2, head_dim=24, rope_theta=500.0, vocab_size=50,
                         anchor_layers=[1], uncertainty_layers=[1, 2], tool_layers=[2, 2]),
    "llama3_rope": dict(n_layers=2, n_heads=4, n_kv_heads=2, rope_theta=50000.0, vocab_size=64,
                        rope_scaling_type="llama3", rope_scaling_factor=8.0, rope_low_freq_factor=1.0,
                        rope_high_freq_factor=4.0, rope_original_max_len=16, anchor_layers=[2],
                        uncertainty_layers=[1, 2], tool_layers=[2, 2]),
}


def hf_model(m):
    rope = {"rope_type": "default", "rope_theta": m.rope_theta}
    if m.rope_scaling_type == "llama3":
        rope = {"rope_type": "llama3", "rope_theta": m.rope_theta, "factor": m.rope_scaling_factor,
                "low_freq_factor": m.rope_low_freq_factor, "high_freq_factor": m.rope_high_freq_factor,
                "original_max_position_embeddings": m.rope_original_max_len}
    cfg = transformers.LlamaConfig(
        vocab_size=m.vocab_size, hidden_size=m.d_model, intermediate_size=m.d_ff, num_hidden_layers=m.n_layers,
        num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads, head_dim=m.head_dim or None,
        rms_norm_eps=m.norm_eps, tie_word_embeddings=m.tie_embeddings, rope_parameters=rope,
        max_position_embeddings=128, attention_bias=False, mlp_bias=False)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval().float()
    with torch.no_grad():  # HF initialises norms to 1; randomise them so that they are tested too
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model


def import_hf(model, hf, m):
    """HF state dict → our param tree (what `convert import` does)."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in hf.state_dict().items()}
    d, h, kv = m.d_model, m.n_heads, m.n_kv_heads
    hd = m.head_dim or d // h
    params = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    params["embed_tokens"]["embedding"] = sd["model.embed_tokens.weight"]
    params["norm"]["scale"] = sd["model.norm.weight"]
    if not m.tie_embeddings:
        params["lm_head"]["kernel"] = sd["lm_head.weight"].T
    for i in range(m.n_layers):
        seg, j = layer_location(m, i)
        p, pre = params[seg], f"model.layers.{i}."
        p["input_layernorm"]["scale"][j] = sd[pre + "input_layernorm.weight"]
        p["post_attention_layernorm"]["scale"][j] = sd[pre + "post_attention_layernorm.weight"]
        a = p["self_attn"]
        a["q_proj"]["kernel"][j] = sd[pre + "self_attn.q_proj.weight"].T.reshape(d, h, hd)
        a["k_proj"]["kernel"][j] = sd[pre + "self_attn.k_proj.weight"].T.reshape(d, kv, hd)
        a["v_proj"]["kernel"][j] = sd[pre + "self_attn.v_proj.weight"].T.reshape(d, kv, hd)
        a["o_proj"]["kernel"][j] = sd[pre + "self_attn.o_proj.weight"].T.reshape(h, hd, d)
        for name in ("gate_proj", "up_proj", "down_proj"):
            p["mlp"][name]["kernel"][j] = sd[pre + f"mlp.{name}.weight"].T
    nnx.update(model, jax.tree.map(jnp.asarray, params))


@pytest.mark.parametrize("case", sorted(CASES))
def test_backbone_matches_transformers_llama(case):
    c = tiny_config(**CASES[case])
    m = c.model
    ours = GovernanceTransformer(m, rngs=nnx.Rngs(0))
    hf = hf_model(m)
    import_hf(ours, hf, m)
    tokens = np.random.default_rng(0).integers(0, m.vocab_size, (2, 40))  # beyond rope_original_max_len
    with torch.no_grad():
        ref = hf(torch.from_numpy(tokens)).logits.numpy()
    assert_rel(fwd(ours, jnp.asarray(tokens)).logits, ref, 1e-4)
