"""Dense-trajectory features: they must tell apart clips that move left, right, or not at all
(a linear classifier on the pooled vectors is near-perfect), be deterministic, give the same
vector alone or in a batch, and survive a state round trip. Plus one real-data smoke run of the
default extractors on decoded clips of ../shared/data/fight."""
from __future__ import annotations

import numpy as np
import pytest

from extractors import build_extractor
from pipeline.decode import Clip
from pipeline.demo import moving_stripes

CFG = {"family": "dense_trajectory", "codebook_size": 16, "segments": 2}


def motion_clip(i: int, velocity, rng) -> Clip:
    speed = rng.uniform(1.5, 3.5)
    period = int(rng.integers(10, 20))
    color = tuple(int(c) for c in rng.integers(40, 230, 3))
    frames = moving_stripes(12, 96, 128, color, period, (velocity[0] * speed, velocity[1] * speed), seed=i)
    return Clip(video_id=f"m{i}", frames=frames, frame_times=np.arange(12) / 25, frame_indices=np.arange(12),
                audio=None, sample_rate=16000, title=None, duration=12 / 25, fps=25.0)


@pytest.fixture(scope="module")
def motion_set():
    rng = np.random.default_rng(0)
    directions = {0: (-1, 0), 1: (1, 0), 2: (0, 0)}  # left, right, static
    clips, labels = [], []
    for i in range(24):
        y = i % 3
        clips.append(motion_clip(i, directions[y], rng))
        labels.append(y)
    return clips, np.array(labels)


@pytest.fixture(scope="module")
def fitted(motion_set):
    clips, _ = motion_set
    ext = build_extractor("trajectory", CFG, "cpu")
    ext.fit(clips[:12])
    return ext


def test_trajectory_separates_left_right_static(motion_set, fitted):
    from sklearn.linear_model import LogisticRegression

    clips, y = motion_set
    feats = fitted.extract(clips)
    x = np.stack([f.pooled for f in feats])
    assert x.shape == (24, 4 * 16) and x.dtype == np.float32
    assert feats[0].sequence.shape == (2, 64)
    # Tracks start throughout the clip, so every time segment of a moving clip has tracks.
    assert all((np.abs(f.sequence).sum(1) > 0).all() for f, label in zip(feats, y) if label != 2)
    # Static clips: (almost) every track is pruned as static; moving clips keep hundreds.
    from extractors.trajectory import dense_trajectories, one_thread

    with one_thread(fitted.device):
        descs = [dense_trajectories(c.frames, fitted.params) for c in clips]
    counts = np.array([len(d["when"]) for d in descs])
    assert counts[y == 2].max() <= 20 and counts[y != 2].min() >= 200
    # The trajectory-shape descriptor points the way the stripes move (Eq. 2: sum of dx = +-1).
    dx_sum = np.array([np.median(d["traj"][:, ::2].sum(1)) for d in descs[:2]])
    assert y[0] == 0 and y[1] == 1 and dx_sum[0] < -0.9 and dx_sum[1] > 0.9
    # Train on the clips the codebook was fit on, test on the 12 others.
    clf = LogisticRegression(max_iter=2000).fit(x[:12], y[:12])
    assert clf.score(x[12:], y[12:]) >= 11 / 12


def test_trajectory_deterministic_batch_invariant_and_state(motion_set, fitted):
    clips, _ = motion_set
    batch = fitted.extract(clips[12:16])
    alone = fitted.extract([clips[13]])[0]
    np.testing.assert_array_equal(alone.pooled, batch[1].pooled)
    np.testing.assert_array_equal(alone.sequence, batch[1].sequence)
    other = build_extractor("trajectory", CFG, "cpu")
    other.load_state_dict(fitted.state_dict())
    np.testing.assert_array_equal(other.extract([clips[13]])[0].pooled, alone.pooled)
    refit = build_extractor("trajectory", CFG, "cpu")
    refit.fit(clips[:12])
    np.testing.assert_allclose(refit.extract([clips[13]])[0].pooled, alone.pooled, atol=1e-6)
    with pytest.raises(ValueError, match="codebook_size"):
        build_extractor("trajectory", {**CFG, "codebook_size": 32}, "cpu").load_state_dict(fitted.state_dict())


def test_trajectory_vlad_and_short_clips(motion_set):
    clips, _ = motion_set
    ext = build_extractor("trajectory", {**CFG, "encoding": "vlad", "codebook_size": 4}, "cpu")
    ext.fit(clips[:6])
    f = ext.extract(clips[:1])[0]
    assert f.pooled.shape == (4 * (16 + 72 + 64 + 64),) == (ext.dim,)
    np.testing.assert_allclose(np.linalg.norm(f.pooled), 2.0, atol=1e-4)  # 4 unit blocks: sqrt(4)
    short = Clip(video_id="s", frames=clips[0].frames[:5], frame_times=np.arange(5), frame_indices=np.arange(5),
                 audio=None, sample_rate=16000, title=None, duration=0.2, fps=25.0)
    assert ext.extract([short]) == [None]  # fewer than L+1 frames: nothing to track
    with pytest.raises(ValueError, match="descriptors"):
        build_extractor("trajectory", {**CFG, "codebook_size": 10_000}, "cpu").fit(clips[:2])


def test_default_extractors_on_real_clips(shared_data):
    """The four default modalities on three decoded real clips (random visual/audio weights:
    pretrained files are not available offline here)."""
    from pipeline.config import load_config
    from pipeline.decode import DecodeOptions, decode_video

    paths = sorted((shared_data / "fight").rglob("*.mp4"))[:3]
    opts = DecodeOptions(num_frames=16, short_side=224)
    clips = [decode_video(p, opts, video_id=p.stem, title=t) for p, t in zip(paths, ["two men fight", None, "a street"])]
    cfg = load_config(overrides=["extractors.visual.weights=random", "extractors.visual.depth=18",
                                 "extractors.audio.weights=random",
                                 "extractors.trajectory.codebook_size=8"])
    for name in cfg.extract.modalities:
        ext = build_extractor(name, cfg.extractors[name], "cpu")
        if ext.needs_fit:
            ext.fit(clips)
        feats = ext.extract(clips)
        assert len(feats) == 3
        for clip, f in zip(clips, feats):
            missing = (name == "audio" and clip.audio is None) or (name == "text" and clip.title is None)
            assert (f is None) == missing, (name, clip.video_id)
            if f is not None:
                assert f.pooled.shape == (ext.dim,) and np.isfinite(f.pooled).all()
        meta = ext.metadata()
        assert meta["dim"] == ext.dim and "versions" in meta
