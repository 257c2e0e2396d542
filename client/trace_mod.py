"""A Flower client mod that timestamps each message's stay in the ClientApp (fedq/trace.py)."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fedq import trace


def trace_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Mark when the app process started, when the message arrived and when it left."""
    if not trace.enabled():
        return call_next(msg, context)
    fields = {"node": context.node_id, "group": msg.metadata.group_id}
    trace.mark("clientapp-process", at=trace.process_start_time(), **fields)
    trace.mark("clientapp-enter", type=msg.metadata.message_type, **fields)
    reply = call_next(msg, context)
    trace.mark("clientapp-exit", **fields)
    return reply
