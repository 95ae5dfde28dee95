"""Plug-ins the test suite installs into server processes: a decoder that fails the way a bug would, reward
functions that fail on cue, and the worked example plug-in of ``examples/plugin`` built and installed for real.

An installed distribution is a package plus a ``.dist-info`` folder with ``entry_points.txt`` (what pip writes);
a folder holding both, put on a server's ``PYTHONPATH``, is found by ``importlib.metadata`` like any plug-in.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_MODULE = '''
"""Test-only alignd plug-ins."""
import collections

from alignd.decoders import Decoder, DecoderParams


class Explode(Decoder[DecoderParams]):
    """A decoder with a bug: it raises an exception nothing maps, as an unexpected failure would."""

    description = "test only: raises an unmapped exception"

    async def decode(self, request, ctx):
        raise RuntimeError("boom in /srv/secret/path/decoder.py")


class Parrot(Decoder[DecoderParams]):
    """Answers with the last user message, as if the model had written it (the playground's escaping test)."""

    description = "test only: repeats the user's message"

    async def decode(self, request, ctx):
        from alignd.decoders import Candidate
        from alignd.rewards import prompt_text

        request = self.prepare(request, ctx.engine, ctx.rewards)
        text = prompt_text(request.prompt)
        answer = Candidate(index=0, text=text, token_ids=ctx.engine.tokenizer.encode(text), finish_reason="stop")
        await ctx.score(request.prompt, [answer])
        return ctx.result(request, [answer], [answer])


_calls = collections.Counter()


def fail_on_third_call(prompt, completions):
    """Scores by length until the third call for a prompt, then raises (a reward failing mid-search)."""
    key = str(prompt)
    _calls[key] += 1
    if _calls[key] >= 3:
        raise RuntimeError("the scorer fell over")
    return [float(len(c)) for c in completions]
'''


def write_test_plugins(folder: Path) -> Path:
    """Materialize the test plug-in distribution in ``folder``; returns ``folder`` (for ``PYTHONPATH``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "alignd_test_plugins.py").write_text(_MODULE)
    info = folder / "alignd_test_plugins-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: alignd-test-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[alignd.decoders]\nexplode = alignd_test_plugins:Explode\nparrot = alignd_test_plugins:Parrot\n"
    )
    return folder


def write_broken_plugin(folder: Path) -> Path:
    """A plug-in distribution whose module cannot be imported."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "alignd_broken_plugin.py").write_text("import a_module_that_does_not_exist\n")
    info = folder / "alignd_broken_plugin-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: alignd-broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[alignd.rewards]\nbroken = alignd_broken_plugin:Broken\n")
    return folder


def install_example_plugin(target: Path) -> Path:
    """``pip install`` the README's worked plug-in (examples/plugin) into ``target``, as a user would."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT / "examples" / "plugin"),
        ],
        check=True,
        capture_output=True,
    )
    return target
