"""Optical-flow back-ends (extractors/optical_flow.py): Farneback and the torch Lucas-Kanade
recover known motion; the torch flow is deterministic and a pair's flow does not depend on the
batch; RAFT loads a state dict from the torch hub cache strictly (a missing file names the file
and the folder) and runs; `auto` picks what it says; the trajectory extractor with torch flow
still tells left / right / static clips apart."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from extractors import WeightsNotFound, build_extractor
from extractors.optical_flow import compute_flows, load_raft, median3x3, raft_flows, resolve_method
from extractors.trajectory import dense_trajectories, one_thread
from test_extractors_trajectory import motion_clip  # the left/right/static clip generator

CFG = {"family": "dense_trajectory", "codebook_size": 16, "segments": 2}


def texture(h: int, w: int, seed: int) -> np.ndarray:
    """Smoothed white noise (sigma 1.5 px, std 40 grey levels around 128): texture at every
    scale a frame at 112 px has, with no repeating pattern for the flow to alias on."""
    import cv2

    rng = np.random.default_rng(seed)
    n = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 1.5)
    return np.clip(128 + 40 * n / n.std(), 0, 255).astype(np.float32)


def warped_pair(base: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """(2, h, w) uint8 frames whose forward flow is exactly `flow` (h, w, 2): frame 1 samples the
    base at x + flow(x) (bicubic), frame 2 is the base, so frame1(x) = frame2(x + flow(x))."""
    import cv2

    h, w = base.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    first = cv2.remap(base, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    return np.stack([first, base]).clip(0, 255).round().astype(np.uint8)


def known_fields(h: int, w: int) -> dict[str, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    const = lambda dx, dy: np.dstack([np.full((h, w), dx), np.full((h, w), dy)]).astype(np.float32)  # noqa: E731
    return {
        "subpixel": const(0.45, -0.3),
        "translation": const(2.6, -1.7),
        # smooth non-rigid field: up to 3 px, direction varying across the frame
        "smooth": np.dstack([1.0 + 2.0 * np.sin(2 * np.pi * ys / h),
                             1.5 * np.cos(2 * np.pi * xs / w)]).astype(np.float32),
    }


@pytest.mark.parametrize("method", ["farneback", "torch"])
def test_flow_recovers_known_motion(method, one_thread):
    """End-point error (EPE) against the exact field, 12 px away from the borders (where part of
    the content enters or leaves the frame). Measured floor of both methods on such pairs: mean
    EPE 0.05-0.1 px (the uint8 rounding of the frames and the bicubic resampling); a method that
    does not converge errs by the motion itself (0.5-3 px). Thresholds: mean EPE < 0.2 px (below
    half the smallest motion, so zero flow fails even the sub-pixel case) and 95 % of pixels
    within 0.5 px."""
    h, w = 96, 128
    base = texture(h, w, seed=1)
    for name, truth in known_fields(h, w).items():
        flow = compute_flows(warped_pair(base, truth), method, "cpu")
        assert flow.shape == (1, h, w, 2) and flow.dtype == torch.float32
        epe = np.linalg.norm(flow[0].numpy() - truth, axis=-1)[12:-12, 12:-12]
        assert epe.mean() < 0.2 and np.percentile(epe, 95) < 0.5, (method, name, epe.mean())
    if method == "torch":  # 4 pyramid levels: 8 px per frame too (Farneback's 3 levels lose this one)
        truth = known_fields(h, w)["translation"] * 3
        epe = np.linalg.norm(compute_flows(warped_pair(base, truth), method, "cpu")[0].numpy() - truth, axis=-1)
        assert epe[16:-16, 16:-16].mean() < 0.2


def test_torch_flow_deterministic_and_batch_invariant(one_thread):
    """A clip's flows as one batch == each pair alone, bit for bit, and == a second run."""
    base = texture(80, 112, seed=2)
    fields = known_fields(80, 112)
    frames = np.concatenate([warped_pair(base, fields["smooth"])[:1], warped_pair(base, fields["translation"])])
    batch = compute_flows(frames, "torch", "cpu")
    assert batch.shape == (2, 80, 112, 2)
    assert torch.equal(batch, compute_flows(frames, "torch", "cpu"))
    for t in range(2):
        assert torch.equal(batch[t], compute_flows(frames[t:t + 2], "torch", "cpu")[0])
    # RGB input gives the flow of its gray version (OpenCV's weights)
    rgb = np.repeat(frames[..., None], 3, axis=-1)
    assert torch.equal(batch, compute_flows(rgb, "torch", "cpu"))




def test_raft_loads_from_hub_cache_and_auto_picks_it_on_cuda(hub_dir, monkeypatch, one_thread):
    from torchvision.models.optical_flow import Raft_Small_Weights, raft_small

    # Before the file exists: auto means farneback on the CPU and torch on CUDA; raft is refused
    # with the exact file name and folder.
    assert resolve_method("auto", "cpu") == "farneback" and resolve_method("auto", "cuda") == "torch"
    folder = hub_dir / "checkpoints"
    with pytest.raises(WeightsNotFound, match=f"raft_small_C_T_V2-01064c6d.pth.*{folder}"):
        load_raft("raft_small", "C_T_V2")
    with pytest.raises(WeightsNotFound, match="raft_small_C_T_V2-01064c6d.pth"):
        build_extractor("trajectory", {**CFG, "flow": "raft"}, "cpu")
    ext = build_extractor("trajectory", {**CFG, "flow": "auto"}, "cpu")
    assert ext.metadata()["flow"] == "farneback" and ext.metadata()["random_weights"] is False

    # Save a network like the published file: <name>-<sha256 prefix>.pth; point the enum at it.
    torch.manual_seed(7)
    reference = raft_small(weights=None).eval()
    folder.mkdir(parents=True)
    tmp = folder / "tmp.pth"
    torch.save(reference.state_dict(), tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    name = f"raft_small_C_T_V2-{digest[:8]}.pth"
    tmp.rename(folder / name)
    monkeypatch.setattr(Raft_Small_Weights.C_T_V2.value, "url", f"https://download.pytorch.org/models/{name}")

    # On CUDA auto takes the file now; on the CPU it stays with Farneback (RAFT is ~30x slower
    # there) unless raft is asked for by name.
    assert resolve_method("auto", "cuda") == "raft" and resolve_method("auto", "cpu") == "farneback"
    net, info = load_raft("raft_small", "C_T_V2")
    assert info["sha256"] == digest and info["random_weights"] is False and info["weights"] == "raft_small.C_T_V2"
    for key, value in reference.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key
    ext = build_extractor("trajectory", {**CFG, "flow": "raft"}, "cpu")
    meta = ext.metadata()
    assert meta["flow"] == "raft" and meta["flow_weights"]["sha256"] == digest and "RAFT" in meta["model"]

    # Two small frames, 60 x 85: upscaled to RAFT's 128 px minimum (128 x 181), padded to a
    # multiple of 8 (128 x 184, 1 + 2 columns): the flow has the frames' shape and is the
    # reference network's, fed by the weights' own transform.
    frames = np.stack([texture(60, 85, 3), texture(60, 85, 4)]).astype(np.uint8)
    rgb = np.repeat(frames[..., None], 3, -1)
    flow = raft_flows(rgb, net, iterations=4)
    assert flow.shape == (1, 60, 85, 2) and torch.isfinite(flow).all()
    F = torch.nn.functional
    a, b = Raft_Small_Weights.C_T_V2.transforms()(*torch.from_numpy(rgb).permute(0, 3, 1, 2)[:, None])
    a, b = (F.pad(F.interpolate(x, size=(128, 181), mode="bilinear"), (1, 2, 0, 0), mode="replicate") for x in (a, b))
    with torch.no_grad():
        ref = reference(a, b, num_flow_updates=4)[-1][..., 1:182]
    ref = F.interpolate(ref, size=(60, 85), mode="bilinear") * torch.tensor([85 / 181, 60 / 128])[None, :, None, None]
    torch.testing.assert_close(flow, median3x3(ref).permute(0, 2, 3, 1), atol=1e-4, rtol=1e-4)
    # Gray frames are repeated to RGB: the same flow.
    torch.testing.assert_close(raft_flows(frames, net, iterations=4), flow, atol=0, rtol=0)

    # A corrupt file fails the checksum; random weights only when asked, and recorded.
    (folder / name).write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="checksum"):
        load_raft("raft_small", "C_T_V2")
    meta = build_extractor("trajectory", {**CFG, "flow": "raft", "raft_weights": "random"}, "cpu").metadata()
    assert meta["flow"] == "raft" and meta["random_weights"] is True and meta["flow_weights"]["weights"] == "random"


@pytest.fixture(scope="module")
def motion_set():
    rng = np.random.default_rng(0)
    directions = {0: (-1, 0), 1: (1, 0), 2: (0, 0)}  # left, right, static
    labels = np.arange(24) % 3
    return [motion_clip(i, directions[y], rng) for i, y in enumerate(labels)], labels


def test_trajectories_with_torch_flow_separate_left_right_static(motion_set):
    from sklearn.linear_model import LogisticRegression

    clips, y = motion_set
    ext = build_extractor("trajectory", {**CFG, "flow": "torch"}, "cpu")
    assert ext.metadata()["flow"] == "torch"
    ext.fit(clips[:12])
    x = np.stack([f.pooled for f in ext.extract(clips)])
    assert x.shape == (24, 64) and np.isfinite(x).all()
    with one_thread(ext.device):
        descs = [dense_trajectories(c.frames, {**ext.params, "flow": "torch"}) for c in clips[:6]]
    counts = np.array([len(d["when"]) for d in descs])
    assert counts[y[:6] == 2].max() <= 20 and counts[y[:6] != 2].min() >= 200
    dx_sum = np.array([np.median(d["traj"][:, ::2].sum(1)) for d in descs[:2]])
    assert dx_sum[0] < -0.9 and dx_sum[1] > 0.9  # clip 0 moves left, clip 1 right
    clf = LogisticRegression(max_iter=2000).fit(x[:12], y[:12])
    assert clf.score(x[12:], y[12:]) >= 11 / 12
    # A codebook learnt on torch flow refuses to describe Farneback flow.
    with pytest.raises(ValueError, match="torch flow"):
        build_extractor("trajectory", {**CFG, "flow": "farneback"}, "cpu").load_state_dict(ext.state_dict())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_flow_and_tracking_on_cuda(motion_set):
    clips, _ = motion_set
    frames = clips[1].frames
    cpu, gpu = compute_flows(frames, "torch", "cpu"), compute_flows(frames, "torch", "cuda")
    assert gpu.device.type == "cuda"
    assert (cpu - gpu.cpu()).abs().mean() < 1e-3
    ext = build_extractor("trajectory", {**CFG, "flow": "auto"}, "cuda")
    assert ext.metadata()["flow"] in ("torch", "raft")
    d_gpu = dense_trajectories(frames, {**ext.params, "flow": "torch"}, "cuda")
    d_cpu = dense_trajectories(frames, {**ext.params, "flow": "torch"}, "cpu")
    assert abs(len(d_gpu["when"]) - len(d_cpu["when"])) <= 0.02 * len(d_cpu["when"])
