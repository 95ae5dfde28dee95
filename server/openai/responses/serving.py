"""Answering ``POST /v1/responses``: the ``response`` object, whole or as the Responses event stream.

A stream is the sequence OpenAI's SDKs assemble (``client.responses.stream``): ``response.created`` and
``response.in_progress``; for a text answer ``response.output_item.added``, ``response.content_part.added``, one
``response.output_text.delta`` per piece, ``response.output_text.done``, ``response.content_part.done``,
``response.output_item.done``; for each function call ``response.output_item.added``,
``response.function_call_arguments.delta`` and ``.done``, ``response.output_item.done``; then
``response.completed`` (or ``response.incomplete``) with the whole response, ``alignment`` included. A failure
midway is ``response.failed`` and an ``error`` event. Every event carries its ``sequence_number``.

Text is streamed as the decoder decides it; with function tools the answer is read whole first (a call's
arguments are only known valid once complete), so its content and calls come in one piece each.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from ....decoders import DecodeResult
from ....engines.protocol import StreamDelta
from ....structured import Parsed
from ...errors import error_body, to_align_error
from ...generation.formatting import alignment, parsed, usage_dict
from ...generation.serving import Prepared, PromptEcho
from .protocol import Response, ResponsesRequest


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def output_items(answer: Parsed, incomplete: bool, message_id: str | None = None) -> list[dict[str, Any]]:
    """An answer as Responses output items: a message with its text (if it has any), then its function calls."""
    items: list[dict[str, Any]] = []
    if answer.content or not answer.tool_calls:
        items.append(
            {
                "type": "message",
                "id": message_id or _id("msg"),
                "status": "incomplete" if incomplete else "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": answer.content or "", "annotations": [], "logprobs": []}],
            }
        )
    for call in answer.tool_calls:
        items.append(
            {
                "type": "function_call",
                "id": _id("fc"),
                "call_id": call.id,
                "name": call.name,
                "arguments": call.arguments,
                "status": "completed",
            }
        )
    return items


def _usage(results: Sequence[DecodeResult]) -> dict[str, Any]:
    u = usage_dict(results)
    return {
        "input_tokens": u["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": u["prompt_tokens_details"]["cached_tokens"]},
        "output_tokens": u["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u["total_tokens"],
    }


def _skeleton(prepared: Prepared, body: ResponsesRequest, status: str) -> dict[str, Any]:
    """The response's fields that echo the request, with ``status`` and no output yet."""
    return {
        "id": prepared.request_id,
        "object": "response",
        "created_at": prepared.created,
        "status": status,
        "model": prepared.model,
        "output": [],
        "usage": None,
        "incomplete_details": None,
        "error": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "tools": [t.model_dump(exclude_none=True) for t in body.tools or []],
        "tool_choice": body.tool_choice.model_dump()
        if hasattr(body.tool_choice, "model_dump")
        else body.tool_choice or "auto",
        "parallel_tool_calls": body.parallel_tool_calls,
        "text": body.text.model_dump(by_alias=True, exclude_none=True) if body.text else {"format": {"type": "text"}},
        "metadata": body.metadata,
        "previous_response_id": None,
        "store": False,
        "truncation": body.truncation or "disabled",
        "reasoning": None,
    }


def _finished(
    prepared: Prepared,
    body: ResponsesRequest,
    results: Sequence[DecodeResult],
    with_candidates: bool,
    output: list[dict[str, Any]],
) -> dict[str, Any]:
    [choice] = results[0].choices
    incomplete = choice.finish_reason in ("length", "budget")
    out = _skeleton(prepared, body, "incomplete" if incomplete else "completed")
    out["output"] = output
    out["usage"] = _usage(results)
    if incomplete:
        out["incomplete_details"] = {"reason": "max_output_tokens"}
    out["alignment"] = alignment(prepared, results, with_candidates).model_dump(mode="json")
    return out


def response_of(prepared: Prepared, body: ResponsesRequest, results: Sequence[DecodeResult]) -> Response:
    """The ``response`` object of a request's one answer."""
    [choice] = results[0].choices
    items = output_items(parsed(prepared, choice), choice.finish_reason in ("length", "budget"))
    return Response.model_validate(_finished(prepared, body, results, body.return_candidates, items))


class ResponseEvents:
    """The Responses event stream of one request (see the module's documentation)."""

    def __init__(self, prepared: Prepared, body: ResponsesRequest):
        self.prepared, self.body = prepared, body
        self.sequence = 0
        fmt = prepared.plan.answer_format
        self.tools = fmt if fmt is not None and fmt.calls_tools else None
        self.message_id = _id("msg")
        self.text = ""
        self.opened = False

    def event(self, type: str, **fields: Any) -> str:
        payload = {"type": type, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {type}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"

    def start(self) -> list[str]:
        response = _skeleton(self.prepared, self.body, "in_progress")
        return [
            self.event("response.created", response=response),
            self.event("response.in_progress", response=response),
        ]

    def _open_message(self, index: int) -> list[str]:
        self.opened = True
        item = {"type": "message", "id": self.message_id, "status": "in_progress", "role": "assistant", "content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self.event("response.output_item.added", output_index=index, item=item),
            self.event(
                "response.content_part.added", item_id=self.message_id, output_index=index, content_index=0, part=part
            ),
        ]

    def _text_delta(self, text: str) -> list[str]:
        out = [] if self.opened else self._open_message(0)
        self.text += text
        return out + [
            self.event(
                "response.output_text.delta",
                item_id=self.message_id,
                output_index=0,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        ]

    def echo(self, prompt_index: int, e: PromptEcho) -> list[str]:
        return []

    def delta(self, prompt_index: int, d: StreamDelta) -> list[str]:
        out = self.start() if self.sequence == 0 else []
        if self.tools is not None:
            self.text += d.text  # read whole once finished (in final)
            return out
        if d.text:
            out += self._text_delta(d.text)
        return out

    def final(self, results: list[DecodeResult]) -> list[str]:
        out = self.start() if self.sequence == 0 else []
        [choice] = results[0].choices
        incomplete = choice.finish_reason in ("length", "budget")
        answer = parsed(self.prepared, choice) if self.tools is not None else Parsed(self.text)
        items = output_items(answer, incomplete, self.message_id)
        for index, item in enumerate(items):
            if item["type"] == "message":
                text = item["content"][0]["text"]
                if not self.opened:
                    out += self._open_message(index)
                    if text:
                        out += self._text_delta(text)
                ids = {"item_id": self.message_id, "output_index": index, "content_index": 0}
                out.append(self.event("response.output_text.done", **ids, text=text, logprobs=[]))
                out.append(self.event("response.content_part.done", **ids, part=item["content"][0]))
            else:
                out.append(self.event("response.output_item.added", output_index=index, item={**item, "arguments": ""}))
                ids = {"item_id": item["id"], "output_index": index}
                out.append(self.event("response.function_call_arguments.delta", **ids, delta=item["arguments"]))
                out.append(
                    self.event(
                        "response.function_call_arguments.done", **ids, name=item["name"], arguments=item["arguments"]
                    )
                )
            out.append(self.event("response.output_item.done", output_index=index, item=item))
        response = _finished(self.prepared, self.body, results, self.body.return_candidates, items)
        out.append(self.event("response.incomplete" if incomplete else "response.completed", response=response))
        return out

    def error(self, exc: BaseException) -> list[str]:
        """A failure midway: ``response.failed`` with the error, then the ``error`` event."""
        err = to_align_error(exc)
        body = error_body(err.message, err.type, err.param, err.code)["error"]
        failed = {**_skeleton(self.prepared, self.body, "failed"), "error": {"code": err.type, "message": err.message}}
        return [
            self.event("response.failed", response=failed),
            self.event("error", code=err.code or err.type, message=err.message, param=err.param, error=body),
        ]
