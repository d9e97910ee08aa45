"""`run_pipeline.py serve`: a tagging service that keeps the run's models and extractors loaded.

    run_pipeline.py serve --out OUT --run nmcl [--run other] [--host 127.0.0.1] [--port 8000]
    curl -F file=@clip.mp4 -F top_k=3 http://127.0.0.1:8000/v1/predict

It is `predict` on uploads: the same `pipeline.predict.Predictor` (built once from the run's
recorded extractor settings, the training folder opened read-only), the same JSONL record, plus
per-stage timings and decode warnings. Nothing a request sends is written under OUT: uploads go
to a private temporary folder (mode 0700) under generated names and are deleted after the
response.

How a request flows (why it is fast under load):
  admit (bounded: 503 + Retry-After when `queue_size` requests are in) ->
  receive (413 past `max_upload_mb`) -> decode in the decode process pool (at most
  `decode_workers` in flight; the extractors' CPU worker steps run there too) ->
  micro-batch: clips of concurrent requests are gathered (up to `batch_max`, waiting at most
  `batch_wait_ms` after the first) into one `Predictor.predict_clips` call, so the extractors and
  the model see batches as in offline `predict` -> respond. The whole request is bounded by
  `request_timeout_s` (504). Settings: `serve:` in configs/pipeline.yaml.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import shutil
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


log = logging.getLogger("microvideo.access")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
MEDIA_ERRORS = ("not a readable media file", "no video stream")  # -> 415; other decode errors (empty, truncated) 422


class Metrics:
    """Prometheus text-format counters: requests by status, a latency histogram, queue depth."""

    def __init__(self):
        self.by_status: dict[int, int] = {}
        self.buckets = [0] * len(LATENCY_BUCKETS)
        self.count, self.total_s = 0, 0.0
        self.batches, self.batched_clips = 0, 0

    def observe(self, status: int, seconds: float) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.count += 1
        self.total_s += seconds
        for i, edge in enumerate(LATENCY_BUCKETS):
            if seconds <= edge:
                self.buckets[i] += 1

    def text(self, queue_depth: int, decoding: int) -> str:
        lines = ["# TYPE microvideo_requests_total counter"]
        lines += [f'microvideo_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.by_status.items())]
        lines.append("# TYPE microvideo_request_seconds histogram")
        lines += [f'microvideo_request_seconds_bucket{{le="{e:g}"}} {n}' for e, n in zip(LATENCY_BUCKETS, self.buckets)]
        lines += [f'microvideo_request_seconds_bucket{{le="+Inf"}} {self.count}',
                  f"microvideo_request_seconds_sum {self.total_s:.6f}", f"microvideo_request_seconds_count {self.count}",
                  "# TYPE microvideo_queue_depth gauge", f"microvideo_queue_depth {queue_depth}",
                  "# TYPE microvideo_decodes_in_flight gauge", f"microvideo_decodes_in_flight {decoding}",
                  "# TYPE microvideo_batches_total counter", f"microvideo_batches_total {self.batches}",
                  f"microvideo_batched_clips_total {self.batched_clips}"]
        return "\n".join(lines) + "\n"


class MicroBatcher:
    """Gathers clips from concurrent requests into one call of `fn(clips) -> records`: at most
    `max_batch` clips, waiting at most `max_wait_s` after the first. One batch runs at a time,
    in one worker thread, so the models are never used concurrently."""

    def __init__(self, fn, max_batch: int, max_wait_s: float, metrics: Metrics):
        self.fn, self.max_batch, self.max_wait_s, self.metrics = fn, max_batch, max_wait_s, metrics
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")

    async def submit(self, clip, **kwargs) -> dict:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((clip, kwargs, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch and (left := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            batch = [b for b in batch if not b[2].done()]  # requests that timed out meanwhile
            if batch:
                await self._run_batch(loop, batch)

    async def _run_batch(self, loop, batch: list) -> None:
        # top_k / threshold differ per request: score once, cut each record afterwards
        clips = [clip for clip, _, _ in batch]
        self.metrics.batches += 1
        self.metrics.batched_clips += len(clips)
        try:
            records = await loop.run_in_executor(self.executor, self.fn, clips)
        except Exception as e:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        for (_, kwargs, future), record in zip(batch, records):
            if not future.done():
                future.set_result(cut(record, **kwargs))


def cut(record: dict, top_k: int | None = None, threshold: float | None = None) -> dict:
    """A record's labels (best first) limited to `top_k` and to probabilities >= `threshold`."""
    labels = [lp for lp in record.get("labels", []) if threshold is None or lp[1] >= threshold]
    return {**record, "labels": labels[:top_k] if top_k is not None else labels}


class TaggingService:
    """State of one server: the predictor (built in a thread at start-up, so /healthz answers
    at once and /readyz turns ready when the models are loaded), the decode pool, the batcher."""

    def __init__(self, cfg, out_dir: str | Path, run_dirs: list[Path], token: str | None = None,
                 allow_root: str | Path | None = None):
        self.cfg, self.settings = cfg, cfg.serve
        self.out_dir, self.run_dirs = Path(out_dir), [Path(r) for r in run_dirs]
        self.token = token or None
        self.allow_root = Path(allow_root).resolve(strict=True) if allow_root else None
        self.metrics = Metrics()
        self.predictor = None
        self.load_error: str | None = None
        self.admitted = 0
        self.decoding = 0
        self.upload_dir = Path(tempfile.mkdtemp(prefix="microvideo-serve-"))  # 0700, ours alone
        self.pool = None

    # -- start-up / shutdown -----------------------------------------------------------------
    def load(self) -> None:
        """Build the predictor once (models + extractors on the chosen device) and the pool."""
        import pebble

        from .predict import Predictor

        try:
            predictor = Predictor(self.cfg, self.out_dir, self.run_dirs)
            from .extract import worker_steps

            # one decode pass per decode config the run's inputs were extracted with (normally one)
            self.groups = [(options, worker_steps({m: predictor.extractors[m] for m in names}) or None)
                           for options, names in predictor.decode_groups()]
            self.pool = pebble.ProcessPool(max_workers=int(self.settings.decode_workers))
            self.predictor = predictor
        except Exception as e:  # reported by /readyz and the log; the process stays up
            self.load_error = f"{type(e).__name__}: {e}"
            log.error(json.dumps({"event": "load_failed", "error": self.load_error}))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.stop()
            self.pool.join()
        shutil.rmtree(self.upload_dir, ignore_errors=True)

    # -- one request ------------------------------------------------------------------------
    def check_token(self, header: str | None) -> bool:
        if not self.token:
            return True
        scheme, _, value = (header or "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(value.strip(), self.token)

    def resolve_allowed(self, name: str) -> Path:
        """A path named in a JSON request, resolved (symlinks too) and required inside --allow-root."""
        if self.allow_root is None:
            raise PermissionError("this server takes uploads only (start it with --allow-root DIR to name files)")
        try:
            path = (self.allow_root / name).resolve()   # `..`, absolute names and symlinks resolved first
        except (RuntimeError, OSError, ValueError):
            raise PermissionError(f"{name} cannot be resolved") from None
        if not path.is_relative_to(self.allow_root):
            raise PermissionError(f"{name} is outside the allowed root")
        if not path.is_file():
            raise FileNotFoundError(f"no such file under the allowed root: {name}")
        return path

    def decode(self, path: Path, request_id: str, title: str | None):
        """Decode in the pool (the time limit and crash retry of the extract stage apply): one
        Clip, or a list with one Clip per decode group; the first DecodeError if any."""
        from .extract import decode_in_pool

        row = {"path": str(path), "video_id": request_id, "title": title}
        clips = [decode_in_pool(self.pool, row, options, float(self.cfg.decode.timeout_s), prepare)
                 for options, prepare in self.groups]
        failed = [c for c in clips if isinstance(c, Exception)]
        return failed[0] if failed else clips[0] if len(clips) == 1 else clips


def create_app(service: TaggingService):
    """The FastAPI app of a service (the routes live in pipeline/serve_app.py)."""
    from .serve_app import build_app

    return build_app(service)


def serve(cfg, out_dir: str | Path, run_dirs: list[Path], host: str, port: int, token: str | None = None,
          allow_root: str | Path | None = None) -> None:
    """Run the service in this process until interrupted (uvicorn)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    service = TaggingService(cfg, out_dir, run_dirs, token=token, allow_root=allow_root)
    threading.Thread(target=service.load, name="load-models", daemon=True).start()
    try:
        uvicorn.run(create_app(service), host=host, port=port, log_level="warning", access_log=False)
    finally:
        service.close()


def new_request_id() -> str:
    return uuid.uuid4().hex[:12]
