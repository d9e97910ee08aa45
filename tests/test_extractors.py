"""Extractor tests: shapes, dtypes, determinism, batch invariance, the real weight-loading paths
(state dicts saved by the test into a temporary torch hub cache), the VGGish front end against
an independent numpy computation, MiniLM similarity ranking, fitted extractors' state round trip.
The trajectory separation test is in tests/test_extractors_trajectory.py."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from extractors import FAMILIES, Features, WeightsNotFound, build_extractor, embed_texts
from pipeline.decode import Clip
from pipeline.demo import moving_stripes, tone


def make_clip(i: int, audio=True, title="a skateboard trick in the park", frames=6, size=(120, 160), seconds=2.0):
    f = moving_stripes(frames, size[0], size[1], color=(40 * i % 255, 120, 200), velocity=(2, 0), seed=i)
    wave = tone(seconds, 16000, 300.0 + 70 * i, seed=i) if audio else None
    return Clip(video_id=f"v{i}", frames=f, frame_times=np.arange(frames) / 25.0, frame_indices=np.arange(frames),
                audio=wave, sample_rate=16000, title=title, duration=seconds, fps=25.0)


@pytest.fixture(scope="module")
def clips():
    return [make_clip(0), make_clip(1, audio=False, title=None), make_clip(2, title="   "),
            make_clip(3, size=(96, 128), title="cooking dinner with a pan", seconds=0.5)]


def check_features(feats, clips, dim, missing=()):
    assert len(feats) == len(clips)
    for i, f in enumerate(feats):
        if i in missing:
            assert f is None
            continue
        assert isinstance(f, Features)
        assert f.pooled.shape == (dim,) and f.pooled.dtype == np.float32
        assert np.isfinite(f.pooled).all()
        if f.sequence is not None:
            assert f.sequence.ndim == 2 and f.sequence.shape[1] == dim and f.sequence.dtype == np.float32


def assert_same(a, b, atol=1e-5):
    assert (a is None) == (b is None)
    if a is not None:
        np.testing.assert_allclose(a.pooled, b.pooled, atol=atol, rtol=1e-4)
        if a.sequence is not None:
            np.testing.assert_allclose(a.sequence, b.sequence, atol=atol, rtol=1e-4)


def test_every_yaml_builds_a_known_family():
    from pipeline.config import load_config

    cfg = load_config()
    for name in ("visual", "audio", "text", "trajectory", "audio_dae", "text_doc2vec"):
        assert cfg.extractors[name].family in FAMILIES
    with pytest.raises(ValueError, match="family"):
        build_extractor("x", {"family": "nope"}, "cpu")


# -- visual ------------------------------------------------------------------------------------


def save_with_hash(state: dict, folder, stem: str) -> tuple[str, str]:
    """Save like the published files: <stem>-<sha256 prefix>.pth. Returns (file name, sha256)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    name = f"{stem}-{digest[:8]}.pth"
    tmp.rename(folder / name)
    return name, digest


def test_resnet_loads_weights_from_hub_cache_with_checksum(hub_dir, monkeypatch, clips):
    import torchvision

    torch.manual_seed(123)
    reference = torchvision.models.resnet18().eval()
    name, digest = save_with_hash(reference.state_dict(), hub_dir / "checkpoints", "resnet18")
    w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    monkeypatch.setattr(w.value, "url", f"https://download.pytorch.org/models/{name}")
    ext = build_extractor("visual", {"family": "resnet", "depth": 18, "weights": "IMAGENET1K_V1",
                                     "precision": "fp32"}, "cpu")
    meta = ext.metadata()
    assert meta["sha256"] == digest and meta["random_weights"] is False and meta["dim"] == 512
    feats = ext.extract(clips[:1])
    check_features(feats, clips[:1], 512)
    # The loaded network is the saved one: same penultimate features as the reference model.
    reference.fc = torch.nn.Identity()
    x = w.transforms()(torch.from_numpy(clips[0].frames).permute(0, 3, 1, 2))
    with torch.no_grad():
        expected = reference(x).numpy()
    np.testing.assert_allclose(feats[0].sequence, expected, atol=1e-4, rtol=1e-4)

    # A corrupted file fails the checksum; a missing one names the file and the folder.
    (hub_dir / "checkpoints" / name).write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="checksum"):
        build_extractor("visual", {"family": "resnet", "depth": 18, "weights": "IMAGENET1K_V1"}, "cpu")
    (hub_dir / "checkpoints" / name).unlink()
    with pytest.raises(WeightsNotFound, match=f"{name}.*{hub_dir / 'checkpoints'}"):
        build_extractor("visual", {"family": "resnet", "depth": 18, "weights": "IMAGENET1K_V1"}, "cpu")


def test_resnet_random_is_deterministic_and_batch_invariant(clips):
    cfg = {"family": "resnet", "depth": 18, "weights": "random", "precision": "fp32", "batch_frames": 5}
    a = build_extractor("visual", cfg, "cpu")
    b = build_extractor("visual", cfg, "cpu")
    assert a.metadata()["random_weights"] is True
    batch = a.extract(clips)
    check_features(batch, clips, 512)
    assert batch[0].sequence.shape == (6, 512)
    np.testing.assert_allclose(batch[0].pooled, batch[0].sequence.mean(0), atol=1e-6)
    assert_same(b.extract([clips[3]])[0], batch[3], atol=1e-4)
    assert_same(a.extract([clips[0]])[0], batch[0], atol=1e-4)


# -- audio: VGGish -----------------------------------------------------------------------------
# The published port's parameter names and shapes (harritaylor/torchvggish, vggish-10086976.pth),
# written out here independently of extractors/vggish.py.
PUBLISHED_VGGISH = {
    "features.0.weight": (64, 1, 3, 3), "features.0.bias": (64,),
    "features.3.weight": (128, 64, 3, 3), "features.3.bias": (128,),
    "features.6.weight": (256, 128, 3, 3), "features.6.bias": (256,),
    "features.8.weight": (256, 256, 3, 3), "features.8.bias": (256,),
    "features.11.weight": (512, 256, 3, 3), "features.11.bias": (512,),
    "features.13.weight": (512, 512, 3, 3), "features.13.bias": (512,),
    "embeddings.0.weight": (4096, 12288), "embeddings.0.bias": (4096,),
    "embeddings.2.weight": (4096, 4096), "embeddings.2.bias": (4096,),
    "embeddings.4.weight": (128, 4096), "embeddings.4.bias": (128,),
}


@pytest.fixture(scope="module")
def vggish_state():
    g = torch.Generator().manual_seed(7)
    return {k: torch.randn(s, generator=g) * 0.02 for k, s in PUBLISHED_VGGISH.items()}


def test_vggish_published_state_dict_loads_strictly(hub_dir, monkeypatch, vggish_state, clips):
    import extractors.vggish as vg

    name, digest = save_with_hash(vggish_state, hub_dir / "checkpoints", "vggish")
    monkeypatch.setattr(vg, "VGGISH_URL", f"https://example.invalid/{name}")
    ext = build_extractor("audio", {"family": "vggish", "weights": "published", "precision": "fp32"}, "cpu")
    assert ext.metadata()["sha256"] == digest
    for k, v in ext.model.state_dict().items():
        assert torch.equal(v, vggish_state[k])
    feats = ext.extract(clips)
    check_features(feats, clips, 128, missing={1})
    assert feats[0].sequence.shape == (2, 128)      # 2.0 s -> two 0.96 s examples
    assert feats[3].sequence.shape == (1, 128)      # 0.5 s is padded to one example
    assert_same(ext.extract([clips[0]])[0], feats[0], atol=1e-5)

    # Optional PCA + 8-bit post-processing with a PCA file holding numpy arrays, as published.
    pca = {"pca_eigen_vectors": np.eye(128, dtype=np.float32) * 3, "pca_means": np.zeros((128, 1), np.float32)}
    pca_path = hub_dir / "pca.pth"
    torch.save(pca, pca_path)
    post = build_extractor("audio", {"family": "vggish", "weights": "published", "precision": "fp32",
                                     "postprocess": True, "pca_weights": str(pca_path)}, "cpu")
    q = post.extract(clips[:1])[0].sequence
    expected = np.round((np.clip(3 * feats[0].sequence, -2, 2) + 2) * 255 / 4)
    np.testing.assert_allclose(q, expected, atol=1.0)  # rounding of values computed in another order
    assert q.min() >= 0 and q.max() <= 255


def test_vggish_wrong_keys_are_refused(tmp_path, vggish_state):
    bad = dict(vggish_state)
    bad["embeddings.6.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="Unexpected key"):
        build_extractor("audio", {"family": "vggish", "weights": str(tmp_path / "bad.pth")}, "cpu")


def numpy_vggish_logmel(wave: np.ndarray) -> np.ndarray:
    """The VGGish spec (mel_features.py) in plain numpy, for comparison with the torch front end."""
    win, hop, nfft = 400, 160, 512
    n = 1 + (len(wave) - win) // hop
    frames = np.stack([wave[i * hop:i * hop + win] for i in range(n)]).astype(np.float64)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    spec = np.abs(np.fft.rfft(frames * window, nfft))
    mel = lambda f: 1127.0 * np.log(1 + f / 700.0)
    bins = mel(np.linspace(0, 8000, nfft // 2 + 1))
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    weights = np.zeros((nfft // 2 + 1, 64))
    for i in range(64):
        lo, c, hi = edges[i:i + 3]
        weights[:, i] = np.maximum(0, np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)))
    weights[0] = 0
    logmel = np.log(spec @ weights + 0.01)
    k = len(logmel) // 96
    return logmel[:k * 96].reshape(k, 96, 64)


def test_vggish_frontend_matches_numpy_reference():
    from extractors.vggish import LogMel

    rng = np.random.default_rng(0)
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(33000) / 16000) + 0.05 * rng.standard_normal(33000)).astype(np.float32)
    ours = LogMel()(torch.from_numpy(wave)).numpy()
    ref = numpy_vggish_logmel(wave)
    assert ours.shape == ref.shape == (2, 96, 64)
    np.testing.assert_allclose(ours, ref, atol=2e-3)
    # And the mel bank agrees with librosa's HTK bank where both define the same triangles'
    # peaks: every band's maximum sits at the same FFT bin.
    import librosa

    from extractors.vggish import mel_matrix

    lib = librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=125, fmax=7500, htk=True, norm=None).T
    assert np.abs(mel_matrix().numpy().argmax(0) - lib.argmax(0)).max() <= 1


# -- audio: NMCL spectrogram + stacked DAE -----------------------------------------------------
def test_audio_dae_fit_extract_and_state_round_trip(clips):
    cfg = {"family": "audio_dae", "layer_epochs": 2, "finetune_epochs": 1, "hidden": [64, 48, 32], "code_dim": 16}
    ext = build_extractor("audio_dae", cfg, "cpu")
    assert ext.needs_fit
    with pytest.raises(RuntimeError, match="fit"):
        ext.extract(clips)
    ext.fit(clips)
    feats = ext.extract(clips)
    check_features(feats, clips, 16, missing={1})
    assert feats[0].sequence.shape == (2, 16)  # 2 s of audio -> two 1 s segments
    # The spectrogram is at 22,050 Hz with a 1,024-sample (46 ms) window and 50 % overlap.
    from extractors.audio_dae import spectrogram

    spec = spectrogram(clips[0].audio, 16000)
    assert spec.shape == (1 + (44100 - 1024) // 512, 513)
    other = build_extractor("audio_dae", cfg, "cpu")
    other.load_state_dict(ext.state_dict())
    for a, b in zip(feats, other.extract(clips)):
        assert_same(a, b, atol=1e-6)
    assert_same(other.extract([clips[3]])[0], feats[3], atol=1e-6)
    # Same seed -> same fitted model.
    again = build_extractor("audio_dae", cfg, "cpu")
    again.fit(clips)
    assert_same(again.extract([clips[0]])[0], feats[0], atol=1e-6)


# -- text --------------------------------------------------------------------------------------
def test_minilm_ranks_paraphrase_closer():
    v = embed_texts(["a man plays the guitar", "someone playing a guitar", "a car on a highway"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3


def test_text_extractor_missing_titles_truncation_and_batch(clips):
    ext = build_extractor("text", {"family": "transformer_text", "max_chars": 50, "precision": "fp32"}, "cpu")
    feats = ext.extract(clips)
    check_features(feats, clips, 384, missing={1, 2})  # None title and blank title are missing
    tokens = ext.tokenizer(clips[0].title)["input_ids"]
    assert feats[0].sequence.shape == (len(tokens), 384)
    assert_same(ext.extract([clips[3]])[0], feats[3], atol=1e-5)
    long = make_clip(9, title="x" * 49 + "y" + " and then a very long tail that gets cut")
    cut = make_clip(9, title="x" * 49 + "y")
    assert_same(ext.extract([long])[0], ext.extract([cut])[0], atol=1e-6)
    assert ext.metadata()["sha256"]


def test_doc2vec_fit_deterministic_and_state_round_trip(clips):
    titles = ["skate board trick", "kitchen pan dinner", "pool swim lap", "live band stage", "skate park ollie",
              "chef recipe dinner"]
    corpus = [make_clip(i, title=t, audio=False) for i, t in enumerate(titles)]
    cfg = {"family": "text_doc2vec", "vector_size": 100, "epochs": 5, "infer_epochs": 10}
    cfg["family"] = "doc2vec"
    ext = build_extractor("text_doc2vec", cfg, "cpu")
    ext.fit(corpus)
    feats = ext.extract(clips)
    check_features(feats, clips, 100, missing={1, 2})
    assert_same(ext.extract([clips[3]])[0], feats[3], atol=0)   # alone = in a batch
    other = build_extractor("text_doc2vec", cfg, "cpu")
    other.load_state_dict(ext.state_dict())
    assert_same(other.extract([clips[0]])[0], feats[0], atol=0)
