"""The eval job: `python -m eval --workdir=DIR` scores a run's checkpoints (docs/eval.md).

`eval.metrics` holds the figures (pure numpy), `eval.report` the pictures and the
markdown report, `eval.runner` the job (restore, forward, generate, write, watch).
"""
