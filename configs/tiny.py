"""CPU demo: a small governance transformer that learns visibly in minutes on 2 cores."""
from promethios_jax.config import base_config


def get_config():
    c = base_config()
    # Model, data and train values are the base defaults, which are sized for this demo.
    return c
