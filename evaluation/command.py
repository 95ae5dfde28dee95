"""The ``alignd eval`` command: load the evaluation, reach (or start) a server, run, write the report.

Bad input ends with one line on stderr and exit code 2 (never a traceback); Ctrl-C stops the run, writes the
report of what finished and exits with 130; a re-run with the same ``--out`` continues where it stopped.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from .client import EvalClient, local_server
from .config import EvalConfig, EvalInputError, load_config
from .report import machine, plot, write_html
from .runner import Evaluation
from .stats import summarize


def run_command(
    config_path: Path,
    *,
    out: Path | None = None,
    url: str | None = None,
    api_key: str | None = None,
    server_config: Path | None = None,
    concurrency: int | None = None,
    limit: int | None = None,
    skip: int | None = None,
) -> int:
    """Run an evaluation; returns the process exit code."""
    try:
        config = load_config(config_path, {"concurrency": concurrency, "limit": limit, "skip": skip})
        out_dir = out or Path("eval-results") / config_path.stem
        return asyncio.run(_run(config, config_path, out_dir, url, api_key, server_config))
    except EvalInputError as exc:
        print(f"alignd eval: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alignd eval: interrupted; the report covers what finished (run again to continue)", file=sys.stderr)
        return 130


@asynccontextmanager
async def _server(url: str | None, server_config: Path | None):
    if url is not None:
        yield url
        return
    from ..server.settings import Settings

    if server_config is not None and not server_config.is_file():
        raise EvalInputError(f"the server configuration {server_config} does not exist")
    try:
        settings = Settings(config=server_config) if server_config else Settings()
    except Exception as exc:  # a settings validation error: say what is wrong, no traceback
        raise EvalInputError(f"the server configuration is invalid: {exc}") from None
    async with local_server(settings) as base:
        yield base


async def _run(
    config: EvalConfig, config_path: Path, out_dir: Path, url: str | None, api_key: str | None, server: Path | None
) -> int:
    async with _server(url, server) as base:
        client = EvalClient(base, api_key)
        try:
            evaluation = Evaluation(config, client, out_dir)
            await evaluation.check()
            meta: dict[str, Any] = {
                "name": config_path.stem,
                "config_text": config_path.read_text(),
                "server": {"url": base if url else "in process", **evaluation.server["version"]},
                "machine": machine(),
                "started": _now(),
            }
            try:
                made = await evaluation.run()
            finally:
                meta["finished"] = _now()
                report = write_report(evaluation, meta)
            print(f"alignd eval: {made} requests; report: {report}", file=sys.stderr)
        finally:
            await client.close()
    return 0


def write_report(evaluation: Evaluation, meta: dict[str, Any]) -> Path:
    """``summary.json``, the plots and ``report.html`` from the folder's ``results.jsonl``."""
    runs = [{**run.model_dump(), "request_resolved": evaluation.resolved_request(run)} for run in evaluation.runs]
    summary = summarize(evaluation.load_results(), runs, evaluation.config.kl_references)
    summary["optimised_reward"] = " + ".join(
        r.name if r.weight == 1 else f"{r.weight:g} {r.name}" for r in evaluation.config.reward
    )
    summary["meta"] = {k: v for k, v in meta.items() if k != "config_text"}
    (evaluation.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, evaluation.out)
    return write_html(summary, meta, evaluation.out)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
