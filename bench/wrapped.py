"""An engine wrapped by a benchmark: everything passes through to it unless the wrapper changes it."""

from __future__ import annotations


class EngineWrapper:
    """Passes every engine call through to ``engine``; benchmarks override what they measure (``generate``)."""

    def __init__(self, engine):
        self._engine = engine
        self.info, self.tokenizer = engine.info, engine.tokenizer

    async def generate(self, prompts, params, request_id, *, session=None):
        return await self._engine.generate(prompts, params, request_id, session=session)

    async def continuation_logprobs(self, prompts, continuations, request_id, *, session=None):
        return await self._engine.continuation_logprobs(prompts, continuations, request_id, session=session)

    def stream(self, prompt, params, request_id, *, session=None):
        return self._engine.stream(prompt, params, request_id, session=session)

    async def abort(self, request_ids):
        await self._engine.abort(request_ids)
