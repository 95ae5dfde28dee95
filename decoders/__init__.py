"""Decoders: search over candidates from an engine, scored by rewards. Importing registers the built-ins."""

from . import best_of_n, ctrl, deal, diverse_beam, sample, transfer_q, urial  # noqa: F401  (registers them)
from .context import DecodeContext
from .protocol import (
    Decoder,
    DecoderParams,
    StreamingDecoder,
    all_dropped,
    cap,
    decoder_registry,
    rank,
    ranked_or_raise,
    register,
)
from .types import Candidate, DecodeRequest, DecoderError, DecodeResult, Usage

__all__ = [
    "Candidate",
    "DecodeContext",
    "DecodeRequest",
    "DecodeResult",
    "Decoder",
    "DecoderError",
    "DecoderParams",
    "StreamingDecoder",
    "Usage",
    "all_dropped",
    "cap",
    "decoder_registry",
    "rank",
    "ranked_or_raise",
    "register",
]
