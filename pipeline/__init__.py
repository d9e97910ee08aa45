"""Orchestration: config, catalog, decoding, feature store, stages and the CLI.

This package knows nothing about model internals; `extractors/` turn clips into arrays and
`models/` turn batches into logits.
"""
__version__ = "0.1.0"
