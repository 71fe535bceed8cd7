"""Shared code of the emotion recognition notebooks: one module per concern, imported downwards (docs/imports.md)."""

__version__ = "0.2.0"
