#!/usr/bin/env bash
# A multi-host job on one machine: N processes on localhost, each with 8/N simulated CPU
# devices, joined by jax.distributed (CPU collectives over gloo).
#
#   launch/local_multiprocess.sh N [train flags...]
#   launch/local_multiprocess.sh 2 --config=configs/tiny.py --workdir=/tmp/run2
#
# Each process i gets:
#   JAX_PLATFORMS=cpu
#   XLA_FLAGS=... --xla_force_host_platform_device_count=$((TOTAL_DEVICES / N))
#   PROMETHIOS_COORDINATOR=127.0.0.1:<a free port>
#   PROMETHIOS_NUM_PROCESSES=N
#   PROMETHIOS_PROCESS_ID=i
# and the train entry point passes the last three to jax.distributed.initialize.
#
# Logs: LOG_DIR/process_<i>.log (default WORKDIR/launch_logs, else a temp dir); process
# 0's output is also shown here. If any process fails, the others are stopped and the
# launcher exits with the failed process's status.
#
# Environment: TOTAL_DEVICES (default 8), PYTHON (default python), LOG_DIR,
# PROMETHIOS_MODULE (default promethios_jax.train; tests run a stand-in).
set -euo pipefail

if [[ $# -lt 1 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N [train flags...]   (N processes, N dividing TOTAL_DEVICES=${TOTAL_DEVICES:-8})" >&2
  exit 2
fi
N=$1
shift
TOTAL_DEVICES=${TOTAL_DEVICES:-8}
if ((TOTAL_DEVICES % N)); then
  echo "$0: N=$N does not divide TOTAL_DEVICES=$TOTAL_DEVICES" >&2
  exit 2
fi
PYTHON=${PYTHON:-python}
MODULE=${PROMETHIOS_MODULE:-promethios_jax.train}

# The log directory goes beside the run when --workdir is given (either spelling).
workdir=""
prev=""
for arg in "$@"; do
  case $arg in
    --workdir=*) workdir=${arg#--workdir=} ;;
    *) [[ $prev == --workdir ]] && workdir=$arg ;;
  esac
  prev=$arg
done
if [[ -z ${LOG_DIR:-} ]]; then
  if [[ -n $workdir ]]; then LOG_DIR=$workdir/launch_logs; else LOG_DIR=$(mktemp -d); fi
fi
mkdir -p "$LOG_DIR"

# The OS picks a free port; it is released before process 0 binds it, a small race
# that only another program grabbing the same port in that instant can lose.
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

pids=()

stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # Give them 10 s to exit cleanly, then kill what is left.
  for _ in $(seq 20); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 0.5
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap 'echo "interrupted: stopping all processes" >&2; stop_all; exit 130' INT TERM

for ((i = 0; i < N; i++)); do
  log=$LOG_DIR/process_$i.log
  run=(env JAX_PLATFORMS=cpu
    XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$((TOTAL_DEVICES / N))"
    PROMETHIOS_COORDINATOR=127.0.0.1:$PORT
    PROMETHIOS_NUM_PROCESSES=$N
    PROMETHIOS_PROCESS_ID=$i
    "$PYTHON" -m "$MODULE" "$@")
  if ((i == 0)); then
    "${run[@]}" > >(tee "$log") 2>&1 &
  else
    "${run[@]}" >"$log" 2>&1 &
  fi
  pids+=($!)
done
echo "started $N processes (coordinator 127.0.0.1:$PORT), logs in $LOG_DIR" >&2

# Poll rather than `wait -n`, which needs bash >= 5.1 (macOS ships 3.2).
status=0
running=$N
while ((running > 0 && status == 0)); do
  running=0
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    [[ $pid == done ]] && continue
    if kill -0 "$pid" 2>/dev/null; then
      running=$((running + 1))
      continue
    fi
    rc=0
    wait "$pid" || rc=$?
    pids[$i]=done
    if ((rc != 0)); then
      echo "process $i exited with status $rc (log: $LOG_DIR/process_$i.log); stopping the others" >&2
      status=$rc
      break
    fi
  done
  ((running > 0 && status == 0)) && sleep 0.5
done

if ((status != 0)); then
  live=()
  for pid in "${pids[@]}"; do [[ $pid != done ]] && live+=("$pid"); done
  pids=("${live[@]+"${live[@]}"}")
  ((${#pids[@]})) && stop_all
  wait 2>/dev/null || true
  exit "$status"
fi
wait  # lets process 0's tee finish writing
echo "all $N processes finished; logs in $LOG_DIR" >&2
