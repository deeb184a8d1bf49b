"""The Llama backbone: decoder blocks stacked per segment and the layer scan."""
from promethios_jax.model.backbone.transformer import Context, DecoderBlock, remat_policy, run_segment

__all__ = ["Context", "DecoderBlock", "remat_policy", "run_segment"]
