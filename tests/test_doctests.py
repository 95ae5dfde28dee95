"""Run the runnable examples in the package's docstrings, so documentation cannot drift from the code."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import alignd

MODULES = sorted(
    m.name
    for pkg in ("alignd.engines", "alignd.rewards", "alignd.decoders", "alignd.server")
    for m in pkgutil.walk_packages(importlib.import_module(pkg).__path__, prefix=f"{pkg}.")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"


def test_package_has_a_version():
    assert alignd.__version__
