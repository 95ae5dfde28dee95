"""Running an evaluation: every prompt x configuration, resumable, bounded in concurrency, with progress.

Each finished request is appended to ``results.jsonl`` at once, so a re-run skips everything the folder already
has, and Ctrl-C (or a crash) leaves a consistent partial run: the report is written from whatever finished.
Failed requests are recorded with their error and left out of the statistics (a re-run retries them).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import httpx

from ..answers import correct
from .client import Answer, EvalClient, RequestFailed
from .config import EvalConfig, EvalInputError, PromptRecord, RewardRef, Run
from .stats import BASELINE, REFERENCES, distinct_n

BASELINE_SEED_OFFSET = 100_003
"""The model's own answer is drawn with another seed, so it is independent of every candidate."""
REFERENCE_SEED_OFFSET = 200_003


class Progress:
    """A one-line progress bar on stderr: the configuration being run, done/total and an ETA."""

    def __init__(self, total: int, stream: TextIO = sys.stderr):
        self.total = total
        self.done = 0
        self.stream = stream
        self.start = time.monotonic()
        self.label = ""
        self.tty = stream.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        self.label = label
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        line = f"[{label}] {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%) ETA {_clock(eta)}"
        if self.tty:
            self.stream.write("\r" + line.ljust(100))
        elif self.done == self.total or self.done % max(1, self.total // 20) == 0:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Evaluation:
    """One evaluation run against one server."""

    def __init__(self, config: EvalConfig, client: EvalClient, out_dir: Path):
        self.config = config
        self.client = client
        self.out = out_dir
        self.results_path = out_dir / "results.jsonl"
        self.prompts = config.prompt_set()
        self.runs = config.runs()
        self.kinds: dict[str, str] = {}
        self.server: dict[str, Any] = {}

    # ---- checks before any work ------------------------------------------------------------------------------

    async def check(self) -> None:
        """Refuse unknown decoders, rewards or models with one clear message, before any request is sent."""
        self.server = await self.client.describe()
        self.kinds = self.server["rewards"]
        unknown = sorted({run.decoder_name for run in self.runs} - set(self.server["decoders"]))
        if unknown:
            raise EvalInputError(f"unknown decoder(s) {unknown}; the server has {sorted(self.server['decoders'])}")
        named = [r.name for r in self.config.reward + self.config.eval_rewards]
        missing = sorted(set(named) - set(self.kinds))
        if missing:
            raise EvalInputError(f"reward(s) {missing} are not declared on the server; it has {sorted(self.kinds)}")
        if self.config.model is not None and self.config.model not in self.server["models"]:
            raise EvalInputError(f"model {self.config.model!r} is not served; the server has {self.server['models']}")

    # ---- results file ----------------------------------------------------------------------------------------

    def load_results(self) -> list[dict[str, Any]]:
        if not self.results_path.exists():
            return []
        records = []
        for line in self.results_path.read_text().splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash: that request is simply done again
        return records

    def _append(self, record: dict[str, Any]) -> None:
        with self.results_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    # ---- requests --------------------------------------------------------------------------------------------

    def _rewards(self, refs: list[RewardRef], prompt: PromptRecord) -> list[dict[str, Any]]:
        return [
            {
                "name": r.name,
                "weight": r.weight,
                "params": {**r.params, **prompt.params_for(r.name, self.kinds.get(r.name, ""))},
            }
            for r in refs
        ]

    def _body(self, prompt: PromptRecord, request: dict[str, Any], decoder: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {**request, "decoder": decoder}
        if self.config.model is not None:
            body["model"] = self.config.model
        if self.config.reward:
            body["reward"] = self._rewards(self.config.reward, prompt)
        if prompt.messages is not None:
            body["messages"] = prompt.messages
        elif self.config.format == "chat":
            body["messages"] = [{"role": "user", "content": prompt.prompt}]
        else:
            body["prompt"] = prompt.prompt
        return body

    def _reward_prompt(self, prompt: PromptRecord) -> Any:
        return prompt.messages if prompt.messages is not None else prompt.prompt

    async def _held_out(self, prompt: PromptRecord, text: str) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for ref in self.config.eval_rewards:
            params = {**ref.params, **prompt.params_for(ref.name, self.kinds.get(ref.name, ""))}
            [value] = await self.client.score(ref.name, self._reward_prompt(prompt), [text], params)
            out[ref.name] = value
        return out

    def resolved_request(self, run: Run | None) -> dict[str, Any]:
        if run is None:
            return {**self.config.request, **self.config.baseline}
        return {**self.config.request, **run.request}

    async def _answer_record(self, prompt: PromptRecord, label: str, run: Run | None) -> dict[str, Any]:
        request = self.resolved_request(run)
        if run is None and "seed" not in self.config.baseline and request.get("seed") is not None:
            request["seed"] = request["seed"] + BASELINE_SEED_OFFSET
        decoder = run.decoder if run is not None else {"name": "sample"}
        body = self._body(prompt, request, decoder)
        answer: Answer = await self.client.answer(body, chat="messages" in body)
        return await self._record(prompt, label, decoder, answer)

    async def _shared_records(self, prompts: list[PromptRecord], label: str, run: Run) -> list[dict[str, Any]]:
        """The run's prompts ``together`` at a time in one ``/v1/align`` request, under one budget: a record per
        prompt, its engine completion tokens those of its own candidates (its prompt tokens and calls an equal
        share of the request's)."""
        request = self.resolved_request(run)
        bodies = [self._body(p, request, run.decoder) for p in prompts]
        if any(b.get("reward") != bodies[0].get("reward") for b in bodies):
            raise EvalInputError(
                f"configuration {label!r}: together sends several prompts under one reward, but the reward's "
                "parameters differ from prompt to prompt; leave together at 1"
            )
        body = {k: v for k, v in bodies[0].items() if k not in ("prompt", "messages")}
        body["prompts"] = [b["messages"] if "messages" in b else b["prompt"] for b in bodies]
        body["return_candidates"] = True
        start = time.perf_counter()
        out = await self.client.align(body)
        wall = time.perf_counter() - start
        n, k = int(request.get("n", 1)), len(prompts)
        infos = out.get("info") if isinstance(out.get("info"), list) else [out.get("info")] * k
        total = out.get("usage") or {}
        records = []
        for i, prompt in enumerate(prompts):
            choices = out["choices"][i * n : (i + 1) * n]
            candidates = (out.get("candidates") or [[]] * k)[i]
            usage = {
                key: total.get(key, 0) / k for key in ("engine_prompt_tokens", "engine_cached_tokens", "engine_calls")
            }
            usage["engine_completion_tokens"] = sum(c.get("num_tokens", 0) for c in candidates)
            usage["reward_calls"] = total.get("reward_calls", 0) / k
            answer = Answer(
                texts=[c["text"] for c in choices],
                finish_reasons=[c.get("finish_reason") for c in choices],
                alignment={"choices": choices, "candidates": candidates, "usage": usage, "timings": out["timings"]},
                ttft_s=None,
                wall_s=wall,
                usage={},
            )
            answer.alignment["info"] = {**(infos[i] or {}), "prompts_in_request": k}
            records.append(await self._record(prompt, label, run.decoder, answer))
        return records

    async def _record(
        self, prompt: PromptRecord, label: str, decoder: dict[str, Any], answer: Answer
    ) -> dict[str, Any]:
        alignment = answer.alignment
        choice = (alignment.get("choices") or [{}])[0]
        text = answer.texts[0] if answer.texts else ""
        return {
            "prompt_id": prompt.id,
            "config": label,
            "decoder": decoder,
            "text": text,
            "texts": answer.texts,
            "finish_reason": answer.finish_reasons[0] if answer.finish_reasons else None,
            "reward": choice.get("reward"),
            "rewards": choice.get("rewards"),
            "calibrated_reward": choice.get("calibrated_reward"),
            "candidates": alignment.get("candidates"),
            "usage": alignment.get("usage", {}),
            "timings": alignment.get("timings", {}),
            "info": alignment.get("info"),
            "ttft_s": answer.ttft_s,
            "wall_s": answer.wall_s,
            "eval_rewards": await self._held_out(prompt, text),
            "correct": correct(text, prompt.answer) if prompt.answer is not None else None,
            "distinct_2": distinct_n(answer.texts) if len(answer.texts) > 1 else None,
        }

    async def _reference_record(self, prompt: PromptRecord) -> dict[str, Any]:
        """K samples of the model at temperature 1 scored by the optimised reward, in total (the KL plug-in's CDF)
        and per term (the calibrated reward's CDFs)."""
        request = {**self.config.request, "temperature": 1.0, "top_p": 1.0}
        if request.get("seed") is not None:
            request["seed"] = request["seed"] + REFERENCE_SEED_OFFSET
        body = self._body(prompt, request, {"name": "best_of_n", "num_candidates": self.config.kl_references})
        out = await self.client.align(body)
        candidates = out.get("candidates") or []
        terms = sorted({name for c in candidates for name in c.get("rewards") or {}})
        return {
            "prompt_id": prompt.id,
            "config": REFERENCES,
            "reference_rewards": [c["reward"] for c in candidates],
            "reference_terms": {name: [(c.get("rewards") or {}).get(name) for c in candidates] for name in terms},
            "usage": out.get("usage", {}),
        }

    # ---- the run ---------------------------------------------------------------------------------------------

    def _jobs(self, done: set[tuple[str, str]]) -> list[tuple[str, PromptRecord | list[PromptRecord], Run | None]]:
        jobs: list[tuple[str, PromptRecord | list[PromptRecord], Run | None]] = []
        wants_references = self.config.kl_references > 0 and bool(self.config.reward)
        for prompt in self.prompts:
            if (prompt.id, BASELINE) not in done:
                jobs.append((BASELINE, prompt, None))
            if wants_references and (prompt.id, REFERENCES) not in done:
                jobs.append((REFERENCES, prompt, None))
        for run in self.runs:
            pending = [p for p in self.prompts if (p.id, run.label) not in done]
            if run.together > 1:
                size = run.together
                jobs.extend((run.label, pending[i : i + size], run) for i in range(0, len(pending), size))
            else:
                jobs.extend((run.label, p, run) for p in pending)
        return jobs

    async def run(self, progress_stream: TextIO = sys.stderr, on_record: Callable[[dict], None] | None = None) -> int:
        """Run what the output folder does not have yet; returns how many requests were made."""
        self.out.mkdir(parents=True, exist_ok=True)
        done = {(r["prompt_id"], r["config"]) for r in self.load_results() if not r.get("error")}
        jobs = self._jobs(done)
        progress = Progress(len(jobs), progress_stream)
        semaphore = asyncio.Semaphore(self.config.concurrency)

        async def one(label: str, prompt: PromptRecord | list[PromptRecord], run: Run | None) -> None:
            async with semaphore:
                group = prompt if isinstance(prompt, list) else [prompt]
                try:
                    if isinstance(prompt, list):
                        assert run is not None
                        records = await self._shared_records(prompt, label, run)
                    elif label == REFERENCES:
                        records = [await self._reference_record(prompt)]
                    else:
                        records = [await self._answer_record(prompt, label, run)]
                except RequestFailed as exc:
                    if exc.status == 401:
                        raise EvalInputError("the server refused the API key; pass the right --api-key") from None
                    records = [
                        {"prompt_id": p.id, "config": label, "error": str(exc), "status": exc.status} for p in group
                    ]
                except httpx.TransportError as exc:
                    raise EvalInputError(
                        f"lost the server at {self.client.base_url} ({type(exc).__name__}); the report covers what "
                        "finished, and a re-run continues"
                    ) from None
                for record in records:
                    self._append(record)
                    if on_record is not None:
                        on_record(record)
                progress.step(label if label not in (BASELINE, REFERENCES) else label.strip("_"))

        try:
            # The semaphore is fair, so jobs start in order (baselines first, then each configuration).
            async with asyncio.TaskGroup() as tg:
                for job in jobs:
                    tg.create_task(one(*job))
        except* EvalInputError as group:
            raise group.exceptions[0] from None
        finally:
            progress.close()
        return len(jobs)
