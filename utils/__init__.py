"""Shared code of the multi-modal emotion recognition notebooks: one module per concern, imported downwards only
(docs/imports.md); README.md, "How the code is organised", says where each thing lives."""

__version__ = "0.2.0"
