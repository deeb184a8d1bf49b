"""Hugging Face Llama interop: safetensors I/O (`safetensors_io`) and import/export of a
workdir (`hf`); the tensor and config mapping is `promethios_jax.model.hf_llama`, the CLI
`python -m promethios_jax.convert` (docs/interop.md)."""
from promethios_jax.interop.hf import build_import_config, export_params, export_workdir, import_hf  # noqa: F401
from promethios_jax.model.hf_llama import ConversionError  # noqa: F401
