"""Hugging Face Llama interop from the command line (docs/interop.md):

    python -m promethios_jax.convert export --workdir=DIR [--step=N] --out=HF_DIR [--max_shard_size=5GB]
    python -m promethios_jax.convert import --hf=HF_DIR --out=DIR [--config=configs/X.py] [--governance=auto|fresh]

Neither direction needs torch. The work is `promethios_jax.interop`'s.
"""
from __future__ import annotations

import argparse
import os
import sys

from promethios_jax.config import ConfigError
from promethios_jax.interop import ConversionError, export_workdir, import_hf
from promethios_jax.workdir import WorkdirError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m promethios_jax.convert",
                                description="Hugging Face Llama interop for the Promethios backbone.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write a workdir's checkpoint as a HF Llama directory")
    e.add_argument("--workdir", required=True)
    e.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    e.add_argument("--out", required=True, help="HF directory to write")
    e.add_argument("--max_shard_size", default="5GB", help="split model.safetensors above this (e.g. 500MB, 5GB)")
    i = sub.add_parser("import", help="start a workdir from a HF Llama directory")
    i.add_argument("--hf", required=True, help="HF directory with config.json and safetensors")
    i.add_argument("--out", required=True, help="workdir to create")
    i.add_argument("--config", default=None, help="config file for the non-model keys (file.py or file.py:arg)")
    i.add_argument("--governance", default="auto", choices=("auto", "fresh"),
                   help="auto: read governance.safetensors when present and fitting; fresh: always initialise")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "export":
            export_workdir(args.workdir, args.out, args.step, args.max_shard_size)
        else:
            import_hf(args.hf, args.out, args.config, args.governance)
    except (ConversionError, ConfigError, WorkdirError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
