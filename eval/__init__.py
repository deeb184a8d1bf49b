"""The eval job: `python -m eval --workdir=DIR` scores a run's checkpoints (docs/eval.md).

`eval.predict` makes the prediction rows (forward and generation), `eval.scoring` the
figures from the rows, `eval.metrics` the formulas (pure numpy), `eval.report` the
pictures, the markdown report and the summary line, `eval.runner` the job (restore,
score, write) and its watch loop.
"""
