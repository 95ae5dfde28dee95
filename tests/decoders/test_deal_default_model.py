"""DeAL on the default model (SmolLM2-135M-Instruct): keyword coverage (a CommonGen-style constraint, as in the
paper) beats greedy decoding and best-of-N at the same max_tokens, over a fixed prompt set."""

from __future__ import annotations

import pytest

from alignd.decoders import DecodeContext, DecodeRequest
from alignd.decoders.best_of_n import BestOfN
from alignd.decoders.deal import DeAL, DeALParams
from alignd.engines.models import DEFAULT_MODEL, prepare_default_model
from alignd.engines.protocol import SamplingConfig
from alignd.rewards import RewardSet, RewardTerm, build_reward

pytestmark = pytest.mark.slow

# A topic in the prompt, keywords the reward wants but the prompt does not name: words the model uses only
# sometimes, so the search has something to find.
TASKS = [
    ("a day at the beach", ["sand", "waves", "sunscreen"]),
    ("cooking dinner", ["onion", "pan", "salt"]),
    ("a rainy morning", ["umbrella", "coffee", "window"]),
    ("a visit to a farm", ["cows", "tractor", "barn"]),
]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
async def smollm2():
    from alignd.engines.vllm_local import VLLMEngine

    engine = VLLMEngine(DEFAULT_MODEL, str(prepare_default_model()), {"max_model_len": 2048})
    await engine.start()
    yield engine
    await engine.shutdown()


async def test_deal_covers_keywords_more_often_than_greedy_and_best_of_n(smollm2):
    tok = smollm2.tokenizer
    totals = {"greedy": 0.0, "best_of_n": 0.0, "deal": 0.0}
    for i, (topic, words) in enumerate(TASKS):
        messages = [{"role": "user", "content": f"Write one sentence about {topic}."}]
        ids = tok.encode(tok.apply_chat_template(messages))
        reward = build_reward("kw", {"type": "keywords", "keywords": words})
        rewards = RewardSet([RewardTerm(reward)])

        [greedy] = await smollm2.generate([ids], SamplingConfig(max_tokens=MAX_TOKENS, temperature=0.0), f"kw-g-{i}")
        totals["greedy"] += (await reward.score(messages, [greedy.completions[0].text]))[0]
        bon = await BestOfN(BestOfN.Params(num_candidates=4)).decode(
            DecodeRequest(f"kw-{i}", ids, messages, SamplingConfig(max_tokens=MAX_TOKENS, seed=i)),
            DecodeContext(smollm2, rewards),
        )
        totals["best_of_n"] += bon.choices[0].reward
        deal = await DeAL(DeALParams(top_k=10, lookahead=12, weight=10.0)).decode(
            DecodeRequest(f"kw-{i}", ids, messages, SamplingConfig(max_tokens=MAX_TOKENS, temperature=0.0)),
            DecodeContext(smollm2, rewards),
        )
        totals["deal"] += deal.choices[0].reward
    print(f"keyword coverage over {len(TASKS)} prompts: {totals}")
    assert totals["deal"] > totals["greedy"], totals
    assert totals["deal"] > totals["best_of_n"], totals
