#!/usr/bin/env bash
# One rented 8-GPU host (Lambda Labs, RunPod, ...): one process drives all 8 GPUs.
#
#   launch/gpu_8x_h100.sh [WORKDIR] [extra train flags...]
#   launch/gpu_8x_h100.sh /data/run1 --config.monitor.hourly_cost_usd=20
#
# Run from the repository root with the project's environment active. CONFIG picks
# the config file (default configs/8b.py). The same flags suit H200 hosts.
set -euo pipefail

cd "$(dirname "$0")/.."
source launch/xla_gpu_flags.sh

WORKDIR=${1:-runs/8b-$(date +%Y%m%d-%H%M%S)}
shift || true
CONFIG=${CONFIG:-configs/8b.py}
PYTHON=${PYTHON:-python}

export XLA_FLAGS="$(h100_xla_flags 1 8) ${XLA_FLAGS:-}"
h100_env

echo "workdir: $WORKDIR   config: $CONFIG"
echo "monitor: tensorboard --logdir $WORKDIR --bind_all"
# A quick check (no preallocation) that JAX sees the GPUs before a long compile.
XLA_PYTHON_CLIENT_PREALLOCATE=false "$PYTHON" - <<'EOF'
import jax
devices = jax.devices()
print(f"{len(devices)} x {devices[0].device_kind}")
if devices[0].platform != "gpu":
    raise SystemExit("no GPU visible to JAX: install a CUDA build of jax and check nvidia-smi")
EOF

exec "$PYTHON" -m promethios_jax.train --config="$CONFIG" --workdir="$WORKDIR" "$@"
