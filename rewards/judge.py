"""``judge``: a served model rates each completion against a rubric; the reward is its log-odds of "yes".

reward = log P(yes) - log P(no), where P(yes) sums the probability of every spelling of the verdict ("Yes",
" yes", ...) at the first answer position. vLLM returns those exact log-probs through ``logprob_token_ids`` (no
top-k cut-off), and all candidates go to the engine in one call, so the rubric prefix is prefilled once and read
from the prefix cache for the others.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from pydantic import Field

from ..engines.protocol import Engine, SamplingConfig, logsumexp
from .protocol import Prompt, Reward, RewardConfigError, RewardParams, prompt_text, register

DEFAULT_RUBRIC = (
    "You are a strict evaluator of assistant responses. A good response answers the question directly, "
    "is correct, is clear, and is safe and polite."
)
DEFAULT_QUESTION = "Is the response good? Answer with Yes or No."


class JudgeParams(RewardParams):
    model: str | None = None
    """The served model that judges (a name under ``models``); default: the server's default model."""
    rubric: str = Field(DEFAULT_RUBRIC, max_length=8000)
    """The system text that tells the judge what a good answer is."""
    question: str = Field(DEFAULT_QUESTION, max_length=2000)
    """The yes/no question asked after the prompt and the response."""
    yes: list[str] = Field(["Yes", " Yes", "yes", " yes", "YES"], min_length=1, max_length=16)
    """Spellings of a positive verdict; the first token of each is read."""
    no: list[str] = Field(["No", " No", "no", " no", "NO"], min_length=1, max_length=16)
    """Spellings of a negative verdict."""
    max_response_chars: int = Field(4000, ge=1, le=200_000)
    """Longer responses are cut to this many characters before judging, to bound the judge's prompt."""


@register("judge")
class JudgeReward(Reward[JudgeParams]):
    """LLM-as-judge reward read from verdict log-probs; one engine call scores a whole batch."""

    def _engine(self) -> Engine:
        return self.served(self.params.model)

    def _verdict_ids(self, engine: Engine) -> tuple[list[int], list[int]]:
        """First tokens of the yes and no spellings. A token that starts spellings on both sides (" " when the
        tokenizer splits " Yes" and " no" after the space) says nothing about the verdict and is left out."""
        p = self.params

        def first_tokens(words: list[str]) -> set[int]:
            return {ids[0] for ids in (engine.tokenizer.encode(w) for w in words) if ids}

        yes, no = first_tokens(p.yes), first_tokens(p.no)
        shared = yes & no
        yes, no = yes - shared, no - shared
        if not yes or not no:
            raise RewardConfigError(
                f"reward {self.name!r}: this tokenizer gives the yes and no spellings no distinct first token; "
                "set 'yes' and 'no' to other spellings"
            )
        return sorted(yes), sorted(no)

    async def start(self) -> None:
        self._verdict_ids(self._engine())

    def render(self, engine: Engine, prompt: Prompt, completion: str) -> list[int]:
        """The judge's prompt tokens for one completion."""
        p = self.params
        response = completion[: p.max_response_chars]
        user = f"Question:\n{prompt_text(prompt)}\n\nResponse:\n{response}\n\n{p.question}"
        tok = engine.tokenizer
        if getattr(tok, "has_chat_template", False):
            text = tok.apply_chat_template(
                [{"role": "system", "content": p.rubric}, {"role": "user", "content": user}],
                add_generation_prompt=True,
            )
            return tok.encode(text)
        return tok.encode(f"{p.rubric}\n\n{user}\nAnswer:", add_special_tokens=True)

    async def score(self, prompt: Prompt, completions: Sequence[str]) -> list[float]:
        engine = self._engine()
        yes, no = self._verdict_ids(engine)
        prompts = [self.render(engine, prompt, c) for c in completions]
        params = SamplingConfig(max_tokens=1, temperature=0.0, logprob_token_ids=tuple(yes + no))
        gens = await engine.generate(prompts, params, f"reward-{self.name}-{uuid.uuid4().hex[:12]}")
        scores = []
        for gen in gens:
            row = (gen.completions[0].top_logprobs or [{}])[0]
            scores.append(
                logsumexp([row.get(t, float("-inf")) for t in yes]) - logsumexp([row.get(t, float("-inf")) for t in no])
            )
        return scores
