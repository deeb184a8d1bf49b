"""A `jax.profiler` trace of a few chosen steps, where TensorBoard's profile tab finds it.

`config.profile.start_step` (< 0: off) and `config.profile.num_steps` pick the steps.
The trace goes to DIR/tb/train/plugins/profile/<timestamp>/<host>.xplane.pb, inside the
train run's TensorBoard directory (as Keras does), so `tensorboard --logdir DIR` shows
it under the Profile tab (that tab needs `pip install tensorboard-plugin-profile`).
"""
from __future__ import annotations

import jax

from promethios_jax.workdir import tb_dir


def annotate(step: int):
    """Marks one train step in the trace, so the profile's step view splits on it."""
    return jax.profiler.StepTraceAnnotation("train", step_num=int(step))


class Profiler:
    """Call `step(step, wait_for)` at the top of every step, before dispatching it.

    The trace starts before step `start_step` and stops before step
    `start_step + num_steps`, after `wait_for` (the previous step's outputs) is ready,
    so the traced steps' device work is inside the trace. Give `enabled=False` on all
    but one process: processes on one host would write the same <host>.xplane.pb.
    """

    def __init__(self, workdir: str, start_step: int, num_steps: int, enabled: bool = True,
                 run: str = "train"):
        self.logdir = str(tb_dir(workdir, run))
        self.start_step = start_step
        self.stop_step = start_step + max(num_steps, 0)
        self.enabled = enabled and start_step >= 0 and num_steps > 0
        self.active = False

    @classmethod
    def from_config(cls, workdir: str, profile_cfg, enabled: bool = True) -> "Profiler":
        return cls(workdir, profile_cfg.start_step, profile_cfg.num_steps, enabled)

    def step(self, step: int, wait_for=None) -> None:
        if not self.enabled:
            return
        # A range, not `== start_step`: a run resumed inside the window traces the rest.
        if not self.active and self.start_step <= step < self.stop_step:
            jax.profiler.start_trace(self.logdir)
            self.active = True
        elif self.active and step >= self.stop_step:
            self.close(wait_for)

    def close(self, wait_for=None) -> None:
        """Ends the trace (also call it at the end of training, for runs that stop early)."""
        if not self.active:
            return
        if wait_for is not None:
            jax.block_until_ready(wait_for)
        jax.profiler.stop_trace()
        self.active = False
        self.enabled = False  # one trace per run
