"""Encoder architecture families, one module each, in a registry keyed by HF's ``model_type``.

An ``Arch`` says what ``models/encoder.py`` builds differently for a family (token-type embeddings,
position ids, a relative position bias) and what ``models/hf_import.py`` reads and writes (the
family's ``config.json`` fields and its tensor names). A new family is one new module that calls
``registry.register`` plus its import below.
"""
from __future__ import annotations

# The built-in families register themselves (this order is ARCHS's order).
from edistill.models.arch import bert, mpnet  # noqa: F401,I001
from edistill.models.arch.registry import ARCHS, Arch, LayerTensors, get, register  # noqa: F401  The API.
