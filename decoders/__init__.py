"""Decoders: search over candidates from an engine, scored by rewards. Importing registers the built-ins."""

from . import best_of_n, ctrl, diverse_beam, sample, urial  # noqa: F401  (registration side effects)
from .protocol import (
    Candidate,
    DecodeContext,
    Decoder,
    DecodeRequest,
    DecoderError,
    DecodeResult,
    DecoderParams,
    Usage,
    cap,
    decoder_registry,
    rank,
    ranked_or_raise,
    register,
)

__all__ = [
    "Candidate",
    "DecodeContext",
    "DecodeRequest",
    "DecodeResult",
    "Decoder",
    "DecoderError",
    "DecoderParams",
    "Usage",
    "cap",
    "decoder_registry",
    "rank",
    "ranked_or_raise",
    "register",
]
