"""nisbflow: dense neuron segmentation of EM volumes, the NISB BANIS baseline at scale.

Axis order everywhere is positional XYZ, as NISB stores it: ``img[x, y, z, c]``, ``seg[x, y, z]``.
"""

__version__ = "0.2.0"
