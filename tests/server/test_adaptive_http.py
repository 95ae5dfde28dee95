"""Adaptive compute over HTTP on the real server: caps that refuse runaway searches before any work, budgets that
stop anytime decoders at the best answer so far, top-k bounded by what the engine serves, the new decoders
streamed over the OpenAI endpoints and the native one, and a client that leaves stopping all their work."""

from __future__ import annotations

import json
from email.utils import parsedate_to_datetime

import httpx
import openai
import pytest

from serverproc import leave_mid_request, metric, wait_idle

RUNAWAY = {"name": "deal", "top_k": 8, "beam": 8, "lookahead": 400}


def test_a_search_whose_worst_case_is_over_the_cap_is_refused_before_any_work(server):
    before = metric(server, "alignd_engine_calls_total")
    with server.client() as http:
        r = http.post("/v1/align", json={"prompt": "Hi", "max_tokens": 100, "reward": "length", "decoder": RUNAWAY})
    assert r.status_code == 400 and r.json()["error"]["param"] == "decoder.lookahead"
    message = r.json()["error"]["message"]
    assert "could spend up to" in message and "budget.max_engine_tokens" in message
    assert metric(server, "alignd_engine_calls_total") == before


def test_top_k_is_bounded_by_what_the_engine_serves_and_named_as_set(openai_client):
    for decoder in ("deal", "transfer_q", "args"):
        with pytest.raises(openai.BadRequestError) as err:
            openai_client.completions.create(
                model="tiny",
                prompt="Hi",
                max_tokens=4,
                extra_body={"decoder": {"name": decoder, "top_k": 25}, "reward": "length"},
            )
        assert err.value.body["param"] == "decoder.top_k" and "logprobs" not in err.value.body["param"]


def test_a_budget_bounds_an_anytime_search_and_says_so(server):
    body = {
        "prompt": "Hi",
        "max_tokens": 100,
        "reward": "length",
        "decoder": RUNAWAY,
        "budget": {"max_engine_tokens": 60_000},
    }
    with server.client() as http:
        r = http.post("/v1/align", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["info"]["budget_exhausted"] is True and out["choices"][0]["finish_reason"] == "budget"
        assert out["info"]["engine_tokens_spent"] == out["usage"]["engine_new_tokens"] <= 60_000
        too_small = http.post("/v1/align", json={**body, "budget": {"max_engine_tokens": 1000}})
        assert too_small.status_code == 400 and too_small.json()["error"]["param"] == "budget.max_engine_tokens"
        over_cap = http.post("/v1/align", json={**body, "budget": {"max_engine_tokens": 10**9}})
        assert over_cap.status_code == 400 and "over this server's limit" in over_cap.json()["error"]["message"]
        # a decoder that cannot stop early is refused when its worst case is over the request's budget
        fixed = http.post(
            "/v1/align",
            json={"prompt": "Hi", "max_tokens": 64, "n": 4, "decoder": "sample", "budget": {"max_engine_tokens": 50}},
        )
        assert fixed.status_code == 400 and "cannot stop early" in fixed.json()["error"]["message"]


def test_a_small_request_sent_beside_a_capped_large_search_is_not_queued_behind_it(server):
    """The large search is bounded by its budget, and the engine interleaves a small request with it: the small one
    is answered while the large one is still searching. How close to its time alone it gets is measured by
    ``bench/bench_adaptive.py``, not asserted here.

    Measured on the server's clock (the ``Date`` of each answer, whole seconds): while the engine works, the suite's
    own process can get almost no CPU on two cores (vLLM's engine core spins waiting for its worker), so when the
    client *read* an answer says nothing about when the server sent it."""
    small = {"prompt": "Hello", "max_tokens": 8, "temperature": 0}
    large = {
        "prompt": "Hi",
        "max_tokens": 100,
        "reward": "length",
        # one beam, so it commits (and streams) a token per step; each step rolls out 8 x 400 tokens
        "decoder": {"name": "deal", "top_k": 8, "lookahead": 400},
        "budget": {"max_engine_tokens": 200_000},
        "ignore_eos": True,
        "stream": True,
    }
    with server.client() as http, server.client() as other:
        with other.stream("POST", "/v1/align", json=large, timeout=300) as searching:
            assert searching.status_code == 200
            began = parsedate_to_datetime(searching.headers["date"])
            lines = searching.iter_lines()  # held: a dropped line iterator would close the stream
            first = next(lines)
            assert "text" in json.loads(first.removeprefix("data: "))  # the search is under way, a token committed
            sent = []
            for _ in range(3):
                r = http.post("/v1/completions", json=small)
                assert r.status_code == 200
                sent.append((parsedate_to_datetime(r.headers["date"]) - began).total_seconds())
            final = json.loads([line for line in lines if line.startswith("data: {")][-1].removeprefix("data: "))
    total = final["timings"]["total"]
    assert final["object"] == "alignment" and total > 5, final["timings"]  # long enough to tell the two apart
    # each small answer left the server seconds before the search ended (3 s covers the Date's whole seconds)
    assert max(sent) < total - 3, (sent, total)
    assert final["info"]["engine_tokens_spent"] <= 200_000
    assert wait_idle(server) == (0.0, 0.0)


@pytest.mark.parametrize(
    "decoder",
    [
        {"name": "blockwise_best_of_n", "num_candidates": 3, "block": 3},
        {"name": "blockwise_best_of_n", "num_candidates": 3, "block": 3, "first_block": 1, "first_token": "one_step"},
        {"name": "speculative_rejection", "num_candidates": 6, "chunk": 3, "rejection_rate": 0.5},
        {"name": "self_consistency", "round_size": 2, "max_samples": 6, "extract": "exact"},
        {"name": "step_beam", "beam_width": 2, "expansions": 2, "max_step_tokens": 3, "max_steps": 4},
        {"name": "particle_filter", "particles": 3, "max_step_tokens": 3, "max_steps": 4},
        {"name": "qalign", "steps": 3, "beta": 0.5},
        {"name": "best_of_n", "num_candidates": 3, "beta": 0.5},
        {
            "name": "self_consistency",
            "vote": "confidence",
            "online": True,
            "window": 2,
            "round_size": 2,
            "max_samples": 6,
            "extract": "exact",
        },
    ],
    ids=lambda d: "-".join(
        [d["name"], *([d["first_token"]] if "first_token" in d else []), *(["online"] if d.get("online") else [])]
    ),
)
def test_new_decoders_over_both_openai_endpoints_and_the_native_one(server, decoder):
    reward = {} if decoder["name"] == "self_consistency" else {"reward": "length"}
    base = {"max_tokens": 10, "seed": 3, "decoder": decoder, **reward}
    with server.client() as http:
        native = http.post("/v1/align", json={"prompt": "Once upon", **base})
        assert native.status_code == 200, native.text
        whole = native.json()
        events = _stream(http, "/v1/align", {"prompt": "Once upon", **base, "stream": True})
        final = events[-1]
        assert final["object"] == "alignment" and final["choices"][0]["text"] == whole["choices"][0]["text"]
        pieces = [e["text"] for e in events[:-1] if e["object"] == "alignment.chunk"]
        assert "".join(pieces) == whole["choices"][0]["text"]
        if decoder["name"] == "blockwise_best_of_n":
            assert len([p for p in pieces if p]) >= 2  # committed block by block, before the answer is done
        chat = _stream(
            http,
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hi"}], **base, "stream": True, "return_candidates": True},
        )
        assert chat[-1]["choices"] == [] or chat[-1]["choices"][0]["finish_reason"] is not None
        completion = _stream(http, "/v1/completions", {"prompt": "Once upon", **base, "stream": True})
        assert "".join(c["choices"][0]["text"] for c in completion if c.get("choices")) == whole["choices"][0]["text"]
    assert wait_idle(server) == (0.0, 0.0)


def _stream(http: httpx.Client, path: str, body: dict) -> list[dict]:
    with http.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200, resp.read()
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert not any("error" in e for e in events), events
    return events


def test_a_client_leaving_stops_the_new_decoders_work(server):
    with server.client() as http:
        body = {
            "prompt": "Hello",
            "max_tokens": 300,
            "ignore_eos": True,
            "reward": "length",
            "stream": True,
            "decoder": {"name": "blockwise_best_of_n", "num_candidates": 8, "block": 4},
        }
        with http.stream("POST", "/v1/completions", json=body) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    break
    assert wait_idle(server) == (0.0, 0.0)
    leave_mid_request(
        server,
        "/v1/align",
        {
            **body,
            "stream": False,
            # 150 rounds of one engine call each: seconds, so the client sees it running before it leaves
            "decoder": {"name": "speculative_rejection", "num_candidates": 16, "chunk": 2, "rejection_rate": 0},
        },
    )
    assert wait_idle(server) == (0.0, 0.0)


@pytest.mark.parametrize(
    "decoder",
    [
        {"name": "qalign", "steps": 16},
        {
            "name": "self_consistency",
            "vote": "confidence",
            "online": True,
            "window": 4,
            "max_samples": 16,
            "extract": "exact",
        },
    ],
    ids=lambda d: d["name"],
)
def test_the_test_time_compute_decoders_stop_at_their_budget_and_when_the_client_leaves(server, decoder):
    """QAlign's chain and DeepConf's online vote are anytime: a budget stops them at the answer so far and says so,
    and a client that leaves mid-search stops their work (DeepConf's: every sample streaming at the time)."""
    body = {"prompt": "Hello", "max_tokens": 400, "ignore_eos": True, "seed": 1, "decoder": decoder}
    # answers of random weights read exactly never agree, so the vote never settles early
    body |= {"reward": "length"} if decoder["name"] == "qalign" else {"temperature": 1.5}
    with server.client() as http:
        r = http.post("/v1/align", json={**body, "budget": {"max_engine_tokens": 2000}})
        assert r.status_code == 200, r.text
        out = r.json()
        # a whole answer, as best-of-N's: the budget cut the search, not the text
        assert out["info"]["budget_exhausted"] is True and out["choices"][0]["finish_reason"] == "length"
        assert out["info"]["engine_tokens_spent"] == out["usage"]["engine_new_tokens"] <= 2000
    assert wait_idle(server) == (0.0, 0.0)
    leave_mid_request(server, "/v1/align", body)
    assert wait_idle(server) == (0.0, 0.0)
