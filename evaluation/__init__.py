"""``alignd eval``: what each decoder buys per engine token, on your prompts and rewards.

It runs a JSONL prompt set against several decoder configurations on an alignd server (a running one, or the
default model started in this process), and writes ``results.jsonl`` (every prompt x configuration: the chosen
answer, every candidate with its rewards, usage, timings), ``summary.json``, PNG plots and a self-contained
``report.html``. See :mod:`alignd.evaluation.config` for the input formats and :mod:`alignd.evaluation.stats`
for how each number is computed.
"""

from .config import EvalConfig, EvalInputError, load_config, load_prompts
from .runner import Evaluation
from .stats import summarize

__all__ = ["EvalConfig", "EvalInputError", "Evaluation", "load_config", "load_prompts", "summarize"]
