# XLA flags for H100/H200 training runs. Sourced by gpu_8x_h100.sh and slurm.sbatch.
#
#   source launch/xla_gpu_flags.sh
#   export XLA_FLAGS="$(h100_xla_flags NUM_NODES GPUS_PER_NODE) ${XLA_FLAGS:-}"
#
# Every flag here exists in the jaxlib this project pins: tests/test_launch.py starts
# jax with them (an unknown flag aborts XLA at start), and XLA's GPU compiler accepts them
# for an H100 target: `python -m promethios_jax.gpu_aot flags --topology=1x2x8` (gpu-aot
# extra, no GPU needed; tests/test_gpu_aot.py); `--dry_run --target` compiles with them. Sources: JAX's "GPU performance
# tips", NVIDIA JAX-Toolbox GPU_performance.md, MaxText's GPU recipes.

h100_xla_flags() {
  local nodes=${1:-1} gpus=${2:-8}
  # Combine small collectives into ~1 GiB all-reduces; all-gather and reduce-scatter
  # thresholds shrink with the device count, since each shard is 1/devices of a weight.
  local threshold=$((1 << 30))
  local devices=$((nodes * gpus))
  local flags=(
    # Overlap collectives (FSDP all-gathers, gradient reduce-scatters) with compute.
    --xla_gpu_enable_latency_hiding_scheduler=true
    --xla_gpu_enable_highest_priority_async_stream=true
    --xla_gpu_all_reduce_combine_threshold_bytes=${threshold}
    --xla_gpu_all_gather_combine_threshold_bytes=$((threshold / devices))
    --xla_gpu_reduce_scatter_combine_threshold_bytes=$((threshold / (devices * 2)))
    --xla_gpu_enable_all_gather_combine_by_dim=false
    --xla_gpu_enable_reduce_scatter_combine_by_dim=false
    # Prefetch the next scanned layer's weights while this one computes.
    --xla_gpu_enable_pipelined_all_gather=true
    --xla_gpu_enable_pipelined_reduce_scatter=true
    --xla_gpu_enable_pipelined_all_reduce=true
    --xla_gpu_enable_while_loop_double_buffering=true
    # cuBLAS beats Triton GEMMs for these bf16 shapes.
    --xla_gpu_enable_triton_gemm=false
    # CUDA graphs off: with scanned layers they add memory and little speed. Try
    # --xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL if a profile shows launch gaps.
    --xla_gpu_enable_command_buffer=
    # The config's remat policy decides what is recomputed; without this XLA would
    # silently rematerialize to fit instead of failing the memory check loudly.
    --xla_disable_hlo_passes=rematerialization
  )
  echo "${flags[*]}"
}

# Memory and runtime environment shared by the GPU recipes.
h100_env() {
  # JAX preallocates this fraction of each GPU; the rest is left to cuDNN/NCCL workspaces.
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}
  # Compiling the 8B step takes minutes; the cache makes restarts and resumes fast.
  export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/jax_compilation}
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}
}
