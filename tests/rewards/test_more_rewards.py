"""sentiment, embedding (the real MiniLM model from its wheel), json_schema, and remote against real local HTTP
scorers (a plain JSON scorer, a flaky one, a slow one)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alignd.rewards import RewardError, RewardSet, RewardTerm, build_reward


async def test_sentiment_orders_positive_above_negative():
    r = build_reward("s", {"type": "sentiment"})
    good, neutral, bad = await r.score("", ["What a wonderful, kind answer!", "The box is on the table.", "I hate it."])
    assert good > neutral > bad and neutral == 0.0


async def test_embedding_prefers_the_text_closest_to_the_references():
    r = build_reward("emb", {"type": "embedding", "references": ["The cat sat on the mat."]})
    await r.start()
    assert r.model is None  # declared but not used: start-up loads nothing
    close, far = await r.score("", ["A cat is sitting on a rug.", "Quarterly revenue grew by ten percent."])
    assert r.model is not None  # loaded by the first score
    assert 0.4 < close <= 1.0 and far < close - 0.3
    # no references: similarity to the prompt (relevance)
    relevance = build_reward("rel", {"type": "embedding", "preload": True})
    await relevance.start()
    assert relevance.model is not None
    on, off = await relevance.score("How do I bake bread?", ["Mix flour, water and yeast, then bake.", "Jupiter."])
    assert on > off
    # per-request references share the loaded model
    swapped = r.with_overrides({"references": ["Stock markets and revenue."]})
    calls = r.forward_calls
    close2, far2 = await swapped.score("", ["A cat is sitting on a rug.", "Quarterly revenue grew by ten percent."])
    assert far2 > close2 and r.forward_calls == calls + 1 and swapped.model is None


async def test_json_schema_scores_parse_and_validate():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    r = build_reward("j", {"type": "json_schema", "json_schema": schema})
    assert await r.score("", ['{"n": 3}', '{"n": "x"}', "nope", 'Here: {"n": 1} ok']) == [1.0, 0.5, 0.0, 1.0]
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        build_reward("j", {"type": "json_schema", "json_schema": {"type": 12}})


class _Scorer(BaseHTTPRequestHandler):
    """POST {"prompt", "completions"} -> {"scores": [len(c)]}; /flaky fails its first call; /slow sleeps."""

    calls: dict[str, int] = {}

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        _Scorer.calls[self.path] = _Scorer.calls.get(self.path, 0) + 1
        if self.path == "/flaky" and _Scorer.calls[self.path] == 1:
            return self._send(503, {"error": "warming up"})
        if self.path == "/slow":
            time.sleep(2)
        if self.path == "/bad":
            return self._send(200, {"nope": 1})
        if self.path == "/classify":
            return self._send(200, {"data": [{"probs": [0.25, 0.75]} for _ in body["input"]]})
        self._send(
            200, {"scores": [float(len(c)) for c in body["completions"]], "auth": self.headers.get("authorization")}
        )

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def scorer():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scorer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_remote_scores_a_batch_in_one_request(scorer):
    r = build_reward("remote", {"type": "remote", "url": scorer + "/score", "api_key": "k"})
    await r.start()
    before = _Scorer.calls.get("/score", 0)
    assert await r.score("q", ["a", "abc"]) == [1.0, 3.0]
    assert _Scorer.calls["/score"] == before + 1
    await r.close()


async def test_remote_retries_then_succeeds_and_reports_failures_as_upstream(scorer):
    flaky = build_reward("flaky", {"type": "remote", "url": scorer + "/flaky", "backoff_s": 0.01})
    assert await flaky.score("q", ["ab"]) == [2.0]
    assert _Scorer.calls["/flaky"] == 2
    slow = build_reward("slow", {"type": "remote", "url": scorer + "/slow", "timeout_s": 0.5, "retries": 0})
    with pytest.raises(RewardError) as err:
        await RewardSet([RewardTerm(slow)]).score("q", ["a"])
    assert err.value.upstream
    bad = build_reward("bad", {"type": "remote", "url": scorer + "/bad"})
    with pytest.raises(RewardError, match="contract") as err:
        await bad.score("q", ["a"])
    assert err.value.upstream
    down = build_reward("down", {"type": "remote", "url": "http://127.0.0.1:9/x", "retries": 1, "backoff_s": 0.01})
    with pytest.raises(RewardError, match="2 attempts"):
        await down.score("q", ["a"])


async def test_remote_vllm_classify_format(scorer):
    r = build_reward("cls", {"type": "remote", "url": scorer, "format": "vllm_classify", "model": "rm", "label": 1})
    assert await r.score("q", ["a", "b"]) == [0.75, 0.75]


async def test_slow_scorer_under_concurrent_load_fails_every_request_on_time(scorer):
    import asyncio

    slow = build_reward("slow", {"type": "remote", "url": scorer + "/slow", "timeout_s": 0.5, "retries": 0})
    start = time.perf_counter()
    results = await asyncio.gather(
        *(RewardSet([RewardTerm(slow)]).score(f"q{i}", ["a", "b"]) for i in range(8)), return_exceptions=True
    )
    assert all(isinstance(r, RewardError) and r.upstream for r in results)
    assert time.perf_counter() - start < 1.5  # each bounded by its own timeout, not queued behind the others
    dropping = build_reward(
        "slow", {"type": "remote", "url": scorer + "/slow", "timeout_s": 0.5, "retries": 0, "on_error": "drop"}
    )
    scores = await RewardSet([RewardTerm(dropping)]).score("q", ["a", "b"])
    assert scores.total == [None, None] and "timed out" in scores.dropped[0]


@pytest.fixture(scope="module")
def vllm_pooling_server(tiny_classifier, tmp_path_factory):
    """A real vLLM OpenAI server (pooling runner) on the tiny classifier, on loopback."""
    from serverproc import launch_vllm_server, stop_server, wait_healthy

    log = tmp_path_factory.mktemp("vllm-pool") / "server.log"
    [server] = wait_healthy([launch_vllm_server(tiny_classifier, log, "--runner", "pooling", served_name="rm")])
    yield server.url
    stop_server(server)


async def test_remote_against_a_real_vllm_classify_server(vllm_pooling_server, tiny_classifier):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["a short one", "the sea is wide"]
    r = build_reward("cls", {"type": "remote", "url": vllm_pooling_server, "format": "vllm_classify", "model": "rm"})
    got = await r.score("Question?", texts)
    # oracle: transformers on the very text the contract sends ("<prompt>\n<completion>")
    tok = AutoTokenizer.from_pretrained(tiny_classifier)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    with torch.inference_mode():
        want = [model(**tok(f"Question?\n{t}", return_tensors="pt")).logits[0, 0].item() for t in texts]
    assert got == pytest.approx(want, abs=1e-4)
    await r.close()
    pooling = build_reward(
        "pool", {"type": "remote", "url": vllm_pooling_server, "format": "vllm_pooling", "model": "rm"}
    )
    assert await pooling.score("Question?", texts) == pytest.approx(want, abs=1e-4)


async def test_concurrent_embedding_requests_share_a_forward_pass():
    import asyncio

    r = build_reward("emb", {"type": "embedding", "references": ["The cat sat on the mat."]})
    await r.start()
    other = r.with_overrides({"references": ["Stock markets and revenue."]})
    texts = ["A cat is sitting on a rug.", "Quarterly revenue grew by ten percent."]
    alone = [await r.score("", texts), await other.score("", texts)]
    before = r.forward_calls
    together = await asyncio.gather(r.score("", texts), other.score("", texts))
    assert r.forward_calls == before + 1  # two requests with different references, one encode call
    for got, want in zip(together, alone):
        assert got == pytest.approx(want, abs=1e-5)
