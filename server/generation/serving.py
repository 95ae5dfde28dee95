"""Running a generation request: check it, decode it under a deadline, stop if the client leaves.

Shared by every generation endpoint family. Everything that can be refused is refused in :meth:`Serving.prepare`,
one sequence of checks in a fixed order, before the engine sees anything. A request with several prompts decodes
them concurrently under child ids ``f"{request_id}-p{i}"``; if the client disconnects or the deadline passes, the
decode tasks are cancelled and every engine sub-request they started is aborted.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

from fastapi import Request

from ...decoders import Candidate, Cost, DecodeContext, Decoder, DecodeRequest, DecoderError, DecodeResult
from ...decoders.protocol import decoder_registry
from ...engines.metering import MeteredEngine
from ...engines.protocol import Engine, SamplingConfig, StreamDelta, first_error
from ...rewards import Prompt, RewardSet
from ...structured import FormatError, tool_parser
from ...tracing import set_attributes, span
from .. import metrics
from ..errors import BadRequest, ClientDisconnected, DeadlineExceeded, to_align_error
from ..runtime import Runtime
from .prompts import PromptInput, render
from .protocol import GenerationPlan, SamplingFields

log = logging.getLogger(__name__)

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

    def prepare(self, body: SamplingFields, prompts: Sequence[PromptInput], request_id: str) -> Prepared:
        """Every check a generation request passes, in order, before any work (400 or 404 naming the field):

        1. schema: the body parsed at the route, then what its endpoint does not serve;
        2. caps: the request's fields against the server's limits;
        3. names: the model, the decoder (its parameters and their caps) and the rewards;
        4. render: each prompt as the model will read it (the chat template, the decoder's own rendering) and the
           context it leaves;
        5. cost: the decoder's worst case against the server's cap and the request's budget.
        """
        rt = self.runtime
        plan = body.plan(rt.limits)  # 1, 2
        model_name, engine = rt.engine(plan.model)  # 3
        decoder = rt.decoder(plan.decoder, plan.decoder_params)
        rewards = rt.reward_set(plan.rewards, decoder)
        plan.check_vocab(engine.info.vocab_size)
        self._check_format(plan, model_name, engine, decoder)
        if plan.sampling.max_tokens == 0 and decoder.name != "sample":
            raise BadRequest("max_tokens=0 only scores the prompt (echo); it takes no decoder", param="max_tokens")
        rendered = [render(engine, prompt) for prompt in prompts]  # 4
        ids = [request_id] if len(prompts) == 1 else [f"{request_id}-p{i}" for i in range(len(prompts))]
        decodes = [
            self._decode_request(plan, engine, decoder, rewards, shown, prompt.param, rid)  # 4, 5
            for prompt, shown, rid in zip(prompts, rendered, ids)
        ]
        if log.isEnabledFor(logging.INFO):
            chars = rt.settings.log_prompt_chars
            shown = repr(str(rendered[0][1])[:chars]) if chars else "<not logged>"
            log.info(
                "%s model=%s decoder=%s prompts=%d prompt=%s", request_id, model_name, decoder.name, len(decodes), shown
            )
        return Prepared(request_id, model_name, engine, decoder, rewards, plan, rendered, decodes, int(time.time()))

    def _check_format(self, plan: GenerationPlan, model: str, engine: Engine, decoder: Decoder) -> None:
        """Refuse a shape this decoder cannot keep to, or free tool calls this model has no parser for; give the
        request's answer format its tool parser."""
        fmt = plan.answer_format
        if fmt is None:
            return
        if plan.sampling.constraint is not None:
            continues = engine.info.prefix_grammar
            able = sorted(
                name
                for name, cls in decoder_registry().items()
                if cls.structured_output and (continues or not cls.continues_prefix)
            )
            if not decoder.structured_output:
                raise BadRequest(
                    f"decoder {decoder.name!r} cannot keep its answers to {plan.format_param}. "
                    f"Decoders that can: {', '.join(able)}",
                    param=plan.format_param,
                )
            if decoder.continues_prefix and not continues:
                raise BadRequest(
                    f"decoder {decoder.name!r} cannot keep its answers to {plan.format_param} on model {model!r}: it "
                    "extends committed parts of the answer, and this engine cannot continue a grammar from them "
                    "(a remote engine needs its servers started with --logits-processors "
                    "alignd.engines.grammar:PrefixGrammar and the option prefix_grammar: true; speculative decoding "
                    f"rules the processor out). Decoders that can here: {', '.join(able)}",
                    param=plan.format_param,
                )
        if fmt.tool_choice == "auto":
            parser = self.runtime.settings.models[model].tool_call_parser
            if parser is None:
                raise BadRequest(
                    f"tool_choice 'auto' needs a tool_call_parser for model {model!r} (its configuration sets none); "
                    "name the function in tool_choice, or use 'required'",
                    param="tool_choice",
                )
            hf = getattr(engine.tokenizer, "hf", engine.tokenizer)
            try:
                fmt.parser = tool_parser(parser, hf, list(fmt.tools.values()))
            except FormatError as exc:
                raise BadRequest(str(exc), param=exc.param) from None

    def _decode_request(
        self,
        plan: GenerationPlan,
        engine: Engine,
        decoder: Decoder,
        rewards: RewardSet | None,
        rendered: tuple[list[int], Prompt],
        param: str,
        request_id: str,
    ) -> DecodeRequest:
        """One rendered prompt as the decoder will run it (steps 4 and 5 of :meth:`prepare`)."""
        ids, shown = rendered
        if not ids:
            raise BadRequest("the prompt is empty after tokenization", param=param)
        request = DecodeRequest(request_id, ids, shown, sampling=plan.sampling, n=plan.n)
        if plan.sampling.max_tokens == 0:  # reading the prompt's log-probs generates one token, which must fit
            if len(ids) >= engine.info.max_model_len:
                raise BadRequest(
                    f"the prompt has {len(ids)} tokens; this model's context is {engine.info.max_model_len}",
                    param=param,
                )
            return request
        try:
            request = decoder.prepare(request, engine, rewards, fit_max_tokens=not plan.max_tokens_given)
        except DecoderError as exc:
            raise BadRequest(str(exc), param=param if exc.param == "prompt" else exc.param) from None
        self._check_cost(decoder, decoder.worst_case(request), plan)
        return request

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

    def _context(self, prepared: Prepared, whole_budget: bool = False) -> DecodeContext:
        """A decode's context. A request's budget is one for all its prompts: each prompt decoded alone gets an
        equal share of its engine tokens; a decoder that decodes them together gets the whole (``whole_budget``)."""
        # The request is the session: every engine call of it, on any prompt, goes to the replica chosen for it.
        rt, plan = self.runtime, prepared.plan
        budget = plan.budget
        prompts = len(prepared.decodes)
        if prompts > 1 and not whole_budget and budget.max_engine_tokens is not None:
            budget = replace(budget, max_engine_tokens=max(1, budget.max_engine_tokens // prompts))
        return DecodeContext(
            prepared.engine, prepared.rewards, rt.engines, budget, prepared.request_id, plan.answer_format
        )

    async def _decode_together(self, prepared: Prepared) -> list[DecodeResult] | None:
        """The prompts decoded as one by a decoder that can (a shared budget), or ``None``."""
        alone = len(prepared.decodes) < 2 or any(r.sampling.max_tokens == 0 for r in prepared.decodes)
        if alone or not prepared.decoder.decodes_together():
            return None
        contexts = [self._context(prepared, whole_budget=True) for _ in prepared.decodes]
        with span("decode", decoder=prepared.decoder.name, prompts=len(contexts)) as parent:
            for ctx in contexts:
                ctx.trace_parent = parent
            results = await prepared.decoder.decode_together(prepared.decodes, contexts)
            if prepared.plan.prompt_logprobs is not None:
                for i, (result, ctx) in enumerate(zip(results, contexts)):
                    result.prompt_logprobs = await self._prompt_logprobs(prepared, i, ctx)
        for result in results:
            _decoded(None, prepared, result)
        return results

    # ---- non-streaming ---------------------------------------------------------------------------------------

    async def run(self, prepared: Prepared, http_request: Request | None) -> list[DecodeResult]:
        """Decode every prompt concurrently; cancel all of it on disconnect or deadline."""

        async def decode_all() -> list[DecodeResult]:
            together = await self._decode_together(prepared)
            if together is not None:
                return together
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
        with _decode_span(prepared, request) as ctx.trace_parent:
            if request.sampling.max_tokens == 0:
                result = _prompt_only(ctx, request)
            else:
                result = await prepared.decoder.decode(request, ctx)
            if prepared.plan.prompt_logprobs is not None:
                result.prompt_logprobs = await self._prompt_logprobs(prepared, i, ctx)
            _decoded(ctx.trace_parent, prepared, result)
        return result

    async def _prompt_logprobs(self, prepared: Prepared, i: int, ctx: DecodeContext) -> list[dict[int, float] | None]:
        """The log-prob rows of the prompt the user gave (``echo``); its prefix is usually cached by now."""
        engine = MeteredEngine(prepared.engine, ctx.usage.engine, PROMPT_LOGPROBS, session=ctx.session)
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
        if not prepared.plan.echo:
            together = await self._decode_together(prepared)
            for i, result in enumerate(together or []):  # decided together: each prompt's answers, then its result
                for j, c in enumerate(result.choices):
                    yield i, StreamDelta(index=j, text=c.text, token_ids=c.token_ids, finish_reason=c.finish_reason)
                yield i, result
            if together is not None:
                return
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
                _decoded(None, prepared, result)
                yield i, result
                continue
            with _decode_span(prepared, request, attach=False) as ctx.trace_parent:
                async for event in prepared.decoder.stream(request, ctx):
                    if isinstance(event, DecodeResult):
                        _decoded(ctx.trace_parent, prepared, event)
                    yield i, event


def _decode_span(prepared: Prepared, request: DecodeRequest, attach: bool = True):
    """The span of one prompt's decode (a stream's is not attached: it spans the stream's yields)."""
    return span(
        "decode",
        attach=attach,
        decoder=prepared.decoder.name,
        model=prepared.model,
        request_id=request.request_id,
        prompt_tokens=len(request.prompt_token_ids),
        max_tokens=request.sampling.max_tokens,
    )


def _decoded(current: object, prepared: Prepared, result: DecodeResult) -> None:
    """Record what a decode spent: on the metrics, and on its span."""
    metrics.observe_decode(prepared.decoder.name, result)
    u = result.usage
    set_attributes(
        current,
        candidates=len(result.candidates),
        engine_calls=u.engine_calls,
        engine_new_tokens=u.engine_new_tokens,
        engine_cached_tokens=u.engine_cached_tokens,
        reward_calls=u.reward_calls,
        budget_exhausted=result.info.get("budget_exhausted"),
    )


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
