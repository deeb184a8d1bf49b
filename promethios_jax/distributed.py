"""Multi-process start-up flags shared by the programs that run on many hosts (train, bench).

`jax.distributed.initialize()` must run before the first use of a device; importing jax
does not touch one, so the programs import at the top and call `initialize()` first
thing in main.
"""
from __future__ import annotations

import os

import jax
from absl import flags


class DistributedError(RuntimeError):
    pass


def define_flags() -> None:
    """--coordinator_address, --num_processes, --process_id, --distributed (once per program)."""
    if "coordinator_address" in flags.FLAGS:
        return
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
    flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with cluster auto-detection "
                      "(SLURM, Kubernetes, ...) even without explicit coordinator flags.")


def initialize() -> None:
    """jax.distributed.initialize() from the flags or PROMETHIOS_* environment, if asked for."""
    f = flags.FLAGS
    coord = f.coordinator_address or os.environ.get("PROMETHIOS_COORDINATOR")
    nproc = f.num_processes if f.num_processes is not None else os.environ.get("PROMETHIOS_NUM_PROCESSES")
    pid = f.process_id if f.process_id is not None else os.environ.get("PROMETHIOS_PROCESS_ID")
    if coord or nproc is not None:
        if not (coord and nproc is not None and pid is not None):
            raise DistributedError("multi-host needs all of coordinator address, process count and process id "
                                   f"(got coordinator={coord!r}, num_processes={nproc!r}, process_id={pid!r})")
        kwargs = {}
        if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
            kwargs["initialization_timeout"] = 120
        jax.distributed.initialize(coord, int(nproc), int(pid), **kwargs)
    elif f.distributed:
        jax.distributed.initialize()
