"""urial: golden renderings, stop-and-strip, the shipped prompt, and prefix caching on the real engine."""

from __future__ import annotations

import re
import string

import pytest

from alignd.decoders import DecodeContext, DecodeRequest, DecoderError
from alignd.decoders.urial import DEFAULT_PROMPT_FILE, STOPS, Urial, UrialOptions, UrialParams, clean, render
from alignd.engines.protocol import SamplingConfig

from scripted_engine import ScriptedEngine

PREFIX = "# Instruction\n\nBe kind."


def test_one_turn_rendering():
    assert render(PREFIX, "Hi there") == (
        "# Instruction\n\nBe kind.\n\n# Query:\n```\nHi there\n```\n\n# Answer:\n```\n"
    )


def test_two_turn_rendering_with_a_system_message():
    messages = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "How are you?"},
    ]
    assert render(PREFIX, messages) == (
        "# Instruction\n\nBe kind.\n\nAnswer in French.\n\n"
        "# Query:\n```\nHello\n```\n\n# Answer:\n```\nBonjour !\n```\n\n"
        "# Query:\n```\nHow are you?\n```\n\n# Answer:\n```\n"
    )
    with pytest.raises(DecoderError):
        render(PREFIX, messages[:3])  # ends with the assistant


def test_shipped_prompt_has_an_instruction_and_three_examples():
    text = DEFAULT_PROMPT_FILE.read_text()
    assert text.startswith("# Instruction")
    assert len(re.findall(r"^# Query:$", text, re.M)) == 3 and len(re.findall(r"^# Answer:$", text, re.M)) == 3
    rendered = render(text.strip(), "Why is the sky blue?")
    assert len(re.findall(r"^# Query:$", rendered, re.M)) == 4 and rendered.endswith("# Answer:\n```\n")


def test_clean_strips_backticks_and_any_next_query():
    assert clean("  Paris.\n```\n\n# Query:\n```\nmore") == "Paris."
    assert clean("Sure!\n# User: hi") == "Sure!"


async def test_stops_and_greedy_settings_reach_the_engine(tmp_path):
    prompt_file = tmp_path / "p.md"
    prompt_file.write_text("ab")
    engine = ScriptedEngine(samples=["abc\n```"], vocab=string.printable)
    decoder = Urial(UrialParams(), UrialOptions(prompt_file=str(prompt_file)))
    request = DecodeRequest("u1", [1], "ab", SamplingConfig(max_tokens=100, temperature=1.0, stop=("zz",)))
    result = await decoder.decode(request, DecodeContext(engine))
    params = engine.calls[0].params
    assert set(STOPS) | {"zz"} <= set(params.stop)
    assert params.temperature == 0.0 and params.repetition_penalty == 1.1
    assert engine.calls[0].prompts[0] == engine.tokenizer.encode(render("ab", "ab"))
    assert result.choices[0].text == "abc"
    with pytest.raises(DecoderError):
        await decoder.decode(DecodeRequest("u2", [1], "ab", SamplingConfig(), n=2), DecodeContext(engine))


async def test_real_engine_stops_strips_and_reuses_the_cached_prefix(vllm_engine, tmp_path):
    # The tiny model's context is 512 tokens: a short custom prefix, still several 32-token blocks long.
    prompt_file = tmp_path / "short.md"
    prompt_file.write_text(
        "# Instruction\n\nYou are a helpful assistant. Answer clearly and politely. " * 4
        + "\n\n# Query:\n```\nSay hello.\n```\n\n# Answer:\n```\nHello! How can I help you today?\n```"
    )
    decoder = Urial(UrialParams(mode="sample", temperature=1.0), UrialOptions(prompt_file=str(prompt_file)))
    results = []
    for i, question in enumerate(["What is the sea?", "Name a colour."]):
        request = DecodeRequest(f"urial-{i}", [], question, SamplingConfig(max_tokens=60, seed=i))
        results.append(await decoder.decode(request, DecodeContext(vllm_engine)))
    for result in results:
        text = result.choices[0].text
        assert "# Query" not in text and "```" not in text and text == text.strip()
    assert results[1].usage.engine_cached_tokens >= 64  # the constant prefix came from the prefix cache
    assert results[1].usage.prompt_tokens > 100


@pytest.mark.slow
def test_shipped_prompt_is_compact_for_smollm2():
    from transformers import AutoTokenizer

    from alignd.engines.models import prepare_default_model

    tok = AutoTokenizer.from_pretrained(prepare_default_model())
    assert len(tok.encode(render(DEFAULT_PROMPT_FILE.read_text().strip(), "Hello"))) < 900
