"""A running alignd answers through the official openai client: greedily (and correctly: the image's prepared
model is the real SmolLM2), then with best_of_n judged by the model itself (CI's image check).

python docker/smoke.py http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import argparse

import httpx
import openai


def main(base_url: str, expect_reward: str | None) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    [model] = [m.id for m in client.models.list().data]
    rewards = [r["name"] for r in httpx.get(f"{base_url}/rewards").json()["data"]]
    print(f"model {model}, rewards {rewards}")
    assert expect_reward is None or expect_reward in rewards, f"{expect_reward} not declared: {rewards}"
    question = [{"role": "user", "content": "What is the capital of France?"}]
    greedy = client.chat.completions.create(model=model, messages=question, max_tokens=24, temperature=0)
    print(f"greedy: {greedy.choices[0].message.content!r}")
    assert "Paris" in greedy.choices[0].message.content
    out = client.chat.completions.create(
        model=model,
        messages=question,
        max_tokens=24,
        temperature=0.7,
        seed=0,
        extra_body={
            "decoder": {"name": "best_of_n", "num_candidates": 4},
            "reward": "judge",
            "return_candidates": True,
        },
    )
    alignment = out.model_extra["alignment"]
    answer = out.choices[0].message.content
    rewards = [c["reward"] for c in alignment["candidates"]]
    print(f"best_of_n: {answer!r}; rewards {[round(r, 3) for r in rewards]}")
    assert alignment["decoder"] == "best_of_n" and len(rewards) == 4, alignment
    assert answer and alignment["choices"][0]["reward"] == max(rewards)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base_url", help="e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--expect-reward", help="a reward the server's configuration must declare")
    args = parser.parse_args()
    main(args.base_url, args.expect_reward)
