"""Dynamic batching with a bounded queue: requests wait at most `max_wait_ms` for others to share a forward pass,
a batch holds at most `max_batch` of them, and a full queue refuses new work at once (the server answers 503 with
`Retry-After`) instead of letting memory grow.

One worker task per model drains its queue; the forward passes run on one shared inference thread, so the event
loop keeps answering (health checks, uploads, refusals) while a batch computes, and models never compete for the
cores.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any


class QueueFullError(RuntimeError):
    """The queue holds `max_queue` requests already."""


@dataclass
class BatchStats:
    """Counters for /healthz and the tests: requests answered, model calls (batches) made, largest batch."""

    requests: int = 0
    batches: int = 0
    largest_batch: int = 0
    refused: int = 0
    failed: int = 0
    busy_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Job:
    key: Hashable
    payload: Any
    future: asyncio.Future = field(repr=False)


class BatchQueue:
    """Collects submitted payloads into batches of equal `key` and runs `run_batch(key, payloads) -> results` on
    `executor`.

    Args:
        run_batch: computes one result per payload, in order (called on the executor's thread).
        executor: where `run_batch` runs (one thread: forward passes never overlap).
        max_batch: payloads per call at most.
        max_wait_ms: how long the first request of a batch waits for others.
        max_queue: requests waiting at most; `submit` raises `QueueFullError` beyond.
    """

    def __init__(self, run_batch: Callable[[Hashable, list[Any]], list[Any]], executor: Executor,
                 max_batch: int = 8, max_wait_ms: float = 10.0, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch and max_queue must be >= 1 and max_wait_ms >= 0, got {max_batch}, "
                             f"{max_queue}, {max_wait_ms}")
        self.run_batch, self.executor = run_batch, executor
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000.0, max_queue
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._deferred: list[_Job] = []  # taken from the queue for a batch of another key
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        """Starts the worker on the running event loop (the app's startup)."""
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._worker = asyncio.get_running_loop().create_task(self._drain())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None

    @property
    def waiting(self) -> int:
        return (self._queue.qsize() if self._queue is not None else 0) + len(self._deferred)

    async def submit(self, key: Hashable, payload: Any, timeout: float | None = None) -> Any:
        """The result for `payload`; `QueueFullError` at once when the queue is full, `TimeoutError` after
        `timeout` seconds (the computation is then discarded)."""
        if self._queue is None:
            raise RuntimeError("BatchQueue.start() was not called")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Job(key, payload, future))
        except asyncio.QueueFull:
            self.stats.refused += 1
            raise QueueFullError(f"{self.max_queue} requests are waiting already") from None
        return await asyncio.wait_for(future, timeout)

    async def _next_batch(self) -> list[_Job]:
        """The oldest request and those of its key that arrive within `max_wait`; requests of other keys met on the
        way wait, in order, for the next batches."""
        assert self._queue is not None
        first = self._deferred.pop(0) if self._deferred else await self._queue.get()
        batch = [first] + [job for job in self._deferred if job.key == first.key][: self.max_batch - 1]
        self._deferred = [job for job in self._deferred if job not in batch]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self._queue.get(),
                                                                                               remaining)
            except (asyncio.QueueEmpty, TimeoutError):
                break
            (batch if job.key == first.key else self._deferred).append(job)
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            batch = [job for job in batch if not job.future.done()]  # timed out or cancelled while waiting
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, batch[0].key,
                                                     [job.payload for job in batch])
            except Exception as exc:  # one bad batch must not kill the worker: each request gets the error
                self.stats.failed += len(batch)
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self.stats.busy_seconds += time.perf_counter() - start
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
