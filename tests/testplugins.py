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

from pydantic import SecretStr

from alignd.decoders import Decoder, DecoderParams
from alignd.rewards import Reward, RewardParams


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


class GuardedParams(RewardParams):
    token: SecretStr
    """A credential, as a plug-in reward that calls a service would hold one (typed as a secret)."""


class Guarded(Reward[GuardedParams]):
    """Scores by length, with its token at hand (the secrets test's plug-in)."""

    async def score(self, prompt, completions):
        assert self.params.token.get_secret_value()
        return [float(len(c)) for c in completions]


def lengths(prompt, completions, api_key=None):
    """Scores by length; takes an ``api_key`` keyword as a callable reaching a service would."""
    assert api_key
    return [float(len(c)) for c in completions]


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
        "[alignd.rewards]\nguarded = alignd_test_plugins:Guarded\n"
    )
    return folder


BAD_CAPS = {
    # a typo in cap(): refused when the module is imported
    "cap_typo": """
from pydantic import Field
from alignd.decoders import Decoder, DecoderParams, cap

class Params(DecoderParams):
    num_candidates: int = Field(4, ge=1, le=64, json_schema_extra=cap("max_candidtes"))

class Broken(Decoder[Params]):
    async def decode(self, request, ctx): ...
""",
    # the same mark written by hand: refused when the registry loads the plug-in
    "hand_written": """
from pydantic import Field
from alignd.decoders import Decoder, DecoderParams

class Params(DecoderParams):
    num_candidates: int = Field(4, ge=1, le=64, json_schema_extra={"x-alignd-cap": "max_candidtes"})

class Broken(Decoder[Params]):
    async def decode(self, request, ctx): ...
""",
}
"""Decoder plug-ins whose parameter is capped by a limit the server does not have."""


def write_broken_plugin(
    folder: Path, source: str = "import a_module_that_does_not_exist\n", group: str = "alignd.rewards"
) -> Path:
    """A plug-in distribution publishing ``alignd_broken_plugin:Broken`` as ``broken`` in ``group`` (by default a
    module that cannot be imported)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "alignd_broken_plugin.py").write_text(source)
    info = folder / "alignd_broken_plugin-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: alignd-broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\nbroken = alignd_broken_plugin:Broken\n")
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
