"""The base of every request model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Request models: NaN and infinities are refused (Python's JSON parser accepts them)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore", populate_by_name=True)
