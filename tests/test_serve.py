"""`run_pipeline.py serve` against a real server: uvicorn started by the test on a free loopback
port, httpx as the client. Predictions equal `predict`'s; bad requests get the right 4xx and the
next good request still succeeds; limits (413, 503, 504) hold; the training folder is untouched."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import FAST, fingerprint

httpx = pytest.importorskip("httpx")
ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-token"
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, out: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "run_pipeline.py"), "serve", "--out", str(out),
                                      "--run", "ef", "--port", str(self.port), *args, *FAST,
                                      "serve.decode_workers=1", "decode.workers=1"],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError("server did not become ready")

    def stop(self) -> str:
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out


@pytest.fixture(scope="module")
def trained_out(trained_run):
    cfg, out, _ = trained_run
    return cfg, out


@pytest.fixture(scope="module")
def clips(demo_dataset, tmp_path_factory):
    from pipeline.demo import make_bad_inputs

    videos = sorted((demo_dataset / "videos").rglob("*.mp4"))
    bad = make_bad_inputs(tmp_path_factory.mktemp("bad"))
    return videos, bad


@pytest.fixture(scope="module")
def server(trained_out, tmp_path_factory):
    _, out = trained_out
    root = tmp_path_factory.mktemp("allowed")
    s = Server(out, "--token", TOKEN, "--allow-root", str(root), "serve.max_upload_mb=1")
    s.root = root
    try:
        s.wait_ready()
        yield s
    finally:
        s.log = s.stop()


def post(server, path: Path | None = None, name: str | None = None, token: str | None = TOKEN, data=None, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    files = {"file": (name or path.name, path.read_bytes() if path else b"", "video/mp4")}
    return httpx.post(server.url + "/v1/predict", files=files, data=data or {}, headers=headers, timeout=300, **kw)


def test_prediction_equals_predict(server, trained_out, clips, tmp_path):
    from pipeline.predict import predict_videos

    cfg, out = trained_out
    video = clips[0][0]
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copyfile(video, folder / video.name)
    offline = json.loads(predict_videos(cfg, out, [out / "runs" / "ef"], folder, top_k=None, progress=False)
                         .read_text().splitlines()[0])
    r = post(server, video)
    assert r.status_code == 200, r.text
    online = r.json()
    assert online["video_id"] == video.name
    assert [lab for lab, _ in online["labels"]] == [lab for lab, _ in offline["labels"]]
    for (_, p_on), (_, p_off) in zip(online["labels"], offline["labels"]):
        assert p_on == pytest.approx(p_off, abs=1e-5)
    assert set(online["timings"]) == {"receive_s", "decode_s", "model_s", "total_s"}
    assert "decode_warnings" in online
    top = post(server, video, data={"top_k": "1"}).json()["labels"]
    assert len(top) == 1 and top[0][0] == offline["labels"][0][0]


@pytest.mark.parametrize("kind,status", [("zero_byte", 422), ("text_as_mp4", 415), ("audio_only", 415)])
def test_bad_uploads_then_good(server, clips, kind, status):
    videos, bad = clips
    r = post(server, bad[kind])
    assert r.status_code == status, r.text
    assert "\n" not in r.json()["error"] and r.json()["error"].startswith("cannot be decoded")
    assert post(server, videos[1]).status_code == 200


def test_truncated_upload_is_refused_or_salvaged(server, clips):
    videos, bad = clips
    r = post(server, bad["truncated"])
    assert r.status_code in (200, 415, 422), r.text     # salvaged (with warnings) or refused in one line
    if r.status_code != 200:
        assert "\n" not in r.json()["error"]
    assert post(server, videos[1]).status_code == 200


def test_limits_and_safety(server, clips, tmp_path):
    videos, _ = clips
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(int(1.5 * 2**20)))
    assert post(server, big).status_code == 413
    assert post(server, videos[0], token=None).status_code == 401
    assert post(server, videos[0], token="wrong").status_code == 401
    assert post(server, videos[0], name="../../escape.mp4").status_code == 400
    assert not (server.root.parent / "escape.mp4").exists()
    outside = tmp_path / "outside.mp4"
    shutil.copyfile(videos[0], outside)
    (server.root / "link.mp4").symlink_to(outside)
    shutil.copyfile(videos[0], server.root / "inside.mp4")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for name, status in [("../outside.mp4", 403), ("link.mp4", 403), ("missing.mp4", 404), ("inside.mp4", 200)]:
        r = httpx.post(server.url + "/v1/predict", json={"path": name}, headers=headers, timeout=300)
        assert r.status_code == status, (name, r.text)
    assert post(server, videos[1]).status_code == 200


def test_concurrent_requests_all_succeed_and_training_untouched(server, trained_out, clips):
    _, out = trained_out
    videos, _ = clips
    before = fingerprint(out)
    listing = lambda: {str(p): p.stat().st_mtime_ns for p in out.rglob("*") if not p.name.endswith(("-wal", "-shm"))}  # noqa: E731
    files_before = listing()
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda v: post(server, v).status_code, videos[:6] * 2))
    assert codes == [200] * 12
    assert fingerprint(out) == before
    metrics = httpx.get(server.url + "/metrics", timeout=5).text
    assert 'microvideo_requests_total{status="200"}' in metrics and "microvideo_queue_depth 0" in metrics
    batches = float(next(l.split()[1] for l in metrics.splitlines() if l.startswith("microvideo_batches_total")))
    clips_n = float(next(l.split()[1] for l in metrics.splitlines() if l.startswith("microvideo_batched_clips_total")))
    assert clips_n > batches   # concurrent requests were scored together
    model = httpx.get(server.url + "/v1/model", timeout=5).json()
    assert model["classes"] and sorted(model["inputs"]) == ["audio", "visual"]
    assert listing() == files_before                  # no endpoint writes anything under OUT


def test_queue_full_and_timeout(trained_out, clips):
    """queue_size=1 and a batch that waits 1.5 s for company: the first request times out (504),
    a second one sent meanwhile finds the queue full (503 + Retry-After); then it serves again."""
    _, out = trained_out
    videos, _ = clips
    s = Server(out, "serve.queue_size=1", "serve.batch_wait_ms=1500", "serve.request_timeout_s=1")
    try:
        s.wait_ready()
        files = lambda v: {"file": (v.name, v.read_bytes(), "video/mp4")}
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(httpx.post, s.url + "/v1/predict", files=files(videos[0]), timeout=30)
            time.sleep(0.5)
            second = httpx.post(s.url + "/v1/predict", files=files(videos[1]), timeout=30)
            assert second.status_code == 503 and second.headers["retry-after"]
            assert first.result().status_code == 504
        assert httpx.get(s.url + "/healthz", timeout=5).status_code == 200
    finally:
        log = s.stop()
    lines = [json.loads(l) for l in log.splitlines() if l.startswith("{")]
    assert {l["status"] for l in lines if l["path"] == "/v1/predict"} >= {503, 504}
    assert all({"id", "status", "bytes_in", "latency_ms"} <= set(l) for l in lines if "path" in l)
