"""The server's running state: engines, declared rewards, admission control, and request resolution.

Resolution turns the names a request gives (model, decoder, reward) into live objects, refusing unknown names
with 404 and out-of-bounds parameters with 400, always naming the field. Nothing here knows HTTP framing.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any

from pydantic import ValidationError

from ..decoders import Decoder, DecoderParams, decoder_registry
from ..decoders.protocol import CAPS, caps_of
from ..engines.metering import MeteredEngine
from ..engines.models import resolve_model_path
from ..engines.protocol import Engine, EngineUnavailable
from ..engines.registry import engine_registry
from ..rewards import Reward, RewardConfigError, RewardContext, RewardSet, RewardTerm, build_reward, reward_kinds
from . import metrics
from .errors import BadRequest, NotFound, Overloaded, Unavailable
from .generation.protocol import RewardSpec
from .settings import Limits, Settings

log = logging.getLogger(__name__)


def build_engines(settings: Settings) -> dict[str, Engine]:
    """One engine per configured model, built by the engine adapter it names (not started)."""
    engines: dict[str, Engine] = {}
    adapters = engine_registry()
    for name, model in settings.models.items():
        adapter = adapters[model.engine]  # the settings checked the name
        path = str(resolve_model_path(model.path, settings.home, tokenizer_only=adapter.tokenizer_only))
        engines[name] = adapter(name, path, model.engine_args)  # type: ignore[call-arg]
    return engines


class Runtime:
    """Engines, rewards and limits of one server, plus the admission counter."""

    def __init__(self, settings: Settings, engines: dict[str, Engine]):
        # Plug-ins load now: one that cannot be imported, or caps a parameter by a limit the server does not
        # have, stops the server before it binds (alignd.registry).
        missing = CAPS - set(Limits.model_fields)
        if missing:
            raise RuntimeError(f"decoder parameters can be capped by limits the server lacks: {sorted(missing)}")
        decoder_registry()
        reward_kinds()
        self.settings = settings
        self.limits: Limits = settings.limits
        self.engines = engines
        self.rewards: dict[str, Reward] = {}
        self.decoder_options: dict[str, DecoderParams] = dict(settings.decoder_options)  # validated by the settings
        self.ready = False
        self.failed = False
        """Start-up failed (an engine or reward could not load)."""
        self.draining = False
        self.running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # ---- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every engine, then build and start every declared reward (a judge needs its engine)."""
        await asyncio.gather(*(engine.start() for engine in self.engines.values()))
        # Rewards are shared by all requests; their engine work is counted into whichever request is scoring.
        metered = {name: MeteredEngine(engine) for name, engine in self.engines.items()}
        context = RewardContext(engines=metered, default_model=self.settings.default_model_name)
        for name, config in self.settings.rewards.items():
            reward = build_reward(name, config, context)
            context.rewards[name] = reward
            self.rewards[name] = reward
        for reward in self.rewards.values():
            await reward.start()
        self.ready = True

    async def shutdown(self) -> None:
        self.ready = False
        for reward in self.rewards.values():
            try:
                await reward.close()
            except Exception:
                log.exception("closing reward %s failed", reward.name)
        await asyncio.gather(*(engine.shutdown() for engine in self.engines.values()), return_exceptions=True)

    async def drain(self, grace_s: float) -> None:
        """Refuse new work and wait up to ``grace_s`` for in-flight requests to finish."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace_s)
        except TimeoutError:
            log.warning("%d requests still running after the %.0f s grace period", self.running, grace_s)

    async def health(self) -> dict[str, str]:
        """Each engine's state: ``ok`` or why not. Raises :class:`Unavailable` unless all are ok."""
        states: dict[str, str] = {}
        for name, engine in self.engines.items():
            try:
                await engine.check_health()
                states[name] = "ok"
            except EngineUnavailable as exc:
                states[name] = str(exc)
        return states

    # ---- admission -------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def admit(self):
        """Hold one of ``max_concurrent_requests`` slots; refuse at once (429) when none is free."""
        if self.draining:
            raise Unavailable("the server is shutting down", code="shutting_down", headers={"Retry-After": "5"})
        if not self.ready:
            raise Unavailable("the server is still loading", code="loading", headers={"Retry-After": "5"})
        if self.running >= self.limits.max_concurrent_requests:
            metrics.REJECTED.inc()
            raise Overloaded(
                f"the server is serving its maximum of {self.limits.max_concurrent_requests} requests; retry shortly",
                code="too_many_requests",
                headers={"Retry-After": "1"},
            )
        self.running += 1
        self._idle.clear()
        metrics.RUNNING.set(self.running)
        try:
            yield
        finally:
            self.running -= 1
            metrics.RUNNING.set(self.running)
            if self.running == 0:
                self._idle.set()

    # ---- resolution ------------------------------------------------------------------------------------------

    def engine(self, model: str | None) -> tuple[str, Engine]:
        name = model or self.settings.default_model_name
        engine = self.engines.get(name)
        if engine is None:
            raise NotFound(
                f"model {name!r} is not served here; available: {', '.join(sorted(self.engines))}",
                param="model",
                code="model_not_found",
            )
        return name, engine

    def decoder(self, name: str, params: dict[str, Any], param_prefix: str = "decoder") -> Decoder:
        registry = decoder_registry()
        cls = registry.get(name)
        if cls is None:
            raise NotFound(
                f"decoder {name!r} does not exist; available: {', '.join(sorted(registry))}",
                param=param_prefix if param_prefix == "decoder" else f"{param_prefix}.name",
                code="decoder_not_found",
            )
        try:
            decoder_params = cls.Params.model_validate(params)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            where = f"{field}: " if field else ""
            raise BadRequest(
                f"decoder {name!r}: {where}{err['msg']}", param=f"decoder.{field}" if field else "decoder"
            ) from None
        self._check_caps(decoder_params)
        return cls(decoder_params, self.decoder_options.get(name))

    def _check_caps(self, params: DecoderParams) -> None:
        for field, limit_name in caps_of(type(params)).items():
            limit = getattr(self.limits, limit_name)
            value = getattr(params, field)
            if value is not None and value > limit:
                raise BadRequest(
                    f"decoder.{field}={value} is over this server's limit {limit_name}={limit}",
                    param=f"decoder.{field}",
                )

    def reward_set(self, specs: tuple[RewardSpec, ...], decoder: Decoder) -> RewardSet | None:
        """The declared rewards ``specs`` name (404 for an unknown one), with per-request overrides applied; the
        server's ``default_reward`` when none is named and the decoder needs one."""
        if not specs and decoder.needs_reward() and self.settings.default_reward:
            specs = (RewardSpec(name=self.settings.default_reward),)
        if not specs:
            return None
        terms = []
        for i, spec in enumerate(specs):
            reward = self.rewards.get(spec.name)
            param = "reward" if len(specs) == 1 else f"reward.{i}.name"
            if reward is None:
                raise NotFound(
                    f"reward {spec.name!r} is not declared; available: {', '.join(sorted(self.rewards))}",
                    param=param,
                    code="reward_not_found",
                )
            if spec.params:
                try:
                    reward = reward.with_overrides(spec.params)
                except RewardConfigError as exc:
                    raise BadRequest(str(exc), param=f"{param.removesuffix('.name')}.params") from None
            terms.append(RewardTerm(reward, spec.weight))
        return RewardSet(terms)
