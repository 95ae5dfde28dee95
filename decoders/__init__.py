"""Decoders: search over candidates from an engine, scored by rewards. Importing registers the built-ins."""

from . import best_of_n, ctrl, deal, diverse_beam, sample, transfer_q, urial  # noqa: F401
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
