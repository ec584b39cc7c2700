"""A traced bus process for ``test_bus_workspace.py`` (run as a script, not collected).

Like a service under ``microhive serve``, it installs a tracer provider writing
to the trace store, then plays one role given as a JSON argument:

``publish``  under a root server span per message, publish ``messages``
             (``[{"subject", "hops"?}]``) to ``bus``; prints their trace ids.
``consume``  subscribe queue group ``group`` to ``pattern`` from the beginning;
             the handler opens an ``execute_tool handle`` span and fails the first
             delivery of a subject listed in ``flaky``. Exits (flushing its
             spans) once ``handled`` messages were handled and ``dead`` were
             dead-lettered; prints the subjects and delivery attempts it saw.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from microhive.bus import Delivery, open_bus
from microhive.context import CallContext
from microhive.tracing import TracingSettings, server_span, setup_tracing, tool_span


async def publish(job: dict[str, Any]) -> dict[str, Any]:
    traces: list[str] = []
    async with open_bus(job["bus"]) as bus:
        for message in job["messages"]:
            ctx = CallContext.from_headers({"microhive-hops": str(message.get("hops", 16))})
            with ctx.activate(), server_span("POST", "/publish", ctx=ctx) as root:
                await bus.publish(message["subject"], {"n": 1})
                traces.append(root.trace_id)
    return {"traces": traces}


async def consume(job: dict[str, Any]) -> dict[str, Any]:
    seen: list[list[Any]] = []
    handled = 0
    done = asyncio.Event()
    flaky = set(job.get("flaky", ()))

    async with open_bus(job["bus"]) as bus:

        def check() -> None:
            dead = sum(s.dead_lettered for s in bus.subscriptions)
            if handled >= job["handled"] and dead >= job.get("dead", 0):
                done.set()

        async def handle(msg: Delivery) -> None:
            nonlocal handled
            seen.append([msg.subject, msg.deliveries, msg.context.traceparent])
            with tool_span("handle", msg.msg_id):
                if msg.subject in flaky and msg.deliveries == 1:
                    raise RuntimeError("the first attempt fails")
            handled += 1
            check()

        sub = await bus.subscribe(
            job["pattern"],
            handle,
            queue=job["group"],
            start="beginning",
            backoff=(0.05,),
            max_deliveries=3,
        )
        while not done.is_set():  # dead letters are counted after the handler returns
            check()
            try:
                await asyncio.wait_for(done.wait(), 0.05)
            except TimeoutError:
                continue
        await sub.aclose()
    return {"seen": seen}


def main() -> None:
    job = json.loads(sys.argv[1])
    settings = TracingSettings(store_url=job["store"])
    with setup_tracing(job["service"], 0, settings) as handle:
        handle.install()
        role = publish if job["role"] == "publish" else consume
        result = asyncio.run(asyncio.wait_for(role(job), 60))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
