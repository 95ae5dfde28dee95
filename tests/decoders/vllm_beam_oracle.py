"""Run vLLM's own ``LLM.beam_search`` (the oracle for diverse_beam with G = 1) and print the beams as JSON.

Usage: python vllm_beam_oracle.py MODEL_DIR BEAM_WIDTH MAX_TOKENS LENGTH_PENALTY PROMPT_IDS_JSON...
Runs in its own process so the in-process (non-multiprocessing) engine it starts cannot disturb the suite's.
"""

import json
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

if __name__ == "__main__":
    from vllm import LLM
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import BeamSearchParams

    model, width, max_tokens, length_penalty, *prompts = sys.argv[1:]
    llm = LLM(
        model=model,
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        block_size=32,
        kv_cache_memory_bytes=64 << 20,
        seed=0,
    )
    params = BeamSearchParams(beam_width=int(width), max_tokens=int(max_tokens), length_penalty=float(length_penalty))
    ids = [json.loads(p) for p in prompts]
    outs = llm.beam_search([TokensPrompt(prompt_token_ids=p) for p in ids], params)
    result = [[seq.tokens[len(p) :] for seq in out.sequences] for p, out in zip(ids, outs)]
    print("ORACLE " + json.dumps(result), flush=True)
