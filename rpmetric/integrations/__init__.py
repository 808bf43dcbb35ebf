"""rpmetric inside other libraries' APIs. Each integration is a submodule that imports its library
only when it is imported itself, so ``import rpmetric`` never needs them:

- :mod:`rpmetric.integrations.torchmetrics`: ``RobustPerceptualSimilarity`` and ``TwoAFCAccuracy``,
  torchmetrics Metrics (``pip install "rpmetric[torchmetrics]"``).
"""
