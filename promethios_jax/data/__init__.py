"""Governance data: the scenario generator, the tokenizer and the Grain pipeline.

`schema` holds the label spaces and the governance rule (documented in RULES.md),
`generate` writes ArrayRecord shards and a manifest, `tokenizer` turns examples into
ids, and `pipeline` packs them into training batches.
"""
