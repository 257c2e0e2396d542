"""Wake-ups for live views: the ingest threads tell the event streams that a run changed.

A notification carries no data; a stream that wakes reads what is new from the store, so a
missed or merged wake-up loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field


@dataclass(eq=False)
class Subscription:
    """One event stream's mailbox: set when its run changed, or when the hub closes."""

    run_id: str
    loop: asyncio.AbstractEventLoop
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    async def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a change; True if one came (or the hub closed)."""
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except TimeoutError:
            return False
        self.changed.clear()
        return True


class EventHub:
    """Fan-out of "run X changed" from any thread to the asyncio streams watching X."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    def subscribe(self, run_id: str) -> Subscription:
        """A subscription for the calling coroutine's event loop (call from inside the loop)."""
        subscription = Subscription(run_id, asyncio.get_running_loop())
        with self._lock:
            subscription.closed = self._closed
            self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget a subscription (its stream ended)."""
        with self._lock:
            self._subscriptions.discard(subscription)

    def publish(self, run_id: str) -> None:
        """Tell every stream watching `run_id` that it changed; safe from any thread."""
        with self._lock:
            targets = [s for s in self._subscriptions if s.run_id == run_id]
        for subscription in targets:
            _wake(subscription)

    def close(self) -> None:
        """End every stream (the service is stopping); later subscriptions end at once."""
        with self._lock:
            self._closed = True
            targets = list(self._subscriptions)
        for subscription in targets:
            subscription.closed = True
            _wake(subscription)

    @property
    def subscribers(self) -> int:
        """Streams open right now."""
        with self._lock:
            return len(self._subscriptions)


def _wake(subscription: Subscription) -> None:
    # The loop may already be gone (its server stopped); then nobody is listening anyway.
    with contextlib.suppress(RuntimeError):
        subscription.loop.call_soon_threadsafe(subscription.changed.set)
