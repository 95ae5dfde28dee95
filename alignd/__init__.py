"""alignd: inference-time alignment on vLLM.

The code lives in four sibling packages, each importable on its own: ``alignd.engines`` (talk to vLLM),
``alignd.rewards`` (score text), ``alignd.decoders`` (search over candidates) and ``alignd.server`` (HTTP).
"""

__version__ = "0.1.0"
