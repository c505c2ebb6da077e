"""A one-item mailbox between the subscription callback and the inference worker (latest-frame policy).

A frame arriving while the model is busy replaces the pending one, so the queue never grows and the
worker always starts on the newest frame. No ROS dependency.
"""
from __future__ import annotations

import threading
from typing import Generic, TypeVar

Item = TypeVar('Item')


class LatestFrameSlot(Generic[Item]):
    """Holds at most one pending item; `put` replaces, `take` waits for one."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: Item | None = None

    def put(self, item: Item) -> Item | None:
        """Store `item`; returns the pending item it replaced (dropped unprocessed), or None."""
        with self._condition:
            replaced, self._item = self._item, item
            self._condition.notify()
            return replaced

    def take(self, timeout: float) -> Item | None:
        """Remove and return the pending item, waiting up to `timeout` seconds; None if none came."""
        with self._condition:
            if self._item is None:
                self._condition.wait(timeout)
            item, self._item = self._item, None
            return item

    def clear(self) -> Item | None:
        """Drop the pending item (returned), e.g. on deactivate."""
        with self._condition:
            item, self._item = self._item, None
            return item
