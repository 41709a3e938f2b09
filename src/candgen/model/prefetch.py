"""Prefetching of training batches ahead of the step that consumes them: in a thread, or in a forked process.

`Prefetch` runs the batch source in a background thread. It is simple and portable, but the source is numpy
code driven by Python, so it holds the GIL for most of its time, and so does the training thread between torch
kernels: the two threads take turns rather than run side by side. Measured on ml-latest-small (2 cores,
benchmarks/README.md, "training"): the training thread alone 3.7 ms per step of 256, assembling a batch 1.6 ms,
both in two threads 5.2 ms per step, no better than one after the other.

`ProcessPrefetch` runs the source in a child process forked from this one (so it starts with the data already
in memory, and its random draws continue the parent's generator exactly: the batches are the ones the thread
would have made). Each batch crosses back as a small pickle whose numpy arrays travel out of band (pickle
protocol 5) through a shared memory ring of `depth + 1` slots: the child copies the arrays into a free slot,
the parent rebuilds them as views of that slot without a copy, and hands the slot back when it asks for the
next batch. A batch too large for a slot crosses the pipe whole instead (correct, only slower). Pickle is only
this private channel between the trainer and the child it forked itself (the same code on both ends; nothing
is read from a file or a socket): no artifact is ever written or loaded with it.

The child must not call torch (OpenMP is not safe after a fork): sources handed to `ProcessPrefetch` are
numpy only. `prefetch` picks the process where the platform forks and falls back to the thread elsewhere.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing as mp
import pickle
import queue
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Generic, TypeVar

T = TypeVar("T")
ALIGN = 64  # bytes: every array in a slot starts on a cache line


class PrefetchError(RuntimeError):
    """The batch process failed or died; the message carries its traceback or exit code."""


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


class Prefetch(Generic[T]):
    """Iterates `source` in a background thread, up to `depth` items ahead of the consumer.

    Items arrive in order; an exception raised by `source` is raised by `next`. Use as a context manager (or
    call `close`): leaving early stops the thread at its next item.
    """

    def __init__(self, source: Iterator[T], depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._run, args=(source,), name="candgen-batches", daemon=True)
        self._thread.start()

    def _run(self, source: Iterator[T]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._put(_Failure(e))
            return
        self._put(_END)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetch[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _END or isinstance(item, _Failure):
            self._finished = True
            self._thread.join()
            if isinstance(item, _Failure):
                raise item.error
            raise StopIteration
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._finished = True

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _child(source: Iterator[Any], data: Connection, free: Connection, buf: memoryview, slot_bytes: int,
           parent_ends: tuple[Connection, Connection]) -> None:
    """The batch process: make each item, copy its arrays into a free slot, send the rest down `data`."""
    for end in parent_ends:  # so that the parent's death reads as end-of-file here
        end.close()
    try:
        for item in source:
            buffers: list[pickle.PickleBuffer] = []
            meta = pickle.dumps(item, protocol=5, buffer_callback=buffers.append)
            raws = [b.raw() for b in buffers]
            if sum(_aligned(r.nbytes) for r in raws) > slot_bytes:
                data.send(("inline", meta, [bytes(r) for r in raws]))
                continue
            slot = free.recv()
            if slot is None:  # the consumer closed
                return
            spans, at = [], slot * slot_bytes
            for r in raws:
                buf[at:at + r.nbytes] = r
                spans.append((at, r.nbytes))
                at += _aligned(r.nbytes)
            data.send(("slot", meta, slot, spans))
        data.send(("end",))
    except (BrokenPipeError, EOFError):  # the consumer went away
        return
    except BaseException:  # noqa: BLE001 - handed to the consumer, which raises it with this traceback
        with contextlib.suppress(BrokenPipeError, OSError):
            data.send(("error", traceback.format_exc()))


class ProcessPrefetch(Generic[T]):
    """Iterates `source` in a forked child process, up to `depth` items ahead of the consumer.

    Items arrive in order. Their numpy arrays are views of a shared-memory slot that stays the consumer's until
    its next call to `next` (or `close`): copy anything needed for longer. An exception in `source` is raised by
    `next` as `PrefetchError` with the child's traceback; so is the child's death. Use as a context manager (or
    call `close`): leaving early stops the child. Linux and other platforms that fork only; one consumer thread.
    """

    def __init__(self, source: Iterator[T], *, slot_bytes: int, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if slot_bytes < ALIGN:
            raise ValueError(f"slot_bytes must be >= {ALIGN}, got {slot_bytes}")
        ctx = mp.get_context("fork")
        self._slot_bytes, self._held, self._finished = _aligned(slot_bytes), None, False
        n_slots = depth + 1  # `depth` filled ahead, one held by the consumer
        # anonymous and shared: the forked child writes the very pages this process reads; no name to clean up,
        # and the pages go when the last array viewing them does
        self._ring = mmap.mmap(-1, n_slots * self._slot_bytes, flags=mmap.MAP_SHARED)
        self._buf = memoryview(self._ring)
        data_r, data_w = ctx.Pipe(duplex=False)
        free_r, free_w = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child, name="candgen-batches", daemon=True,
                                 args=(source, data_w, free_r, self._buf, self._slot_bytes, (data_r, free_w)))
        self._proc.start()
        data_w.close()  # this process's copies of the child's ends: a dead child reads as end-of-file
        free_r.close()
        self._data, self._free = data_r, free_w
        self.inline = 0  # items that did not fit a slot and crossed the pipe whole
        for slot in range(n_slots):
            self._free.send(slot)

    def __iter__(self) -> ProcessPrefetch[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        self._give_back()
        try:
            msg = self._data.recv()
        except (EOFError, OSError):
            self.close()
            raise PrefetchError(f"the batch process died (exit code {self._proc.exitcode})") from None
        kind = msg[0]
        if kind == "slot":
            _, meta, slot, spans = msg
            item = pickle.loads(meta, buffers=[self._buf[at:at + n] for at, n in spans])
            self._held = slot
            return item  # type: ignore[no-any-return]
        if kind == "inline":
            self.inline += 1
            return pickle.loads(msg[1], buffers=msg[2])  # type: ignore[no-any-return]
        self.close()
        if kind == "error":
            raise PrefetchError(f"the batch process failed:\n{msg[1]}")
        raise StopIteration

    def _give_back(self) -> None:
        if self._held is not None:
            slot, self._held = self._held, None
            with contextlib.suppress(BrokenPipeError, OSError):  # the child is gone; the next recv says how
                self._free.send(slot)

    def close(self) -> None:
        if self._finished:
            return
        self._finished = True
        with contextlib.suppress(BrokenPipeError, OSError):
            self._free.send(None)  # wakes a child waiting for a slot
        self._data.close()  # a child blocked sending gets a broken pipe
        self._free.close()
        self._proc.join(timeout=2.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()

    def __enter__(self) -> ProcessPrefetch[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def can_fork() -> bool:
    """Linux only: macOS can fork, but its system frameworks are not safe in a forked child."""
    return sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()


def prefetch(source: Callable[[], Iterator[T]], *, slot_bytes: int, depth: int = 2,
             processes: bool = True) -> Prefetch[T] | ProcessPrefetch[T]:
    """`source()` prefetched in a forked process where the platform forks (and `processes`), else in a thread."""
    if processes and can_fork():
        return ProcessPrefetch(source(), slot_bytes=slot_bytes, depth=depth)
    return Prefetch(source(), depth=depth)


__all__ = ["Prefetch", "PrefetchError", "ProcessPrefetch", "can_fork", "prefetch"]
