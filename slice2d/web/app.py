"""The web app of ``slice2d serve``: one static page (``static/``, with the NiiVue viewer shipped in
the package: nothing is fetched from the internet) and a small JSON API over ``jobs.JobStore``.

API (errors are JSON ``{"error": "..."}`` with a 4xx status, 500 for a bug):

- ``POST /api/predict``, multipart field ``file`` (.nii, .nii.gz, or a .zip of a DICOM series or
  of PNG/JPG slices): waits for the prediction and answers the job (below).
- ``POST /api/jobs``, the same upload: answers 202 with ``{"job": id, ...}`` at once.
- ``GET /api/jobs/{id}``: ``state`` (queued, unpacking, predicting, done, failed), ``elapsed_s``;
  once done ``report`` (the JSON ``slice2d predict`` writes), ``links`` (download paths) and
  ``view`` (what the page's viewer loads).
- ``GET /api/jobs/{id}/files/{name}``: a file of ``links``.
- ``GET /api/limits``: ``max_upload_bytes`` and ``keep_seconds`` (how long results are kept).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from slice2d.io import InputError
from slice2d.web.jobs import Job, JobStore, Settings
from slice2d.web.uploads import UploadError, upload_name

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
POLL_S = 0.25  # how often POST /api/predict looks whether its job is done
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class _TooLarge(Exception):
    pass


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=NO_STORE)


def _limited(receive, max_bytes: int):
    """``receive`` of an ASGI request that raises ``_TooLarge`` once the body passes ``max_bytes``."""
    seen = 0

    async def receive_limited():
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > max_bytes:
            raise _TooLarge
        return message

    return receive_limited


def create_app(settings: Settings) -> FastAPI:
    """The app, with its own ``JobStore`` (made now, closed when the app shuts down)."""
    store = JobStore(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        store.close()

    # no /docs or /redoc: their pages load scripts from a CDN
    app = FastAPI(title="slice2d", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.store = store
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=NO_STORE)

    async def receive_upload(request: Request) -> Job:
        """Save the upload of ``request`` into a new job's folder; raises ``UploadError``."""
        limit = settings.max_upload_bytes
        too_large = UploadError(f"the upload is over the limit of {limit / 2**20:.0f} MiB "
                                "(slice2d serve --max-upload-mb)", 413)
        if int(request.headers.get("content-length") or 0) > limit + 2**16:  # + the multipart framing
            raise too_large
        try:
            form = await Request(request.scope, _limited(request.receive, limit + 2**16)).form(max_files=1, max_fields=4)
        except _TooLarge:
            raise too_large from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise UploadError("send the scan as the multipart form field 'file'")
        job = store.new_job(upload_name(upload.filename))
        try:
            with open(job.upload, "wb") as out:
                await asyncio.to_thread(shutil.copyfileobj, upload.file, out)
        finally:
            await form.close()
        return job

    async def start(request: Request) -> Job | JSONResponse:
        try:
            job = await receive_upload(request)
        except UploadError as exc:
            return _error(exc.status, str(exc))
        store.submit(job)
        log.info("job %s: %s queued", job.id, job.name)
        return job

    def answer(job_id: str) -> JSONResponse:
        found = store.get(job_id)
        if found is None:
            return _error(404, "no such job (finished jobs are deleted after a while)")
        job, ahead = found
        status = job.status if job.state == "failed" else 200
        return JSONResponse(job.summary(ahead), status_code=status, headers=NO_STORE)

    @app.get("/api/limits")
    async def limits() -> JSONResponse:
        return JSONResponse({"max_upload_bytes": settings.max_upload_bytes, "keep_seconds": settings.keep_seconds})

    @app.post("/api/jobs")
    async def submit(request: Request) -> JSONResponse:
        job = await start(request)
        if isinstance(job, JSONResponse):
            return job
        return JSONResponse(job.summary(), status_code=202, headers=NO_STORE)

    @app.post("/api/predict")
    async def predict(request: Request) -> JSONResponse:
        job = await start(request)
        if isinstance(job, JSONResponse):
            return job
        while job.finished is None:
            await asyncio.sleep(POLL_S)
        return answer(job.id)

    @app.get("/api/jobs/{job_id}")
    async def status(job_id: str) -> JSONResponse:
        return answer(job_id)

    @app.get("/api/jobs/{job_id}/files/{name}")
    async def download(job_id: str, name: str) -> Response:
        found = store.get(job_id)
        path = found[0].result.files.get(name) if found and found[0].result else None
        if path is None:
            return _error(404, "no such file")
        return FileResponse(path, filename=name, headers=NO_STORE)

    return app


def _check_address(host: str, port: int) -> None:
    """Raise ``InputError`` unless the server can listen on ``host:port`` (e.g. the port is taken)."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise InputError(f"{host}:{port}: cannot listen there ({exc.strerror}); choose another --port or --host") from None


def serve(settings: Settings, host: str, port: int, quiet: bool = False) -> None:
    """Run the app with uvicorn until interrupted (Ctrl-C)."""
    import uvicorn

    _check_address(host, port)

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who can reach this machine can upload scans and read results "
                    "(there is no login)", host)
    app = create_app(settings)
    log.info("slice2d web app at http://%s:%d (Ctrl-C stops it); uploads and results live in %s, "
             "deleted %.0f minutes after they are done", host, port, app.state.store.workspace, settings.keep_seconds / 60)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info")
    finally:  # also when uvicorn could not start (a port in use) and so never shut the app down
        app.state.store.close()
