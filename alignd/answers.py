"""Final answers read from generated text: what ``self_consistency`` votes on and what ``alignd eval`` grades
with, one parser for both (an evaluation must grade by the rule the decoder voted by).

>>> last_number("3 apples and 4 pears make 7.0."), last_number("It costs 1,200 dollars."), last_number("none")
('7', '1200', None)
>>> correct("so 2 + 2 = 4.", "4"), correct("Paris", "paris"), correct("It is 5", "4")
(True, True, False)
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
"""A number: digits with optional thousands separators (groups of three) and decimals. "2,3" is two numbers."""


def last_number(text: str) -> str | None:
    """The last number in ``text``, normalized: thousands separators dropped, integral values without ".0", so
    answers that differ only in spelling ("1,200", "1200.0") are the same answer."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    value = found[-1].replace(",", "")
    number = float(value)
    return str(int(number)) if number.is_integer() else str(number)


def exact(text: str) -> str | None:
    """The whole answer as its final answer: stripped and lower-cased (``None`` when empty)."""
    return text.strip().lower() or None


def correct(text: str, answer: str) -> bool:
    """Whether ``text``'s final answer is ``answer``: their last numbers compared when both have one, else the
    stripped, lower-cased texts."""
    got, expected = last_number(text), last_number(answer)
    if got is not None and expected is not None:
        return float(got) == float(expected)
    return exact(text) == exact(answer)
