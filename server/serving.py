"""Running a generation request: resolve it, check it, decode it under a deadline, stop if the client leaves.

Shared by ``/v1/align``, ``/v1/completions`` and ``/v1/chat/completions``. Everything that can be refused is
refused in :meth:`Serving.prepare`, before the engine sees anything. A request with several prompts decodes
them concurrently under child ids ``f"{request_id}-p{i}"``; if the client disconnects or the deadline passes,
the decode tasks are cancelled and every engine sub-request they started is aborted.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from ..decoders import Candidate, Cost, DecodeContext, Decoder, DecodeRequest, DecoderError, DecodeResult, Usage
from ..engines.metering import DECODER, MeteredEngine
from ..engines.protocol import Engine, SamplingConfig, StreamDelta, first_error
from ..rewards import Prompt, RewardSet
from . import metrics
from .errors import BadRequest, ClientDisconnected, DeadlineExceeded, to_align_error
from .protocol import GenerationPlan, SamplingFields
from .responses import Alignment, AlignmentChoice, CandidateOut
from .runtime import Runtime

log = logging.getLogger(__name__)

Render = Callable[[Engine], Sequence[tuple[list[int], Prompt]]]
"""Turns a request's prompt(s) into (prompt token ids, what rewards see) pairs for a given engine."""

PROMPT_LOGPROBS = "prompt_logprobs"
"""The source label of the engine call that reads an echoed prompt's log-probs."""


@dataclass(slots=True)
class Prepared:
    """A request that passed every check: what to run, on what, for which prompts."""

    request_id: str
    model: str
    engine: Engine
    decoder: Decoder
    rewards: RewardSet | None
    plan: GenerationPlan
    prompts: list[tuple[list[int], Prompt]]
    """Each prompt as the user gave it (token ids, and what rewards see): what ``echo`` returns."""
    decodes: list[DecodeRequest]
    """Each prompt as the decoder will run it (re-rendered by decoders such as URIAL)."""
    created: int

    @property
    def reward_names(self) -> list[str]:
        return self.rewards.names if self.rewards else []

    @property
    def n(self) -> int:
        return self.plan.n


@dataclass(slots=True)
class PromptEcho:
    """A stream event before a prompt's answers: the prompt itself (``echo``), with its log-probs if asked."""

    token_ids: list[int]
    text: str
    rows: list[dict[int, float] | None] | None
    finished: bool
    """No answer follows (``max_tokens=0``)."""


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class Serving:
    """Prepares and runs generation requests for the HTTP routes."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def prepare(self, body: SamplingFields, render: Render, request_id: str) -> Prepared:
        """Convert the request to a plan, resolve its names, render and check every prompt the model will read.
        Raises 400/404 errors; starts no work."""
        rt = self.runtime
        plan = body.plan(rt.limits)
        model_name, engine = rt.engine(plan.model)
        decoder = rt.decoder(plan.decoder, plan.decoder_params)
        rewards = rt.reward_set(plan.rewards, decoder)
        plan.check_vocab(engine.info.vocab_size)
        score_only = plan.sampling.max_tokens == 0
        if score_only and decoder.name != "sample":
            raise BadRequest("max_tokens=0 only scores the prompt (echo); it takes no decoder", param="max_tokens")
        rendered = list(render(engine))
        decodes = []
        for i, (ids, reward_prompt) in enumerate(rendered):
            field = "messages" if isinstance(reward_prompt, list) else "prompt"
            if not ids:
                raise BadRequest("the prompt is empty after tokenization", param=field)
            request = DecodeRequest(
                request_id=request_id if len(rendered) == 1 else f"{request_id}-p{i}",
                prompt_token_ids=ids,
                prompt=reward_prompt,
                sampling=plan.sampling,
                n=plan.n,
            )
            if score_only:  # reading the prompt's log-probs generates one token, which must fit
                if len(ids) >= engine.info.max_model_len:
                    raise BadRequest(
                        f"the prompt has {len(ids)} tokens; this model's context is {engine.info.max_model_len}",
                        param=field,
                    )
                decodes.append(request)
                continue
            try:
                request = decoder.prepare(request, engine, rewards, fit_max_tokens=not plan.max_tokens_given)
            except DecoderError as exc:
                raise BadRequest(str(exc), param=field if exc.param == "prompt" else exc.param) from None
            self._check_cost(decoder, decoder.worst_case(request), plan)
            decodes.append(request)
        if log.isEnabledFor(logging.INFO):
            chars = rt.settings.log_prompt_chars
            shown = repr(str(rendered[0][1])[:chars]) if chars else "<not logged>"
            log.info(
                "%s model=%s decoder=%s prompts=%d prompt=%s", request_id, model_name, decoder.name, len(decodes), shown
            )
        return Prepared(request_id, model_name, engine, decoder, rewards, plan, rendered, decodes, int(time.time()))

    def _check_cost(self, decoder: Decoder, cost: Cost | None, plan: GenerationPlan) -> None:
        """Refuse, before any work, a request whose worst case is over the server's cap or the request's budget,
        unless the decoder can stop early at a budget the request set (and its first step fits that budget)."""
        if cost is None:
            return
        cap = self.runtime.limits.max_engine_tokens_per_request
        budget = plan.budget.max_engine_tokens
        if cost.tokens <= min(cap, budget or cap):
            return
        if decoder.anytime and budget is not None:
            unit = cost.unit or cost.tokens
            if unit > budget:
                raise BadRequest(
                    f"{decoder.name} spends up to {unit:,} engine tokens before it can first stop for a budget; "
                    f"raise budget.max_engine_tokens to at least {unit:,} or lower {cost.param}",
                    param="budget.max_engine_tokens",
                )
            return
        if cost.tokens > cap:
            hint = f" or set budget.max_engine_tokens ({decoder.name} stops at its budget)" if decoder.anytime else ""
            raise BadRequest(
                f"decoder {decoder.name!r} could spend up to {cost.tokens:,} engine tokens ({cost.why}); this server "
                f"allows {cap:,} per request. Lower {cost.param}{hint}.",
                param=cost.param,
            )
        raise BadRequest(
            f"{decoder.name} cannot stop early, and its worst case is {cost.tokens:,} engine tokens ({cost.why}), over "
            f"budget.max_engine_tokens={budget:,}; lower {cost.param} or raise the budget",
            param="budget.max_engine_tokens",
        )

    def _deadline(self, prepared: Prepared) -> float:
        """The request's deadline in seconds: a budget's ``max_seconds`` is one for decoders that cannot stop
        early (anytime decoders stop themselves and return what they have)."""
        timeout = self.runtime.limits.request_timeout_s
        seconds = prepared.plan.budget.max_seconds
        return timeout if seconds is None or prepared.decoder.anytime else min(timeout, seconds)

    def _context(self, prepared: Prepared) -> DecodeContext:
        return DecodeContext(prepared.engine, prepared.rewards, self.runtime.engines, prepared.plan.budget)

    # ---- non-streaming ---------------------------------------------------------------------------------------

    async def run(self, prepared: Prepared, http_request: Request | None) -> list[DecodeResult]:
        """Decode every prompt concurrently; cancel all of it on disconnect or deadline."""

        async def decode_all() -> list[DecodeResult]:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._decode_one(prepared, i)) for i in range(len(prepared.decodes))]
            return [t.result() for t in tasks]

        work = asyncio.create_task(decode_all())
        watcher = asyncio.create_task(_wait_disconnect(http_request)) if http_request is not None else None
        try:
            async with asyncio.timeout(self._deadline(prepared)):
                waiting = {work} | ({watcher} if watcher else set())
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the request did not finish within {self._deadline(prepared):g} s; its work was aborted",
                code="deadline_exceeded",
            ) from None
        finally:
            for task in (work, watcher):
                if task is not None and not task.done():
                    task.cancel()
            await asyncio.gather(*(t for t in (work, watcher) if t is not None), return_exceptions=True)
        if work not in done:
            raise ClientDisconnected(prepared.request_id)
        try:
            return work.result()
        except BaseExceptionGroup as group:  # surface the first real error of the task group
            raise first_error(group) from None

    async def _decode_one(self, prepared: Prepared, i: int) -> DecodeResult:
        request = prepared.decodes[i]
        ctx = self._context(prepared)
        if request.sampling.max_tokens == 0:
            result = _prompt_only(ctx, request)
        else:
            result = await prepared.decoder.decode(request, ctx)
        if prepared.plan.prompt_logprobs is not None:
            result.prompt_logprobs = await self._prompt_logprobs(prepared, i, ctx)
        metrics.observe_decode(prepared.decoder.name, result)
        return result

    async def _prompt_logprobs(self, prepared: Prepared, i: int, ctx: DecodeContext) -> list[dict[int, float] | None]:
        """The log-prob rows of the prompt the user gave (``echo``); its prefix is usually cached by now."""
        engine = MeteredEngine(prepared.engine, ctx.usage.engine, PROMPT_LOGPROBS)
        params = SamplingConfig(max_tokens=1, temperature=0.0, prompt_logprobs=prepared.plan.prompt_logprobs)
        ids = prepared.prompts[i][0]
        [gen] = await engine.generate([ids], params, f"{prepared.decodes[i].request_id}-echo")
        return gen.prompt_logprobs or [None] * len(ids)

    # ---- streaming -------------------------------------------------------------------------------------------

    async def stream(self, prepared: Prepared) -> AsyncIterator[tuple[int, StreamDelta | PromptEcho | DecodeResult]]:
        """Yield ``(prompt index, event)``: the prompt first with ``echo``, then deltas, then the result; prompts
        are streamed one after another, within the request's deadline.

        The deadline is enforced around each step of the iteration, in the task that asks for it: a stream's first
        event is awaited by the route's task and the rest by the response's, and a timer bound to the first would
        cancel the whole response instead of ending the stream with an error event."""
        deadline = asyncio.get_running_loop().time() + self._deadline(prepared)
        events = self._events(prepared)
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        event = await anext(events)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"the request did not finish within {self._deadline(prepared):g} s", code="deadline_exceeded"
                    ) from None
                yield event
        finally:
            await events.aclose()

    async def _events(self, prepared: Prepared) -> AsyncIterator[tuple[int, StreamDelta | PromptEcho | DecodeResult]]:
        tok = prepared.engine.tokenizer
        for i, request in enumerate(prepared.decodes):
            ctx = self._context(prepared)
            score_only = request.sampling.max_tokens == 0
            if prepared.plan.echo:
                rows = None
                if prepared.plan.prompt_logprobs is not None:
                    rows = await self._prompt_logprobs(prepared, i, ctx)
                ids, shown = prepared.prompts[i]
                text = shown if isinstance(shown, str) else tok.decode(ids)
                yield i, PromptEcho(ids, text, rows, finished=score_only)
            if score_only:
                result = _prompt_only(ctx, request)
                metrics.observe_decode(prepared.decoder.name, result)
                yield i, result
                continue
            async for event in prepared.decoder.stream(request, ctx):
                if isinstance(event, DecodeResult):
                    metrics.observe_decode(prepared.decoder.name, event)
                yield i, event


def _prompt_only(ctx: DecodeContext, request: DecodeRequest) -> DecodeResult:
    """``max_tokens=0``: the prompt is scored, nothing is generated; ``n`` empty answers."""
    empty = [Candidate(index=j, text="", token_ids=[], finish_reason="length") for j in range(request.n)]
    return ctx.result(request, empty, [])


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def status_of(exc: BaseException | None) -> int:
    """HTTP status a request ended with, for metrics."""
    return 200 if exc is None else to_align_error(exc).status


def usage_dict(results: Sequence[DecodeResult]) -> dict[str, Any]:
    """OpenAI's ``usage``: tokens of the prompts and of the returned answers (engine totals are in alignment)."""
    # The prompt the model saw: a decoder may render its own (URIAL's prefix), so take it from the results.
    prompt = sum(r.usage.prompt_tokens for r in results)
    completion = sum(r.usage.completion_tokens for r in results)
    cached = sum(
        r.usage.engine.by_source[DECODER].cached_tokens for r in results if DECODER in r.usage.engine.by_source
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def alignment(prepared: Prepared, results: Sequence[DecodeResult], with_candidates: bool) -> Alignment:
    """The ``alignment`` object of OpenAI responses (and the extras of ``/v1/align``)."""
    n = prepared.n
    usage = Usage()
    timings: dict[str, float] = {}
    for result in results:
        usage.merge(result.usage)
        for key, value in result.timings.items():
            timings[key] = max(timings.get(key, 0.0), value) if key == "total" else timings.get(key, 0.0) + value
    info = [r.info for r in results if r.info]
    candidates: Any = None
    if with_candidates:
        candidates = [[CandidateOut.of(c) for c in r.candidates] for r in results]
        if len(results) == 1:
            candidates = candidates[0]
    return Alignment(
        decoder=prepared.decoder.name,
        decoder_params=prepared.decoder.params.model_dump(mode="json"),
        reward=prepared.reward_names,
        choices=[AlignmentChoice.of(p * n + j, c) for p, r in enumerate(results) for j, c in enumerate(r.choices)],
        usage=usage.as_dict(),
        timings=timings,
        info=(info if len(info) > 1 else info[0]) if info else None,
        candidates=candidates,
    )
