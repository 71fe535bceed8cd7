"""Shared code of the notebooks, one module per concern (README.md: where each lives; docs/imports.md: the layers)."""

__version__ = "0.2.0"
