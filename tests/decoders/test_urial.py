"""urial: golden renderings, the prompt file, stop-and-strip (also streamed), and the prefix cache on real vLLM."""

from __future__ import annotations

import random
import re
import string

import pytest
from pydantic import ValidationError

from alignd.decoders import DecodeContext, DecodeRequest, DecoderError, DecodeResult
from alignd.decoders.urial import (
    DEFAULT_PROMPT_FILE,
    STOPS,
    AnswerStream,
    Urial,
    UrialOptions,
    UrialParams,
    clean,
    load_prompt,
)
from alignd.engines.protocol import SamplingConfig, StreamDelta
from alignd.rewards import RewardSet, RewardTerm, build_reward

from scripted_engine import ScriptedEngine

SHORT_PROMPT = "# Instruction\n\nBe brief and kind.\n\n# Query:\n```\nHi\n```\n\n# Answer:\n```\nHello!\n```\n"

# For the tiny Llama (512-token context): words its tokenizer knows, about 130 tokens, so several full 32-token
# blocks of the constant prefix can come from the prefix cache.
TINY_PROMPT = (
    "# Instruction\n\nBelow is a list of conversations between a human and a helpful assistant (you).\n"
    "A helpful assistant answers questions clearly and politely. The assistant is kind, safe and never rude.\n\n"
    "# Query:\n```\nWhat is the capital of France?\n```\n\n"
    "# Answer:\n```\nParis is the capital of France. Thank you very much, friend.\n```\n\n"
    "# Query:\n```\nPlease write a short poem about the sea.\n```\n\n"
    "# Answer:\n```\nThe sea, the sky, the wind and the rain. Hello world! How are you today?\n```\n"
)


def _urial(tmp_path, text: str = SHORT_PROMPT, **params) -> Urial:
    path = tmp_path / "urial.md"
    path.write_text(text)
    return Urial(UrialParams(**params), UrialOptions(prompt_file=str(path)))


def _request(prompt, n: int = 1, rid: str = "urial-1", **sampling) -> DecodeRequest:
    # prompt_token_ids stand for the server's chat-template rendering, which URIAL must not use.
    return DecodeRequest(
        rid, [1, 2, 3], prompt, SamplingConfig(max_tokens=sampling.pop("max_tokens", 40), **sampling), n
    )


async def _drain(decoder: Urial, request: DecodeRequest, ctx: DecodeContext) -> tuple[list[StreamDelta], DecodeResult]:
    events = [event async for event in decoder.stream(request, ctx)]
    assert isinstance(events[-1], DecodeResult)
    return events[:-1], events[-1]


# ---- rendering ---------------------------------------------------------------------------------------------------


def test_one_turn_golden_rendering(tmp_path):
    assert _urial(tmp_path).text("What is 2 + 2?") == (
        "# Instruction\n"
        "\n"
        "Be brief and kind.\n"
        "\n"
        "# Query:\n"
        "```\n"
        "Hi\n"
        "```\n"
        "\n"
        "# Answer:\n"
        "```\n"
        "Hello!\n"
        "```\n"
        "\n"
        "# Query:\n"
        "```\n"
        "What is 2 + 2?\n"
        "```\n"
        "\n"
        "# Answer:\n"
        "```\n"
    )
    # a plain prompt is one user message; contents are stripped
    decoder = _urial(tmp_path)
    assert decoder.text([{"role": "user", "content": "  What is 2 + 2?\n"}]) == decoder.text("What is 2 + 2?")


def test_two_turn_golden_rendering_with_a_system_message(tmp_path):
    messages = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "How are you?"},
    ]
    assert _urial(tmp_path).text(messages) == (
        "# Instruction\n\nBe brief and kind.\n\nAnswer in French.\n\n"
        "# Query:\n```\nHi\n```\n\n# Answer:\n```\nHello!\n```\n\n"
        "# Query:\n```\nHello\n```\n\n# Answer:\n```\nBonjour !\n```\n\n"
        "# Query:\n```\nHow are you?\n```\n\n# Answer:\n```\n"
    )


def test_conversations_it_cannot_render(tmp_path):
    decoder = _urial(tmp_path)
    for messages in (
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        [{"role": "system", "content": "Be nice."}],
        [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "42"}, {"role": "user", "content": "So?"}],
    ):
        with pytest.raises(DecoderError) as err:
            decoder.text(messages)
        assert err.value.param == "messages"


def test_shipped_prompt_structure():
    text = DEFAULT_PROMPT_FILE.read_text()
    assert text.startswith(
        "# Instruction\n\nBelow is a list of conversations between a human and an AI assistant (you).\n"
    )
    rendered = Urial().text("Why is the sky blue?")
    prompt = load_prompt()
    assert rendered.startswith(prompt.instruction + "\n\n# Query:\n")
    queries = [m.start() for m in re.finditer(r"^# Query:$", rendered, re.M)]
    assert len(queries) == 4 and len(re.findall(r"^# Answer:$", rendered, re.M)) == 4
    assert rendered[queries[-1] :] == "# Query:\n```\nWhy is the sky blue?\n```\n\n# Answer:\n```\n"
    # every example answer is a closed block, and none holds a stop string before its closing backticks
    for answer in re.findall(r"^# Answer:\n```\n(.*?)\n```$", prompt.examples, re.M | re.S):
        assert answer and clean(answer) == answer


def test_prompt_file_is_checked_when_the_options_are_built(tmp_path):
    with pytest.raises(ValidationError, match="cannot read"):
        UrialOptions(prompt_file=str(tmp_path / "missing.md"))
    bad = tmp_path / "bad.md"
    bad.write_text("Be kind.\n\n# Query:\n```\nHi\n```\n")
    with pytest.raises(ValidationError, match="1 '# Query:' blocks but 0"):
        UrialOptions(prompt_file=str(bad))


def test_an_edited_prompt_file_is_reread(tmp_path):
    decoder = _urial(tmp_path)
    assert "Be brief and kind." in decoder.text("Hi")
    (tmp_path / "urial.md").write_text(SHORT_PROMPT.replace("Be brief and kind.", "Be thorough, and kind."))
    assert "Be thorough, and kind." in decoder.text("Hi")


def test_the_constant_prefix_tokenizes_the_same_for_every_query(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    decoder = Urial()
    head = decoder.text("x").removesuffix("x\n```\n\n# Answer:\n```\n")
    head_ids = tok.encode(head, add_special_tokens=True)
    for query in ["Hi", "  leading spaces", "\nnewline first", "```code```", "42 is", "¿Qué?", "#tag", "'quoted'"]:
        assert tok.encode(decoder.text(query), add_special_tokens=True)[: len(head_ids)] == head_ids, query


# ---- stop and strip ----------------------------------------------------------------------------------------------


def test_clean_cuts_at_the_first_stop_and_strips():
    assert clean("  Paris.\n```\n\n# Query:\n```\nAnd Spain?") == "Paris."
    assert clean("Sure!\n# User: hi") == "Sure!"
    assert clean("Sure!\n\n# Query: next") == "Sure!"
    assert clean("a `b` c\n") == "a `b` c"
    assert clean("\n```") == ""


def test_answer_stream_emits_exactly_the_cleaned_text_for_any_chunking():
    texts = [
        "\n  Hello there.\n```\n\n# Query:\n```\nnext",
        "Use `x` and ``y``, then # heading\n# Use it\n# User: hi",
        "One.\n\n# Qu",
        "tail spaces   \n",
        "# Query right away",
        "no stop at all",
        "",
    ]
    rng = random.Random(0)
    for text in texts:
        for _ in range(50):
            cuts = sorted(rng.sample(range(len(text) + 1), rng.randint(0, len(text))))
            chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
            stream = AnswerStream()
            shown = [stream.feed(chunk) for chunk in chunks[:-1]] + [stream.feed(chunks[-1], final=True)]
            assert "".join(shown) == stream.text == clean(text), (text, chunks)


async def test_scripted_sampling_settings_stops_and_stripping(tmp_path):
    engine = ScriptedEngine(samples=["  Sure.\n```\n\n# Query:\n```\nmore"], vocab=string.printable)
    decoder = _urial(tmp_path)
    result = await decoder.decode(
        _request("Hi", temperature=1.0, top_p=0.9, seed=3, stop=("zz",)), DecodeContext(engine)
    )
    [call] = engine.calls
    assert call.params.stop == ("zz", *STOPS)
    assert call.params.temperature == 0.0 and call.params.repetition_penalty == 1.1
    assert call.params.top_p == 0.9 and call.params.seed == 3 and call.params.n == 1  # the request's own settings
    rendered = engine.tokenizer.encode(decoder.text("Hi"))
    assert call.prompts == [rendered]
    assert result.choices[0].text == "Sure." and "# Query" not in result.choices[0].text
    assert result.usage.prompt_tokens == len(rendered)  # what the model read, prefix included


async def test_scripted_lm_stops_at_each_stop_string(tmp_path):
    """In its lm mode the scripted engine applies stop strings itself, as vLLM does."""
    decoder = _urial(tmp_path)
    opening = "# Answer:\n```\n"

    def scripted(answer: str):
        def lm(prefix):
            text = engine.tokenizer.decode(prefix)
            written = text[text.rindex(opening) + len(opening) :]
            nxt = answer[len(written)] if len(written) < len(answer) else "\0"
            return {engine.tokenizer.vocab.index(nxt): 0.0}

        return lm

    for answer, expected in [
        ("Sure, here it is.\n```\n\n# Query:\n```\nmore", "Sure, here it is."),
        ("Yes.\n# User: and now?", "Yes."),
        ("Fine.\n\n# Query: next", "Fine."),
    ]:
        engine = ScriptedEngine(vocab=string.printable)
        engine.lm = scripted(answer)
        result = await decoder.decode(_request("Hi"), DecodeContext(engine))
        assert result.choices[0].text == expected and result.choices[0].finish_reason == "stop"
        deltas, streamed = await _drain(decoder, _request("Hi"), DecodeContext(engine))
        assert "".join(d.text for d in deltas) == streamed.choices[0].text == expected


async def test_stream_without_engine_stops_still_never_shows_the_next_query(tmp_path):
    engine = ScriptedEngine(samples=["\nAll good.\n\n# Query:\n```\nmore"], vocab=string.printable)
    deltas, result = await _drain(_urial(tmp_path), _request("Hi"), DecodeContext(engine))
    assert "".join(d.text for d in deltas) == result.choices[0].text == "All good."
    assert sum(len(d.token_ids) for d in deltas) == result.choices[0].num_tokens == len(engine.samples[0])
    assert deltas[-1].finish_reason == "stop"


async def test_n_answers_need_sample_mode_and_are_scored_clean(tmp_path):
    engine = ScriptedEngine(samples=["  abc\n```", "abcdef\n```"], vocab=string.printable)
    with pytest.raises(DecoderError) as err:
        await _urial(tmp_path).decode(_request("Hi", n=2), DecodeContext(engine))
    assert err.value.param == "n" and not engine.calls
    rewards = RewardSet([RewardTerm(build_reward("len", {"type": "length", "unit": "chars"}))])
    decoder = _urial(tmp_path, mode="sample")
    result = await decoder.decode(_request("Hi", n=2), DecodeContext(engine, rewards))
    assert engine.calls[0].params.n == 2 and engine.calls[0].params.temperature == 0.3
    assert [c.text for c in result.choices] == ["abc", "abcdef"]
    assert [c.reward for c in result.choices] == [3.0, 6.0]  # rewards see the cleaned answers
    assert result.usage.reward_calls == 1


async def test_prompt_plus_max_tokens_over_the_context_is_a_max_tokens_error(tmp_path):
    engine = ScriptedEngine(samples=["a"], vocab=string.printable, max_model_len=120)
    decoder = _urial(tmp_path)
    room = 120 - len(engine.tokenizer.encode(decoder.text("Hi")))
    await decoder.decode(_request("Hi", max_tokens=room), DecodeContext(engine))
    with pytest.raises(DecoderError) as err:
        await decoder.decode(_request("Hi", max_tokens=room + 1), DecodeContext(engine))
    assert err.value.param == "max_tokens" and f"at most {room}" in str(err.value)


# ---- real vLLM ---------------------------------------------------------------------------------------------------


class _Spy:
    """Records the sampling settings every engine call gets, and passes it on to the real engine."""

    def __init__(self, engine):
        self.engine, self.info, self.tokenizer, self.params = engine, engine.info, engine.tokenizer, []

    async def generate(self, prompts, params, request_id, *, session=None):
        self.params.append(params)
        return await self.engine.generate(prompts, params, request_id, session=session)

    def stream(self, prompt, params, request_id, *, session=None):
        self.params.append(params)
        return self.engine.stream(prompt, params, request_id, session=session)


async def test_real_engine_stops_strips_and_serves_the_prefix_from_the_cache(vllm_engine, tmp_path):
    decoder = _urial(tmp_path, TINY_PROMPT)
    tok = vllm_engine.tokenizer
    head = decoder.text("x").removesuffix("x\n```\n\n# Answer:\n```\n")
    assert len(tok.encode(head, add_special_tokens=True)) > 64  # at least two full 32-token blocks
    spy = _Spy(vllm_engine)
    results = []
    questions = ["What is the sea?", "Name one good thing about the rain."]
    for i, question in enumerate(questions):
        results.append(
            await decoder.decode(_request(question, rid=f"urial-real-{i}", max_tokens=48), DecodeContext(spy))
        )
    assert all(set(STOPS) <= set(p.stop) and p.temperature == 0.0 for p in spy.params)
    for question, result in zip(questions, results):
        text = result.choices[0].text
        assert "# Query" not in text and "```" not in text and text == text.strip()
        assert result.usage.prompt_tokens == len(tok.encode(decoder.text(question), add_special_tokens=True))
    cached = results[1].usage.engine_cached_tokens
    assert 32 <= cached <= len(tok.encode(head, add_special_tokens=True)), cached

    # vLLM applies the closing-backticks stop itself: a bias that makes "`" the only choice ends after three.
    backtick = tok.encode("`")
    assert len(backtick) == 1
    forced = _request("Say hi.", rid="urial-real-stop", max_tokens=20, logit_bias=((backtick[0], 100.0),))
    result = await decoder.decode(forced, DecodeContext(vllm_engine))
    [choice] = result.choices
    assert choice.text == "" and choice.finish_reason == "stop" and choice.num_tokens == 3

    deltas, streamed = await _drain(
        decoder, _request("What is the sea?", rid="urial-real-s", max_tokens=48), DecodeContext(vllm_engine)
    )
    assert "".join(d.text for d in deltas) == streamed.choices[0].text == results[0].choices[0].text


@pytest.mark.slow
def test_shipped_prompt_is_compact_for_smollm2():
    from transformers import AutoTokenizer

    from alignd.engines.models import prepare_default_model

    tok = AutoTokenizer.from_pretrained(prepare_default_model())
    decoder = Urial()
    count = len(tok.encode(decoder.text("Hello"), add_special_tokens=True))
    assert count < 900, count
    head = decoder.text("x").removesuffix("x\n```\n\n# Answer:\n```\n")
    head_ids = tok.encode(head, add_special_tokens=True)
    for query in ["Hi", "  spaced", "\nnewline", "```code```", "123", "¿Qué?"]:
        assert tok.encode(decoder.text(query), add_special_tokens=True)[: len(head_ids)] == head_ids, query
