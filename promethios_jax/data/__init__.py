"""Governance data: the scenario generator, the tokenizer and the Grain pipeline.

`schema` holds the label spaces and the governance rule (documented in RULES.md),
`generate` writes ArrayRecord shards and a manifest, `records` reads them back,
`tokenizer` turns examples into ids, `packing` fits and packs them into rows, and
`pipeline` serves training and eval batches, whose fields `batch` declares once;
`position` is the training stream's saved position, `synthetic` draws random batches.
"""
