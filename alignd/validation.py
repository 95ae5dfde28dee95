"""Validation errors said without the values that failed: a configuration error must never print the secret it
was given (pydantic's own message quotes every ``input_value``).

>>> from pydantic import BaseModel, SecretStr
>>> class Scorer(BaseModel):
...     url: str
...     api_key: SecretStr
>>> try:
...     Scorer(url=1, api_key=["sk-live-123"])
... except Exception as exc:
...     print(summary(exc))
url: Input should be a valid string; api_key: Input should be a valid string
"""

from __future__ import annotations

from pydantic import ValidationError


def summary(exc: ValidationError, limit: int = 3) -> str:
    """Where each error is (dotted) and what is wrong, for up to ``limit`` errors; never the input values."""
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}" if where else str(err["msg"]))
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
