"""Promethios-JAX: a JAX/Flax training stack for a governance-native language model."""

__version__ = "0.1.0"


def load(workdir, step=None, mesh_shape=None):
    """Restores a trained model from a workdir's checkpoints: returns (model, config)."""
    from promethios_jax.checkpoint import load as _load

    return _load(workdir, step=step, mesh_shape=mesh_shape)
