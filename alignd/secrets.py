"""Keeping secrets out of logs, admin answers, traces and error messages.

Secrets are typed: every API key, token or password a configuration block can hold is a ``SecretStr`` from the
moment the block is parsed (the server's keys, engine and reward blocks, plug-ins' parameter models), and a dump
of a ``SecretStr`` is ``**********``. Two kinds of secret do not arrive typed, and :func:`redact` masks them in
anything dumped for a log: a value under a key that names a secret in a free-form mapping (a ``python`` reward's
``kwargs``, an engine argument passed through to vLLM), and the password of a URL (``http://user:pw@host``).

>>> redact({"urls": ["http://ops:hunter2@gpu1:8000"], "kwargs": {"api_key": "sk-1", "top_k": 5}})
{'urls': ['http://ops:**********@gpu1:8000'], 'kwargs': {'api_key': '**********', 'top_k': 5}}
>>> shown_url("http://ops:hunter2@gpu1:8000/v1"), shown_url("http://gpu1:8000")
('http://ops:**********@gpu1:8000/v1', 'http://gpu1:8000')
"""

from __future__ import annotations

import re
from typing import Any

MASK = "**********"
"""What a secret is shown as (pydantic's own rendering of a ``SecretStr``)."""

_SECRET_KEY = re.compile(r"(?i)(api[_-]?key|token|secret|password|passwd|authorization|credential|private[_-]?key)")
"""Mapping keys whose values are secrets wherever they appear."""
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^/\s:@]+:)(?P<password>[^/\s@]+)(?=@)")


def shown_url(url: str) -> str:
    """``url`` with its password (``user:password@``) masked: what logs, metrics labels and errors may show."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, url)


def redact(data: Any) -> Any:
    """``data`` (what a model dump gives: dicts, lists, strings...) with secrets masked: values under keys that
    name a secret, and URL passwords."""
    if isinstance(data, dict):
        return {key: MASK if _names_secret(key, value) else redact(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact(v) for v in data]
    if isinstance(data, str):
        return shown_url(data)
    return data


def _names_secret(key: Any, value: Any) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key)) and value not in (None, "", MASK)
