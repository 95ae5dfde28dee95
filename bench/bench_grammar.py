"""What alignd's grammar processor costs against vLLM's own structured outputs, on the default model in process.

The same JSON-schema answers three ways, each from the prompt alone (no committed prefix, so all three are the
same grammar over the same tokens; greedy answers come out identical, which the bench checks):

* ``free``: no constraint (the floor; its answers are not the same text, only the same length is asked for);
* ``native``: vLLM's structured outputs (``StructuredOutputsParams``: the scheduler fills every constrained
  request's bitmask in one batch and the model runner applies it);
* ``continued``: alignd's ``PrefixGrammar`` logits processor (``constraint_start``), what every decoder that
  extends a committed prefix uses: one matcher per request, its bitmask filled and applied in Python each step.

Each at n=1 greedy and n=8 sampled, ``--repeats`` times after a warm-up; the medians of wall time per generated
token are reported, and the processor's cost as a ratio to native. Run: ``python bench/bench_grammar.py`` (about 2
minutes on 2 cores); results in ``bench/results/grammar.json``. Measured numbers: the benchmarks page of the docs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "tips": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3},
        "hours": {"type": "integer"},
    },
    "required": ["name", "tips", "hours"],
}
QUESTION = "Give me three tips for a good night's sleep, as JSON with name, tips and hours."


async def run(args: argparse.Namespace) -> dict:
    from alignd.engines.models import DEFAULT_MODEL, prepare_default_model
    from alignd.engines.protocol import Constraint, SamplingConfig
    from alignd.engines.vllm_local import VLLMEngine

    engine = VLLMEngine(DEFAULT_MODEL, str(prepare_default_model()), {"max_model_len": 2048})
    await engine.start()
    tok = engine.tokenizer
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": QUESTION}]))
    constraint = Constraint.of("json", SCHEMA)
    ways = {
        "free": {},
        "native": {"constraint": constraint},
        "continued": {"constraint": constraint, "constraint_start": len(prompt)},
    }
    rows, texts = [], {}
    try:
        for n, temperature in ((1, 0.0), (8, 1.0)):
            for way, fields in ways.items():
                params = SamplingConfig(n=n, max_tokens=args.max_tokens, temperature=temperature, seed=0, **fields)
                await engine.generate([prompt], params, f"warm-{way}-{n}")
                per_token, tokens = [], []
                for r in range(args.repeats):
                    start = time.perf_counter()
                    [gen] = await engine.generate([prompt], params.but(seed=r), f"{way}-{n}-{r}")
                    seconds = time.perf_counter() - start
                    per_token.append(seconds / max(1, gen.completion_tokens))
                    tokens.append(gen.completion_tokens)
                    if n == 1:
                        texts.setdefault(way, gen.completions[0].text)
                rows.append(
                    {
                        "way": way,
                        "n": n,
                        "ms_per_token": 1000 * statistics.median(per_token),
                        "tokens_per_call": statistics.median(tokens),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    finally:
        await engine.shutdown()
    same = texts["native"] == texts["continued"]
    return {"model": DEFAULT_MODEL, "max_tokens": args.max_tokens, "greedy_identical": same, "rows": rows}


def table(result: dict) -> str:
    lines = ["| way | n | ms per token | tokens per call | vs native |", "|---|---|---|---|---|"]
    native = {r["n"]: r["ms_per_token"] for r in result["rows"] if r["way"] == "native"}
    for r in result["rows"]:
        ratio = r["ms_per_token"] / native[r["n"]]
        lines.append(f"| {r['way']} | {r['n']} | {r['ms_per_token']:.1f} | {r['tokens_per_call']:.0f} | {ratio:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "grammar.json")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print("greedy answers identical (native, continued):", result["greedy_identical"])


if __name__ == "__main__":
    main()
