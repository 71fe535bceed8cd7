"""Shared code of the multi-modal emotion recognition notebooks: one module per concern, imported downwards only
(docs/imports.md); README.md, "How the code is organised", says where each thing lives.

What the notebooks import: ``config`` (settings per profile), ``emotic`` and ``flickr8k`` (parts 1 and 2: data,
train-or-load, tables, findings), ``robustness`` (part 3: attacks, defence, poisoning) and ``plots``. The rest are
their building blocks. ``prep`` (parsing and streaming I/O) and ``synthetic`` (the generator of the bundled
datasets) serve the prep scripts only.
"""

__version__ = "0.2.0"
