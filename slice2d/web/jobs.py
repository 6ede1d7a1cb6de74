"""Jobs of the web app: each upload gets a private folder and an unguessable id, waits in one
queue, and is predicted by one worker thread (a prediction uses every core, so two at once
would only both be slower), while the server goes on answering.

Everything lives in one workspace folder made for the server (mode 0700, in the system's
temporary folder unless told otherwise): ``<workspace>/<job id>/upload/`` (the file as sent),
``input/`` (an archive unpacked), ``out/`` (what ``slice2d predict`` writes; for a DICOM series
with the dicom-seg extra installed, ``predict --dicom-seg``) and ``take-home/`` (``results.take_home``). A finished job's folder is deleted ``keep_seconds`` after it finished,
and the whole workspace when the server stops.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import queue
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from slice2d.dicom import is_dicom_series
from slice2d.io import InputError, is_nifti
from slice2d.pipeline import Models, PredictOptions, segment
from slice2d.web.results import TakeHome, take_home
from slice2d.web.uploads import UploadError, unpack_zip

log = logging.getLogger(__name__)

UNPACKED_PER_UPLOAD = 4  # an archive may unpack to this many times the upload limit (DICOM compresses ~2-3x)
SWEEP_EVERY_S = 60.0


@dataclass(frozen=True)
class Settings:
    """How the app predicts and what it accepts.

    models, options: the models and options of ``slice2d predict`` (by default the shipped
    models, as ``slice2d predict`` runs without options). max_upload_bytes:
    the largest upload accepted; an archive may unpack to ``UNPACKED_PER_UPLOAD`` times that.
    keep_seconds: how long a finished job's files are kept. workspace_parent: where the private
    workspace folder is made (None: the system's temporary folder).
    """

    models: Models = Models()
    options: PredictOptions = PredictOptions()
    max_upload_bytes: int = 1024 * 2**20
    keep_seconds: float = 3600.0
    workspace_parent: Path | None = None


@dataclass
class Job:
    """One upload and what became of it. state: queued, unpacking, predicting, done or failed;
    status: the HTTP status of its answer (200, or the failure's 4xx/500)."""

    id: str
    folder: Path
    name: str
    created: float = field(default_factory=time.time)
    state: str = "queued"
    started: float | None = None
    finished: float | None = None
    status: int = 200
    error: str | None = None
    result: TakeHome | None = None

    @property
    def upload(self) -> Path:
        return self.folder / "upload" / self.name

    def summary(self, ahead: int = 0) -> dict:
        """What the API answers about the job: its state and, once done, the report and links."""
        now = self.finished or time.time()
        out = {"job": self.id, "name": self.name, "state": self.state,
               "elapsed_s": round(now - (self.started or now), 1)}
        if self.state == "queued":
            out["ahead"] = ahead
        if self.error:
            out["error"] = self.error
        if self.result:
            prefix = f"/api/jobs/{self.id}/files/"
            out["report"] = self.result.report
            out["links"] = {key: prefix + name for key, name in self.result.links.items()}
            out["view"] = self.result.view(prefix)
        return out


class JobStore:
    """The workspace, the jobs by id, the queue and its worker, and the sweeper of old jobs."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.workspace = Path(tempfile.mkdtemp(prefix="slice2d-web-", dir=settings.workspace_parent))
        os.chmod(self.workspace, 0o700)  # mkdtemp makes it so; said here because it matters
        self._jobs: dict[str, Job] = {}
        self._waiting: list[str] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, name="slice2d-web-predict", daemon=True),
                         threading.Thread(target=self._sweep_forever, name="slice2d-web-sweep", daemon=True)]
        for thread in self._threads:
            thread.start()

    def new_job(self, name: str) -> Job:
        """A job with a fresh unguessable id and its private folder; the caller writes ``job.upload``."""
        job_id = secrets.token_urlsafe(18)
        folder = self.workspace / job_id
        (folder / "upload").mkdir(parents=True, mode=0o700)
        return Job(id=job_id, folder=folder, name=name)

    def submit(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job
            self._waiting.append(job.id)
        self._queue.put(job)

    def get(self, job_id: str) -> tuple[Job, int] | None:
        """The job and how many jobs wait before it, or None for an unknown (or swept) id."""
        with self._lock:
            job = self._jobs.get(job_id)
            ahead = self._waiting.index(job_id) if job_id in self._waiting else 0
        return (job, ahead) if job else None

    def sweep(self, now: float | None = None) -> int:
        """Delete the jobs that finished more than ``keep_seconds`` before ``now``; returns how many."""
        now = time.time() if now is None else now
        with self._lock:
            old = [j for j in self._jobs.values() if j.finished and now - j.finished > self.settings.keep_seconds]
            for job in old:
                del self._jobs[job.id]
        for job in old:
            shutil.rmtree(job.folder, ignore_errors=True)
        return len(old)

    def close(self) -> None:
        """Stop the worker and the sweeper and delete the workspace (a running prediction is left
        to finish in its daemon thread, writing into a folder that is gone)."""
        self._stop.set()
        self._queue.put(None)
        shutil.rmtree(self.workspace, ignore_errors=True)

    def _sweep_forever(self) -> None:
        while not self._stop.wait(min(SWEEP_EVERY_S, self.settings.keep_seconds / 2)):
            self.sweep()

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            with self._lock:
                self._waiting.remove(job.id)
            job.started = time.time()
            try:
                job.result = self._run(job)
                job.state = "done"
            except UploadError as exc:
                self._fail(job, exc.status, str(exc))
            except InputError as exc:
                self._fail(job, 422, str(exc))
            except Exception:  # a bug: the server goes on, the traceback goes to its log
                log.exception("job %s (%s) failed", job.id, job.name)
                self._fail(job, 500, f"{job.name}: internal error while predicting; the server log has the details")
            job.finished = time.time()

    def _fail(self, job: Job, status: int, message: str) -> None:
        """Record a failure, with the job's private folders taken out of the message."""
        for inner in (job.folder / "upload", job.folder / "input", job.folder):
            message = message.replace(f"{inner}{os.sep}", "").replace(str(inner), job.name)
        job.state, job.status, job.error = "failed", status, message

    def _run(self, job: Job) -> TakeHome:
        """Unpack, predict with ``slice2d.pipeline.segment``, and gather what the page shows."""
        source = job.upload
        if not is_nifti(source):
            job.state = "unpacking"
            limit = UNPACKED_PER_UPLOAD * self.settings.max_upload_bytes
            stem = job.name[: -len(".zip")]
            source = unpack_zip(job.upload, job.folder / "input" / stem, limit, job.name)
        job.state = "predicting"
        out = job.folder / "out"
        options = self.settings.options
        if source.is_dir() and is_dicom_series(source) and importlib.util.find_spec("highdicom"):
            options = dataclasses.replace(options, dicom_seg=True)  # the maps as a SEG too
        segment(source, out, self.settings.models, options)
        return take_home(source, out, job.folder / "take-home", self.settings)
