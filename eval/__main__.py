"""`python -m eval --workdir=DIR [--step=N] [--watch] [--fail_on_gates] [--split=heldout]`.

Exit codes: 0 scored (gates may have failed), 2 bad input (no checkpoint, unknown step,
checkpoint that does not fit its config, missing data), 3 a gate failed and
--fail_on_gates was given.
"""
from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2
EXIT_GATES_FAILED = 3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="the training run's directory (DIR/checkpoints/<step>/)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step to score (default: the newest)")
    p.add_argument("--watch", action="store_true",
                   help="score each new checkpoint once while training runs; stop when DIR/TRAINING_DONE appears")
    p.add_argument("--fail_on_gates", action="store_true", help="exit with code 3 when a quality gate fails")
    p.add_argument("--split", default="heldout", help="data split to score (default: heldout)")
    p.add_argument("--num_generate", type=int, default=None,
                   help="held-out prompts to generate responses for (default: config.eval.num_generate)")
    p.add_argument("--batch_size", type=int, default=None, help="eval batch size (default: config.eval.batch_size)")
    p.add_argument("--poll_seconds", type=float, default=10.0, help="--watch: seconds between looks at DIR")
    p.add_argument("--max_wait_seconds", type=float, default=None,
                   help="--watch: give up after this long with nothing new to score (default: wait forever)")
    args = p.parse_args(argv)
    if args.watch and args.step is not None:
        p.error("--step and --watch exclude each other")
    return args


class _LazyWriter:
    """Opens the TensorBoard writer at the first result, so that a run that scores nothing
    (no checkpoint, bad step) creates no DIR/tb/eval."""

    def __init__(self, workdir):
        self.workdir, self._w = workdir, None

    def write_scalars(self, step, scalars):
        if self._w is None:
            from promethios_jax.metrics import MetricsWriter  # with the runner: --help needs no jax

            self._w = MetricsWriter(self.workdir, run="eval", jsonl_name=None)
        self._w.write_scalars(step, scalars)

    def flush(self):
        if self._w is not None:
            self._w.flush()

    def close(self):
        if self._w is not None:
            self._w.close()


def main(argv=None) -> int:
    args = parse_args(argv)
    from eval import runner  # after argument parsing: --help needs no jax

    kw = dict(split=args.split, num_generate=args.num_generate, batch_size=args.batch_size)
    writer = _LazyWriter(args.workdir)
    try:
        if args.watch:
            results = runner.watch(args.workdir, poll_seconds=args.poll_seconds,
                                   max_wait_seconds=args.max_wait_seconds, writer=writer, **kw)
        else:
            results = [runner.evaluate(args.workdir, step=args.step, writer=writer, **kw)]
    except runner.EvalError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        writer.close()
    if not results:
        return 0
    # Under --watch early checkpoints are expected to fail; the newest one scored decides.
    last = max(results, key=lambda r: r["step"])
    failed = [name for name, g in last["gates"].items() if not g["passed"]]
    if failed:
        print(f"quality gates failed at step {last['step']}: {', '.join(failed)}", flush=True)
        if args.fail_on_gates:
            return EXIT_GATES_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
