"""A second real process for the tracing tests (run as a script, not collected).

Reads one JSON argument: ``store`` (trace store URL), ``headers`` (the call
context carrier from the parent), ``service``, ``mode`` (``chain``: a server
span with tool, chat and publish spans under it; ``bulk``: ``count`` flat spans)
and ``otlp`` (an endpoint or null). Prints JSON: the headers the published
message carries, and the span ids it made.
"""

from __future__ import annotations

import json
import sys

from microhive.context import CallContext
from microhive.tracing import (
    TracingSettings,
    chat_span,
    publish_span,
    server_span,
    setup_tracing,
    tool_span,
)


def main() -> None:
    job = json.loads(sys.argv[1])
    settings = TracingSettings(store_url=job["store"], capture_content=job.get("capture", False))
    handle = setup_tracing(job["service"], job.get("replica", 0), settings)
    handle.install()
    result: dict[str, object] = {"span_ids": []}
    ids: list[str] = []
    with handle:
        if job["mode"] == "bulk":
            for i in range(job["count"]):
                with tool_span(f"bulk-{i}", f"call-{i}") as span:
                    ids.append(format(span.span.get_span_context().span_id, "016x"))
        else:
            ctx = CallContext.from_headers(job["headers"])
            ctx.check()
            with server_span("POST", "/mcp", ctx=ctx) as server:
                ids.append(format(server.span.get_span_context().span_id, "016x"))
                with (
                    tool_span("workspace.write", "call-1", arguments={"text": "TOP-SECRET"}),
                    chat_span("offline", "offline", input_messages=["TOP-SECRET"]) as chat,
                ):
                    chat.usage(input_tokens=12, output_tokens=34)
                onward = ctx.next_hop()
                headers = onward.to_headers()
                with publish_span("embedded", "file.created", headers=headers, ctx=onward) as pub:
                    ids.append(format(pub.span.get_span_context().span_id, "016x"))
                result["published_headers"] = headers
    result["span_ids"] = ids
    print(json.dumps(result))


if __name__ == "__main__":
    main()
