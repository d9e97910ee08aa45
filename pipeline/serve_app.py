"""The HTTP side of `serve` (FastAPI): routes, limits, access log. The state it works on is
`pipeline.serve.TaggingService`; see that module for how a request flows.

    POST /v1/predict   multipart `file` (+ `title`, `top_k`, `threshold`), or with --allow-root a
                       JSON body {"path": "relative/to/root.mp4", ...}
    GET  /healthz      liveness          GET /readyz   models loaded (503 until then)
    GET  /v1/model     run, classes, extractors, weights, versions
    GET  /metrics      Prometheus text: requests by status, latency histogram, queue depth
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

from fastapi import FastAPI, Request   # this module is imported only by `serve`
from fastapi.responses import JSONResponse, PlainTextResponse

from .serve import MEDIA_ERRORS, MicroBatcher, TaggingService, log, new_request_id

SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,5}$")


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class BodyLimit:
    """ASGI middleware: refuse a body over `limit` bytes, by its Content-Length or as it streams."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            scope.setdefault("state", {})["body_too_large"] = int(length)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPError(413, f"upload larger than serve.max_upload_mb ({self.limit / 2**20:g} MiB)")
            return message

        return await self.app(scope, counted, send)


def _error(e: HTTPError):
    return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)


async def _logged(service: TaggingService, request, call_next):
    """Run one request with its id; count it in the metrics and write its JSON access-log line."""
    rid, t0 = new_request_id(), time.perf_counter()
    request.state.request_id = rid
    try:
        response = await call_next(request)
    except HTTPError as e:  # raised by BodyLimit while the body streams in
        response = _error(e)
    latency = time.perf_counter() - t0
    service.metrics.observe(response.status_code, latency)
    response.headers["X-Request-ID"] = rid
    log.info(json.dumps({"id": rid, "method": request.method, "path": request.url.path,
                         "status": response.status_code, "bytes_in": int(request.headers.get("content-length") or 0),
                         "bytes_out": int(response.headers.get("content-length") or 0),
                         "latency_ms": round(latency * 1000, 1)}))
    return response


def build_app(service: TaggingService):
    from contextlib import asynccontextmanager

    s = service.settings
    limit = int(float(s.max_upload_mb) * 2**20)

    @asynccontextmanager
    async def lifespan(app):
        service.batcher = MicroBatcher(_score, int(s.batch_max), float(s.batch_wait_ms) / 1000, service.metrics)
        task = asyncio.create_task(service.batcher.run())
        service.decode_slots = asyncio.Semaphore(int(s.decode_workers))
        yield
        task.cancel()

    def _score(clips):
        return service.predictor.predict_clips(clips, top_k=None, threshold=None)

    app = FastAPI(title="microvideo tagging service", lifespan=lifespan)

    @app.middleware("http")
    async def access_log(request: Request, call_next):
        return await _logged(service, request, call_next)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if service.predictor is None:
            return JSONResponse({"ready": False, "error": service.load_error or "loading models"}, status_code=503)
        return {"ready": True}

    @app.get("/v1/model")
    async def model():
        if service.predictor is None:
            return JSONResponse({"error": service.load_error or "loading models"}, status_code=503)
        return describe(service)

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(service.metrics.text(service.admitted, service.decoding))

    @app.post("/v1/predict")
    async def predict(request: Request):
        try:
            return await _predict(service, request)
        except HTTPError as e:
            return _error(e)

    return BodyLimit(app, limit)


async def _predict(service: TaggingService, request) -> dict:
    s = service.settings
    if not service.check_token(request.headers.get("authorization")):
        raise HTTPError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
    if "body_too_large" in request.scope.get("state", {}):
        raise HTTPError(413, f"upload larger than serve.max_upload_mb ({float(s.max_upload_mb):g} MiB)")
    if service.predictor is None:
        raise HTTPError(503, service.load_error or "models are loading", {"Retry-After": str(s.retry_after_s)})
    if service.admitted >= int(s.queue_size):
        raise HTTPError(503, f"queue full ({s.queue_size} requests in progress)", {"Retry-After": str(s.retry_after_s)})
    service.admitted += 1
    upload: dict = {}
    try:
        return await asyncio.wait_for(_handle(service, request, upload), float(s.request_timeout_s))
    except asyncio.TimeoutError:
        raise HTTPError(504, f"request took longer than serve.request_timeout_s ({s.request_timeout_s} s)") from None
    finally:
        service.admitted -= 1
        if "path" in upload:
            upload["path"].unlink(missing_ok=True)


async def _handle(service: TaggingService, request, upload: dict) -> dict:
    t0 = time.perf_counter()
    path, name, fields = await _receive(service, request, upload)
    top_k, threshold = _options(fields)
    t1 = time.perf_counter()
    rid = request.state.request_id
    async with service.decode_slots:
        service.decoding += 1
        try:
            clip = await asyncio.to_thread(service.decode, path, rid, fields.get("title") or None)
        finally:
            service.decoding -= 1
    from .decode import DecodeError

    if isinstance(clip, DecodeError):
        message = str(clip).splitlines()[0] if str(clip) else "cannot be decoded"
        raise HTTPError(415 if any(m in message for m in MEDIA_ERRORS) else 422, f"cannot be decoded: {message}")
    t2 = time.perf_counter()
    record = await service.batcher.submit(clip, top_k=top_k, threshold=threshold)
    t3 = time.perf_counter()
    if "error" in record:
        raise HTTPError(422, record["error"])
    warnings = {k: v for c in (clip if isinstance(clip, list) else [clip]) for k, v in c.warnings.items()}
    return {**record, "video_id": name, "request_id": rid, "decode_warnings": warnings,
            "timings": {"receive_s": round(t1 - t0, 4), "decode_s": round(t2 - t1, 4),
                        "model_s": round(t3 - t2, 4), "total_s": round(t3 - t0, 4)}}


async def _receive(service: TaggingService, request, upload: dict) -> tuple[Path, str, dict]:
    """The video to score: an upload saved under a generated name in the private folder, or a
    file under --allow-root named by a JSON body. Returns (path, display name, fields)."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            fields = await request.json()
            name = str(fields["path"])
        except (ValueError, KeyError, TypeError):
            raise HTTPError(400, 'a JSON request is {"path": "file under the allowed root", ...}') from None
        try:
            return service.resolve_allowed(name), name, fields
        except PermissionError as e:
            raise HTTPError(403, str(e)) from None
        except FileNotFoundError as e:
            raise HTTPError(404, str(e)) from None
    try:
        form = await request.form(max_files=1, max_fields=8)
    except HTTPError:
        raise
    except Exception as e:
        raise HTTPError(400, f"expected a multipart upload with a `file` field: {e}") from None
    file = form.get("file")
    if file is None or isinstance(file, str):
        raise HTTPError(400, "expected a multipart upload with a `file` field")
    name = file.filename or "upload"
    if "/" in name or "\\" in name or ".." in name or "\x00" in name:
        raise HTTPError(400, "the upload's file name must be a plain name, not a path")
    suffix = Path(name).suffix if SAFE_SUFFIX.match(Path(name).suffix or "") else ""
    upload["path"] = path = service.upload_dir / f"{request.state.request_id}{suffix.lower()}"
    with open(path, "wb") as f:  # a transient upload in the service's private folder, not an output
        while chunk := await file.read(1 << 20):
            f.write(chunk)
    await file.close()
    return path, name, {k: v for k, v in form.items() if isinstance(v, str)}


def _options(fields: dict) -> tuple[int | None, float | None]:
    try:
        top_k = int(fields["top_k"]) if fields.get("top_k") not in (None, "") else None
        threshold = float(fields["threshold"]) if fields.get("threshold") not in (None, "") else None
    except (TypeError, ValueError):
        raise HTTPError(422, "top_k must be an integer and threshold a number") from None
    if (top_k is not None and top_k < 1) or (threshold is not None and not 0 <= threshold <= 1):
        raise HTTPError(422, "top_k must be >= 1 and threshold within [0, 1]")
    return top_k, threshold


def describe(service: TaggingService) -> dict:
    from .config import versions

    p = service.predictor
    return {"runs": [str(r) for r in p.run_dirs], "classes": p.class_names, "multilabel": p.multilabel,
            "inputs": p.modalities, "device": p.device,
            "extractors": {m: ext.metadata() for m, ext in p.extractors.items()},
            "versions": versions()}
