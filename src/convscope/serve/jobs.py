"""Long work (mining an atlas, rendering channels) in a background thread, with progress.

A :class:`Job` runs a function ``work(job)`` that reports ``job.advance(done, total, stage)``;
the page polls ``/api/jobs`` and draws each job's bar. Jobs live in the server, not in the page,
so a reload finds them where they are. One job runs at a time (they share the model); the others
wait in order. A failure is kept as the job's ``error`` (one line), never raised into the server.
:meth:`Jobs.stop` (the server's shutdown) cancels: a running job ends at its next ``advance``
(an atlas keeps its mining checkpoint), queued ones never start, and the worker thread is joined.

Example::

    jobs = Jobs()
    job = jobs.submit("atlas", "features.3 over shapes:256", lambda job: job.advance(1, 1, "done"))
    jobs.get(job.id).as_dict()["state"]     # "queued" | "running" | "done" | "failed"
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from convscope.errors import ConvscopeError
from convscope.serve.answers import Missing


class Cancelled(Exception):
    """Raised inside a job's work by :meth:`Job.advance` once the server is stopping."""


@dataclass
class Job:
    """One piece of background work and how far it has got."""

    id: int
    kind: str
    title: str
    work: Callable[[Job], Any]
    state: str = "queued"
    stage: str = "waiting"
    done: int = 0
    total: int = 0
    error: str | None = None
    result: Any = None
    started: float | None = None
    finished: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def advance(self, done: int, total: int, stage: str | None = None) -> None:
        """Report progress: ``done`` of ``total`` steps of the current ``stage`` (raises
        :class:`Cancelled` once the job is cancelled)."""
        if self.cancelled.is_set():
            raise Cancelled
        with self.lock:
            self.done, self.total = int(done), int(total)
            if stage is not None:
                self.stage = stage

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            now = time.monotonic()
            elapsed = ((self.finished or now) - self.started) if self.started else 0.0
            return {"finished_ago": round(now - self.finished, 2) if self.finished else None,"id": self.id, "kind": self.kind, "title": self.title, "state": self.state, "stage": self.stage,
                    "done": self.done, "total": self.total, "error": self.error, "elapsed": round(elapsed, 2),
                    "fraction": self.done / self.total if self.total else (1.0 if self.state == "done" else 0.0)}


class Jobs:
    """The server's jobs, run one after another by one daemon thread."""

    def __init__(self) -> None:
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    def submit(self, kind: str, title: str, work: Callable[[Job], Any]) -> Job:
        """Queue ``work``; returns its :class:`Job` at once."""
        job = Job(next(self._ids), kind, title, work)
        with self._guard:
            self._jobs[job.id] = job
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="convscope-jobs", daemon=True)
                self._thread.start()
        self._queue.put(job)
        return job

    def get(self, job_id: int) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise Missing(f"there is no job {job_id}", "GET /api/jobs lists them.") from None

    def all(self) -> list[Job]:
        return list(self._jobs.values())

    def wait(self, job_id: int, timeout: float = 60.0) -> Job:
        """Block until the job has finished (for scripts and tests)."""
        end = time.monotonic() + timeout
        job = self.get(job_id)
        while job.state in ("queued", "running") and time.monotonic() < end:
            time.sleep(0.02)
        return job

    def stop(self, timeout: float = 60.0) -> None:
        """Cancel every job and wait (up to ``timeout`` seconds) for the worker thread to end."""
        for job in self._jobs.values():
            job.cancelled.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.cancelled.is_set():
                with job.lock:
                    job.state = job.stage = "cancelled"
                continue
            with job.lock:
                job.state, job.stage, job.started = "running", "starting", time.monotonic()
            try:
                result = job.work(job)
            except Cancelled:
                outcome = ("cancelled", None, None)
            except ConvscopeError as exc:
                outcome = ("failed", str(exc), None)
            except Exception as exc:  # noqa: BLE001 - a job's failure is reported in the page, not raised
                outcome = ("failed", f"{type(exc).__name__}: {exc}", None)
            else:
                outcome = ("done", None, result)
            with job.lock:
                job.state, job.error, job.result = outcome
                job.stage = job.state
                job.finished = time.monotonic()
