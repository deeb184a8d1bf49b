"""The model configs: they validate, and their sizes (counted abstractly, never allocated)."""
import importlib.util
import pathlib

import pytest

from promethios_jax.config import validate
from promethios_jax.model import ModelSpec, param_count

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def load(name):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", CONFIGS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


@pytest.mark.parametrize("name,target,tol", [
    ("65m", 65e6, 0.10), ("350m", 350e6, 0.10), ("1_3b", 1.3e9, 0.10), ("8b", 8e9, 0.05), ("34b", 34e9, 0.05)])
def test_config_sizes(name, target, tol):
    c = load(name)
    validate(c, num_devices=8)
    n = param_count(c.model)
    assert abs(n - target) <= tol * target, f"{name}: {n:,} parameters"


def test_8b_shape():
    m = load("8b").model
    assert (m.n_layers, m.d_model, m.n_heads, m.max_seq_len) == (24, 4096, 32, 2048)
    assert list(m.anchor_layers) == [8, 16, 24]
    assert ModelSpec.from_config(m).segments == ((0, 7), (7, 15), (15, 23), (23, 24))


def test_34b_is_codellama_34b():
    m = load("34b").model
    assert (m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.d_ff, m.vocab_size, m.rope_theta, m.max_seq_len) == (
        48, 8192, 64, 8, 22016, 32000, 1e6, 16384)
    # The backbone alone is CodeLlama-34B's 33.74B parameters.
    d, f, v, kv = 8192, 22016, 32000, 8 * 128
    backbone = 2 * v * d + 48 * (2 * d * d + 2 * d * kv + 3 * d * f + 2 * d) + d
    assert 33.7e9 < backbone < 33.8e9
    assert 0 < param_count(m) - backbone < 0.02 * backbone  # the governance parts stay small
