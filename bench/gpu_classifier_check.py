"""GPU check of the classifier reward (run on a CUDA host): CPU and CUDA scores of the same tiny model agree,
and reward throughput of a SmolLM2-135M-shaped classifier on CUDA at batch sizes 1, 8, 32.

Usage: python bench/gpu_classifier_check.py OUT_DIR   (needs torch with CUDA, transformers, tokenizers, pydantic)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


async def main(out: Path) -> dict:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from alignd.rewards import build_reward

    from tiny_models import build_tiny_classifier

    tiny = build_tiny_classifier(out / "tiny-rm")
    texts = ["a short one", "a somewhat longer answer about the sea", "x", "Paris is the capital of France."]
    scores = {}
    for device in ("cpu", "cuda"):
        r = build_reward(device, {"type": "classifier", "path": str(tiny), "device": device, "batch_window_ms": 0})
        await r.start()
        scores[device] = await r.score("Question?", texts)
    agree = max(abs(a - b) for a, b in zip(scores["cpu"], scores["cuda"]))

    # SmolLM2-135M's shape (576 hidden, 30 layers, 9 heads / 3 kv heads), one-logit head, random weights.
    rm = out / "rm-135m"
    config = LlamaConfig(
        vocab_size=len(AutoTokenizer.from_pretrained(tiny)),
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        num_labels=1,
        max_position_embeddings=2048,
        pad_token_id=3,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(rm)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(rm)
    answers = [
        f"Tip {i}: keep a regular schedule, dim the lights and keep your phone out of the room." for i in range(256)
    ]
    rows = []
    for dtype in ("float32", "bfloat16"):
        for bs in (1, 8, 32):
            r = build_reward(
                "rm",
                {
                    "type": "classifier",
                    "path": str(rm),
                    "device": "cuda",
                    "dtype": dtype,
                    "batch_size": bs,
                    "batch_window_ms": 0,
                },
            )
            await r.start()
            await r.score("Give me a tip.", answers[:bs])
            torch.cuda.synchronize()
            start = time.perf_counter()
            for i in range(0, len(answers), bs):
                await r.score("Give me a tip.", answers[i : i + bs])
            torch.cuda.synchronize()
            rows.append({"dtype": dtype, "batch": bs, "texts_per_s": len(answers) / (time.perf_counter() - start)})
            print(json.dumps(rows[-1]), flush=True)
    return {
        "device": torch.cuda.get_device_name(0),
        "cpu_vs_cuda_max_abs_diff": agree,
        "scores": scores,
        "throughput": rows,
    }


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(main(out))
    print(json.dumps(result, indent=2))
    (out / "gpu_classifier.json").write_text(json.dumps(result, indent=2))
