"""Requests that arrive together, predicted together: a bounded queue and one worker thread.

The worker takes the first waiting request, then waits at most `max_wait` seconds for up to `max_batch - 1` more, and
predicts them in one call (a batch through the network costs little more than one image on a CPU, and much less on a
GPU). The queue is bounded: when it is full, `submit` raises `Busy` at once and the server answers 503 with
Retry-After; a request it accepts is always answered. A batch that fails is predicted again one request at a time,
so one bad input fails alone.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class Busy(Exception):
    """The queue is full: the client should retry later."""


class Batcher:
    def __init__(self, predict: Callable[[list[Any]], list[Any]], *, max_batch: int = 16, max_wait: float = 0.005,
                 max_queue: int = 64) -> None:
        self.predict, self.max_batch, self.max_wait = predict, max(1, max_batch), max_wait
        self.queue: queue.Queue[tuple[Any, Future]] = queue.Queue(maxsize=max_queue)
        self.batches = 0  # batches predicted, and requests in them: the mean batch size is served / batches
        self.served = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deepfit-batcher", daemon=True)
        self._thread.start()

    async def submit(self, item: Any) -> Any:
        future: Future = Future()
        try:
            self.queue.put_nowait((item, future))
        except queue.Full:
            raise Busy from None
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            waiting = [first]
            deadline = time.monotonic() + self.max_wait
            while len(waiting) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    waiting.append(self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait())
                except queue.Empty:
                    break
            self._answer(waiting)

    def _answer(self, waiting: list[tuple[Any, Future]]) -> None:
        self.batches += 1
        self.served += len(waiting)
        try:
            results = self.predict([item for item, _ in waiting])
        except Exception as e:  # noqa: BLE001 - one bad input must not fail the others: each alone, its own error
            if len(waiting) == 1:
                waiting[0][1].set_exception(e)
            else:
                for one in waiting:
                    self._answer_one(one)
            return
        for (_, future), result in zip(waiting, results, strict=True):
            future.set_result(result)

    def _answer_one(self, one: tuple[Any, Future]) -> None:
        item, future = one
        try:
            future.set_result(self.predict([item])[0])
        except Exception as e:  # noqa: BLE001 - the request's own error, answered to it
            future.set_exception(e)
