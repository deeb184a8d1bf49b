"""The governance transformer (Flax NNX): Llama backbone, telemetry conditioning, heads."""
import math

import jax
from flax import nnx

# Parameters carry logical axis names only; the sharding module maps them onto the mesh.
# Eager sharding would try to place annotated variables on a mesh at creation.
nnx.use_eager_sharding(False)

from promethios_jax.model.model import GovernanceTransformer, ModelOutput, positions_from_segments  # noqa: E402
from promethios_jax.model.spec import ModelSpec, layer_location, segment_bounds  # noqa: E402

__all__ = ["GovernanceTransformer", "ModelOutput", "ModelSpec", "layer_location", "positions_from_segments",
           "segment_bounds", "param_count"]


def param_count(model_cfg) -> int:
    """Parameters of the model a config describes, counted abstractly (nothing allocated)."""
    abstract = nnx.eval_shape(lambda: GovernanceTransformer(model_cfg, rngs=nnx.Rngs(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
