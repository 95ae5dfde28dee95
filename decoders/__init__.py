"""Decoders: search over candidates from an engine, scored by rewards. Importing registers the built-ins."""

from . import (  # noqa: F401  (importing registers them)
    args,
    best_of_n,
    blockwise_best_of_n,
    ctrl,
    deal,
    diverse_beam,
    particle_filter,
    qalign,
    sample,
    self_consistency,
    speculative_rejection,
    step_beam,
    transfer_q,
    urial,
)
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
from .types import Budget, Candidate, Cost, DecodeRequest, DecoderError, DecodeResult, Usage

__all__ = [
    "Budget",
    "Candidate",
    "Cost",
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
