"""Synthetic Emotic and Flickr8k datasets, written in exactly the real raw formats.

Why: CI and the demo run need data, and the real datasets cannot be shipped. The prep scripts must meet the
same awkward files as on real downloads (a MATLAB ``.mat`` in the PAMI nesting, grayscale / CMYK JPEGs, a PNG
behind a ``.jpg`` name, boxes that leave the image, broken records, captions with commas and quotes), and the
notebooks need data that is *learnable* from frozen features, so that their comparisons mean something.

Read the modules in this order:

- ``cues``         how each emotion category shows in pixels and in words (what makes the data learnable);
- ``scenes``       Emotic's latent scenes (mood, persons, labels, boxes), the planted bad records, the renderer;
- ``emotic``       the stand-in captioner and the ``Annotations.mat`` / JPEG / ``descriptions.csv`` writer;
- ``flickr``       Flickr8k scenes, captions and both layouts;
- ``drawing``, ``sizes``   shared pixel helpers and the size profiles;
- ``learnability`` the ``--check`` report with the repository's encoders and metrics;
- ``cli``          ``make_all`` and the command line::

    python -m utils.synthetic --size {smoke,demo} --seed 0 --out DIR
    python -m utils.synthetic --check DIR
"""
from .cli import main, make_all
from .cues import CUES
from .emotic import make_emotic
from .flickr import make_flickr8k
from .scenes import EMOTIC_FOLDERS
from .sizes import SIZES

__all__ = ["CUES", "EMOTIC_FOLDERS", "SIZES", "main", "make_all", "make_emotic", "make_flickr8k"]
