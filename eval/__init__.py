"""The eval job: `python -m eval --workdir=DIR` scores a run's checkpoints (docs/eval.md).

`eval.predict` makes the prediction rows (forward and generation), `eval.scoring` the
figures from the rows (every split, the gates on the hard rows), `eval.metrics` the
formulas (pure numpy), `eval.reference` the baselines and oracles beside the model and
the 95% intervals, `eval.invariance` the padded and swapped requests of
`hitl_flip_rate`, `eval.communication` the text checks, `eval.report` the
pictures, the markdown report and the summary line, `eval.runner` the job (restore,
score, write) and its watch loop.
"""
