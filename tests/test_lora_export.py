"""A LoRA fine-tune of a pretrained base, exported: the adapters are merged into the Llama
weights (W + alpha/r A@B), so transformers' LlamaForCausalLM loads the export and its
logits and greedy generation equal ours (whose adapters run unmerged)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytestmark = pytest.mark.slow  # an import, a short LoRA fine-tune and an export

import promethios_jax  # noqa: E402
from promethios_jax.data.records import load_split  # noqa: E402
from promethios_jax.data.tokenizer import build_tokenizer, encode_example_arrays  # noqa: E402
from promethios_jax.interop.safetensors_io import SafetensorsReader  # noqa: E402
from tests.hf_base import greedy_both, import_train_export  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_export")
    base, wd, out, config = import_train_export(
        root, model={"lora_rank": 4, "lora_alpha": 8.0},
        train_keys={"learning_rate": 2e-2, "trainable": "lora+embeddings+governance"})
    return root, base, wd, out, config


def test_the_export_holds_the_merged_weights(exported):
    _, base, wd, out, _ = exported
    model, _ = promethios_jax.load(wd)
    # The base's layers are frozen: what differs in the export is the merged adapters.
    assert np.any(np.asarray(model.layers_0.self_attn.q_proj.lora_b[...]))
    base_q, out_q = (SafetensorsReader(d).get("model.layers.0.self_attn.q_proj.weight") for d in (base, out))
    np.testing.assert_array_equal(np.asarray(model.layers_0.self_attn.q_proj.kernel[...][0]).reshape(
        base_q.shape[1], -1).T, base_q)
    assert np.abs(out_q - base_q).max() > 1e-3
    assert not any("lora" in n for n in SafetensorsReader(out).keys())


def test_transformers_on_the_merged_export_equals_ours(exported):
    root, _, wd, out, config = exported
    hf_model = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = build_tokenizer(config)
    model, _ = promethios_jax.load(wd)
    for rec in load_split(root / "data", "heldout")[:3]:
        prompt, _ = encode_example_arrays(rec, tok)
        with torch.no_grad():
            hf_logits = hf_model(torch.as_tensor(prompt[None].astype(np.int64))).logits[0].numpy()
        ours_logits = np.asarray(model(prompt[None]).logits[0])
        np.testing.assert_allclose(ours_logits, hf_logits[:, :ours_logits.shape[-1]], rtol=1e-3, atol=1e-3)
        ours, hf_new = greedy_both(model, tok, hf_model, prompt)
        assert ours.ids == hf_new
