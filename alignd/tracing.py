"""OpenTelemetry traces of a request's work, when an OTLP endpoint is configured; nothing at all otherwise.

A search can take a minute over hundreds of engine and reward calls; its totals come back in ``alignment.usage``,
its shape in a trace. With ``otlp_traces_endpoint`` set (as vLLM's ``--otlp-traces-endpoint``) the server emits:

* ``POST /v1/...``: the request (the middleware), a child of the client's ``traceparent`` when it sends one;
* ``decode``: each prompt's decode, with the decoder's name and what it spent;
* ``decoder.<phase>``: each round or step of the decoder (``decoder.generate``, ``decoder.expand``...);
* ``engine.generate`` / ``engine.stream`` / ``engine.continuation_logprobs``: each engine call, with its prompt,
  completion and cached token counts and who made it (``decoder`` or ``reward:<name>``);
* ``reward.score``: each reward call, with the reward's name and the number of texts it scored.

Engine and scorer calls that leave the process (a remote vLLM server, a remote reward, a remote PRM) carry the
trace on in a ``traceparent`` header (:func:`inject`). Spans carry names, counts and times; never prompt text,
answers or configuration values, so no secret can reach a trace.

>>> enabled()
False
>>> with span("engine.generate", prompts=2) as s:
...     s is None
True
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .secrets import shown_url

log = logging.getLogger(__name__)

_tracer: Any = None
_provider: Any = None


def configure(endpoint: str | None, *, protocol: str = "http/protobuf", exporter: Any = None) -> None:
    """Start exporting spans: over OTLP to ``endpoint`` (``http/protobuf`` or ``grpc``), or to ``exporter`` (the
    SDK's in-memory exporter in tests). With neither, tracing stays off. Needs the OpenTelemetry SDK and its OTLP
    exporter (``pip install 'alignd[tracing]'``); without them a configured endpoint fails here, at start."""
    global _tracer, _provider
    if endpoint is None and exporter is None:
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            f"otlp_traces_endpoint is set but the OpenTelemetry SDK is missing ({exc}); pip install 'alignd[tracing]'"
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": "alignd", "service.version": _version()}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(str(endpoint), protocol)))
    shutdown()
    _provider, _tracer = provider, provider.get_tracer("alignd")
    log.info("tracing: spans go to %s over OTLP %s", shown_url(endpoint or type(exporter).__name__), protocol)


def _otlp_exporter(endpoint: str, protocol: str) -> Any:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint)


def _version() -> str:
    from . import __version__

    return __version__


def shutdown() -> None:
    """Flush the spans still buffered and stop tracing (the server calls it when it stops)."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    """Whether spans are being recorded."""
    return _tracer is not None


@contextmanager
def span(
    name: str, *, parent: Any = None, attach: bool = True, kind: str = "internal", **attributes: Any
) -> Iterator[Any]:
    """A span around the block; yields it (to add attributes with :func:`set_attributes`), or ``None`` when tracing
    is off.

    Its parent is ``parent`` (a span, or a context from :func:`extract`), else the current span. With ``attach``
    it is the current span inside the block, so the spans and outgoing calls of the block hang under it; a block
    that spans a ``yield`` of an async generator must not attach (the generator may resume in another task, whose
    context the span could not be detached from): pass ``attach=False`` and hand the span on as ``parent``."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    context = trace.set_span_in_context(parent) if isinstance(parent, trace.Span) else parent
    span_kind = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT}.get(kind, SpanKind.INTERNAL)
    if attach:
        with _tracer.start_as_current_span(name, context=context, kind=span_kind) as current:
            set_attributes(current, **attributes)
            yield current
        return
    current = _tracer.start_span(name, context=context, kind=span_kind)
    try:
        set_attributes(current, **attributes)
        yield current
    except Exception as exc:
        current.record_exception(exc)
        raise
    finally:
        current.end()


@contextmanager
def current(parent: Any) -> Iterator[None]:
    """Make ``parent`` (a span from :func:`span`, or ``None``: no change) the current span inside the block, which
    must not span a ``yield``."""
    if _tracer is None or parent is None:
        yield
        return
    from opentelemetry import context, trace

    token = context.attach(trace.set_span_in_context(parent))
    try:
        yield
    finally:
        context.detach(token)


def set_attributes(current: Any, **attributes: Any) -> None:
    """Add ``attributes`` (``None`` values left out) to ``current``, a span from :func:`span` or ``None``."""
    if current is None:
        return
    for key, value in attributes.items():
        if value is not None:
            current.set_attribute(f"alignd.{key}" if "." not in key else key, value)


def inject(headers: dict[str, str] | None = None) -> dict[str, str]:
    """``headers`` with the current trace's ``traceparent`` (and ``tracestate``) added, for a call that leaves the
    process; unchanged when tracing is off."""
    headers = dict(headers or {})
    if _tracer is not None:
        from opentelemetry.propagate import inject as otel_inject

        otel_inject(headers)
    return headers


def extract(headers: Mapping[str, str]) -> Any:
    """The trace context a client sent (``traceparent``), to parent the request's span; ``None`` without one or
    when tracing is off."""
    if _tracer is None or "traceparent" not in headers:
        return None
    from opentelemetry.propagate import extract as otel_extract

    return otel_extract(dict(headers))
