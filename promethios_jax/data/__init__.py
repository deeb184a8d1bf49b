"""Governance data: the scenario generator, the tokenizer and the Grain pipeline.

`schema` holds the label spaces and the governance rule (documented in RULES.md),
`generate` writes ArrayRecord shards and a manifest (telemetry from `draws`, texts from
`templates` through `wording`), `records` reads them back, `baselines` scores the
telemetry-only rules and the byte n-gram the eval sets beside the model,
`tokenizer` turns examples into ids, `packing` fits and packs them into rows, and
`pipeline` serves training and eval batches, whose fields `batch` declares once;
`position` is the training stream's saved position, `synthetic` draws random batches.
"""
