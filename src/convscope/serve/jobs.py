"""Long work (mining an atlas, rendering channels) in a background thread, with progress.

A :class:`Job` runs a function ``work(job)`` that reports ``job.advance(done, total, stage)``;
the page polls ``/api/jobs`` and draws each job's bar. Jobs live in the server, not in the page,
so a reload finds them where they are. One job runs at a time (they share the model); the others
wait in order. A failure is kept as the job's ``error`` (one line), never raised into the server.

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

    def advance(self, done: int, total: int, stage: str | None = None) -> None:
        """Report progress: ``done`` of ``total`` steps of the current ``stage``."""
        with self.lock:
            self.done, self.total = int(done), int(total)
            if stage is not None:
                self.stage = stage

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            elapsed = ((self.finished or time.monotonic()) - self.started) if self.started else 0.0
            return {"id": self.id, "kind": self.kind, "title": self.title, "state": self.state, "stage": self.stage,
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

    def active(self, kind: str) -> Job | None:
        """A queued or running job of ``kind`` (None if there is none)."""
        return next((j for j in self._jobs.values() if j.kind == kind and j.state in ("queued", "running")), None)

    def wait(self, job_id: int, timeout: float = 60.0) -> Job:
        """Block until the job has finished (for scripts and tests)."""
        end = time.monotonic() + timeout
        job = self.get(job_id)
        while job.state in ("queued", "running") and time.monotonic() < end:
            time.sleep(0.02)
        return job

    def stop(self) -> None:
        """Let the worker thread end after the current job."""
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with job.lock:
                job.state, job.stage, job.started = "running", "starting", time.monotonic()
            try:
                result = job.work(job)
            except ConvscopeError as exc:
                outcome = ("failed", str(exc), None)
            except Exception as exc:  # noqa: BLE001 - a job's failure is reported in the page, not raised
                outcome = ("failed", f"{type(exc).__name__}: {exc}", None)
            else:
                outcome = ("done", None, result)
            with job.lock:
                job.state, job.error, job.result = outcome
                job.stage = "done" if job.state == "done" else "failed"
                job.finished = time.monotonic()
