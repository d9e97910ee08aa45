"""Per-frame families: image_text (CLIP / SigLIP through transformers, OpenCLIP, timm) with its text
tower and zero-shot prediction, and scene scores (Sun et al. Eq. 1-2). Every model is tiny and
random, saved by the test (save_pretrained, a state-dict file, an OpenCLIP model config), so the
real loading paths run without downloads."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from extractors import WeightsNotFound, build_extractor
from pipeline.decode import Clip
from pipeline.demo import moving_stripes

WORDS = "a video of fight nofight class0 class1 cat dog person running cooking".split()


def make_clip(i: int, frames=4, size=(40, 56), seconds=2.0) -> Clip:
    f = moving_stripes(frames, size[0], size[1], color=(50 * i % 255, 90, 200), velocity=(2, 1), seed=i)
    t = (np.arange(frames) + 0.5) * seconds / frames
    return Clip(video_id=f"v{i}", frames=f, frame_times=t, frame_indices=np.arange(frames), audio=None,
                sample_rate=16000, title=None, duration=seconds, fps=25.0)


@pytest.fixture(scope="module")
def clips():
    return [make_clip(0), make_clip(1, frames=2, size=(48, 40)), make_clip(2, frames=3, seconds=0.6)]


def save_tokenizer(folder) -> int:
    """A word-level fast tokenizer ("</s>" appended) saved where AutoTokenizer finds it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "<s>": 2, "</s>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                            eos_token="</s>").save_pretrained(folder)
    return len(vocab)


def save_tiny_tower(kind: str, folder) -> None:
    """A random CLIP or SigLIP (both towers) + image processor + tokenizer, 32 px images."""
    import transformers as t

    n = save_tokenizer(folder)
    text = dict(vocab_size=n, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=12)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    if kind == "clip":
        cfg = t.CLIPConfig(text_config={**text, "eos_token_id": 3, "pad_token_id": 0, "bos_token_id": 2, "projection_dim": 8},
                           vision_config={**vision, "projection_dim": 8}, projection_dim=8)
        t.CLIPModel(cfg).save_pretrained(folder)
        t.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    else:
        t.SiglipModel(t.SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(folder)
        t.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    for kind in ("clip", "siglip"):
        save_tiny_tower(kind, root / kind)
    return root


def check(feats, clips, dim, normalized=True):
    for f, c in zip(feats, clips):
        assert f.sequence.shape == (len(c.frames), dim) and f.sequence.dtype == np.float32
        assert f.pooled.shape == (dim,) and f.pooled.dtype == np.float32
        np.testing.assert_allclose(f.pooled, f.sequence.mean(0), rtol=1e-5, atol=1e-6)
        if normalized:
            np.testing.assert_allclose(np.linalg.norm(f.sequence, axis=1), 1.0, atol=1e-5)
        assert f.times.shape == (len(c.frames), 2)
        assert np.all(np.diff(f.times[:, 0]) > 0) and f.times.min() >= 0 and f.times.max() <= c.duration + 1e-9


# -- image_text --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,dim", [("clip", 8), ("siglip", 16)])
def test_hf_towers_load_embed_and_are_batch_invariant(towers, clips, kind, dim, one_thread):
    import transformers as t

    ext = build_extractor("image_text", {"family": "image_text", "backend": kind, "model": str(towers / kind),
                                         "precision": "fp32"}, "cpu")
    assert ext.dim == dim and ext.metadata()["random_weights"] is False
    feats = ext.extract(clips)
    check(feats, clips, dim)
    np.testing.assert_allclose(ext.extract([clips[1]])[0].sequence, feats[1].sequence, atol=1e-5)
    # The loaded tower is the saved one: same embedding as the full model's own image features.
    full = (t.CLIPModel if kind == "clip" else t.SiglipModel).from_pretrained(towers / kind).eval()
    x = ext.prep(torch.from_numpy(clips[0].frames).permute(0, 3, 1, 2))
    with torch.no_grad():
        ref = full.get_image_features(pixel_values=x)
        ref = getattr(ref, "pooler_output", ref)
    np.testing.assert_allclose(feats[0].sequence, torch.nn.functional.normalize(ref, dim=-1).numpy(), atol=1e-5)
    # The text tower lands in the same space: unit vectors of the same width.
    text = ext.embed_texts(["a video of cat", "a video of dog"])
    assert text.shape == (2, dim) and np.allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(text[0], text[1])


def test_missing_hf_tower_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFound, match="not-a-real/clip-model") as e:
        build_extractor("image_text", {"family": "image_text", "model": "not-a-real/clip-model"}, "cpu")
    assert "\n" not in str(e.value) and "cache" in str(e.value)


def tiny_open_clip(folder, name: str) -> None:
    """Register a one-layer open_clip model config `name` (random weights only)."""
    import open_clip

    cfg = {"embed_dim": 8, "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "patch_size": 8, "head_width": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder / f"{name}.json")


def test_open_clip_and_timm_backends(tmp_path, clips, one_thread):
    tiny_open_clip(tmp_path, "tiny-vit-test")
    oc = build_extractor("image_text", {"family": "image_text", "backend": "open_clip", "model": "tiny-vit-test",
                                        "weights": "random", "precision": "fp32"}, "cpu")
    assert oc.dim == 8 and oc.metadata()["random_weights"] is True
    check(oc.extract(clips), clips, 8)
    assert oc.embed_texts(["a video of cat"]).shape == (1, 8)
    # timm: any model by name, classifier removed; features are not normalised.
    tm = build_extractor("image_text", {"family": "image_text", "backend": "timm", "model": "test_efficientnet",
                                        "weights": "random", "precision": "fp32"}, "cpu")
    feats = tm.extract(clips)
    check(feats, clips, tm.dim, normalized=False)
    assert tm.dim == tm.model.num_features
    with pytest.raises(ValueError, match="no text tower"):
        tm.embed_texts(["a video of cat"])


def test_open_clip_weights_spec_names_the_hub_file_and_folder_without_downloading(tmp_path, monkeypatch):
    """open_clip's own table of (model, tag) -> hf_hub gives the repo and file `weights list` shows
    (and timm's table for the timm backend)."""
    from pipeline.weights import describe

    from extractors.image_text import ImageTextExtractor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    spec = ImageTextExtractor.weights_spec
    (openai,) = spec({"family": "image_text", "backend": "open_clip"})   # ViT-B-32, tag openai (the YAML's)
    assert (openai.kind, openai.name) == ("hf", "timm/vit_base_patch32_clip_224.openai")
    assert openai.files == ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    row = describe(openai)
    assert row["file"] == "timm/vit_base_patch32_clip_224.openai: open_clip_model.safetensors | open_clip_pytorch_model.bin"
    assert row["folder"] == str(tmp_path / "hf" / "hub") and row["present"] == "no"
    calls = []

    def snapshot(repo, **kw):   # `weights fetch` asks the hub for these two files only, not the whole repo
        calls.append((repo, kw["allow_patterns"]))
        if kw["local_files_only"]:
            raise FileNotFoundError(repo)
        return str(tmp_path)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot)
    from pipeline.weights import fetch

    assert [state for _, state in fetch([openai])] == ["downloaded"]
    assert calls[-1] == ("timm/vit_base_patch32_clip_224.openai", list(openai.files))
    (laion,) = spec({"family": "image_text", "backend": "open_clip", "pretrained": "laion2b_s34b_b79k"})
    assert laion.name == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    own = tmp_path / "mine.safetensors"
    own.write_bytes(b"0")
    assert [(f.kind, f.name) for f in spec({"family": "image_text", "backend": "open_clip", "pretrained": str(own)})] \
        == [("file", str(own))]
    assert spec({"family": "image_text", "backend": "open_clip", "weights": "random"}) == []
    (timm_hub,) = spec({"family": "image_text", "backend": "timm"})      # timm's own table, the same way
    assert (timm_hub.name, timm_hub.files) == ("timm/vit_base_patch16_clip_224.openai",
                                               ("model.safetensors", "pytorch_model.bin"))
    assert not (tmp_path / "hf").exists()                                # nothing was downloaded


def test_open_clip_tag_trained_with_quick_gelu_builds_it(tmp_path, monkeypatch, one_thread):
    """OpenAI's tags were trained with QuickGELU; open_clip itself only warns on a mismatch."""
    from open_clip import pretrained as oc_pretrained
    from open_clip.transformer import QuickGELU

    tiny_open_clip(tmp_path, "tiny-gelu-test")
    monkeypatch.setitem(oc_pretrained._PRETRAINED, "tiny-gelu-test", {"openai": {"hf_hub": "x/y/", "quick_gelu": True}})
    acts = lambda ext: {type(m) for m in ext.model.modules() if "GELU" in type(m).__name__}   # noqa: E731
    oc = build_extractor("image_text", {"family": "image_text", "backend": "open_clip", "model": "tiny-gelu-test",
                                        "weights": "random", "precision": "fp32"}, "cpu")
    assert acts(oc) == {QuickGELU}
    plain = build_extractor("image_text", {"family": "image_text", "backend": "open_clip", "model": "tiny-gelu-test",
                                           "open_clip_pretrained": "other", "weights": "random"}, "cpu")
    assert acts(plain) == {torch.nn.GELU}


def test_image_text_config_is_strict_and_defaults_come_from_the_yaml(towers):
    from pipeline.config import ConfigError

    from extractors.image_text import ImageTextExtractor, model_and_pretrained

    with pytest.raises(ConfigError, match="batch_frame.*batch_frames"):
        build_extractor("image_text", {"family": "image_text", "batch_frame": 8}, "cpu")
    resolved = ImageTextExtractor.resolved({"family": "image_text", "backend": "timm"})
    assert model_and_pretrained(resolved) == ("vit_base_patch16_clip_224.openai", None)   # backend_models
    resolved = ImageTextExtractor.resolved({"family": "image_text", "backend": "open_clip"})
    assert model_and_pretrained(resolved) == ("ViT-B-32", "openai")
    ext = build_extractor("image_text", {"family": "image_text", "model": str(towers / "clip")}, "cpu")
    assert ext.batch_frames == 64 and ext.cfg["zero_shot"]["template"] == "a video of {label}"


# -- scene -------------------------------------------------------------------------------------
def test_scene_fusion_matches_eq_1_2_written_out(tmp_path, clips, one_thread):
    """Places365-style: a state-dict file with 5 classes and its label file, a 2 x 3 grid."""
    import torchvision

    torch.manual_seed(3)
    net = torchvision.models.mobilenet_v3_small(num_classes=5).eval()
    torch.save(net.state_dict(), tmp_path / "places_tiny.pth")
    (tmp_path / "classes.txt").write_text("\n".join(f"place{i}" for i in range(5)) + "\n")
    cfg = {"family": "scene", "global_arch": "mobilenet_v3_small", "local_arch": "mobilenet_v3_small",
           "global_weights": str(tmp_path / "places_tiny.pth"), "local_weights": str(tmp_path / "places_tiny.pth"),
           "classes": str(tmp_path / "classes.txt"), "grid": [2, 3], "fusion": [3, 1], "input_size": 32,
           "precision": "fp32"}
    ext = build_extractor("scene", cfg, "cpu")
    assert ext.dim == 5 and ext.labels[0] == "place0" and ext.metadata()["random_weights"] is False
    feats = ext.extract(clips)
    check(feats, clips, 5, normalized=False)
    for f in feats:
        np.testing.assert_allclose(f.sequence.sum(1), 1.0, atol=1e-5)   # a distribution per frame
    # Eq. 1-2 directly: mean of the 6 cells' softmax, then 0.75 global + 0.25 local.
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def probs(img):   # (N, 3, h, w) uint8
        x = torch.nn.functional.interpolate(img.float() / 255, size=(32, 32), mode="bilinear", antialias=True)
        with torch.no_grad():
            return net((x - mean) / std).softmax(-1)

    x = torch.from_numpy(clips[0].frames).permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    ys, xs = [0, h // 2, h], [0, round(w / 3), round(2 * w / 3), w]
    local = sum(probs(x[..., ys[i]:ys[i + 1], xs[j]:xs[j + 1]]) for i in range(2) for j in range(3)) / 6
    expected = 0.75 * probs(x) + 0.25 * local
    np.testing.assert_allclose(feats[0].sequence, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(ext.extract([clips[1]])[0].sequence, feats[1].sequence, atol=1e-5)
    # A label file that does not fit the weights is refused.
    (tmp_path / "classes.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="5 classes"):
        build_extractor("scene", cfg, "cpu")


def test_scene_default_weights_missing_offline_name_file_and_folder(hub_dir):
    with pytest.raises(WeightsNotFound, match=f"vgg16-.*{hub_dir / 'checkpoints'}"):
        build_extractor("scene", {"family": "scene"}, "cpu")


# -- zero-shot ---------------------------------------------------------------------------------
def test_zero_shot_probabilities_match_the_formula():
    from pipeline.zeroshot import zero_shot_probs

    rng = np.random.default_rng(0)
    v, t = rng.normal(size=(3, 4)), rng.normal(size=(2, 4))
    vn, tn = v / np.linalg.norm(v, axis=1, keepdims=True), t / np.linalg.norm(t, axis=1, keepdims=True)
    logits = 10 * vn @ tn.T
    np.testing.assert_allclose(zero_shot_probs(v, t, 10.0), np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(zero_shot_probs(v, t, 10.0, -2.0, sigmoid=True), 1 / (1 + np.exp(-(logits - 2))))


def test_zero_shot_end_to_end_on_the_demo_set(demo_dataset, towers, tmp_path):
    from pipeline.config import load_config
    from pipeline.extract import run_extract
    from pipeline.scan import run_scan
    from pipeline.zeroshot import read_labels, run_zero_shot

    out = tmp_path / "out"
    cfg = load_config(overrides=["extract.modalities=[image_text]", f"extractors.image_text.model={towers / 'clip'}",
                                 "extractors.image_text.precision=fp32", "decode.workers=0", "decode.num_frames=2",
                                 "decode.audio=false"])
    run_scan(cfg, out, demo_dataset / "videos")
    run_extract(cfg, out, progress=False)
    (tmp_path / "labels.txt").write_text("cat\ndog\n\nperson\ncat\n")
    labels = read_labels(tmp_path / "labels.txt")
    assert labels == ["cat", "dog", "person"]
    path = run_zero_shot(cfg, out, labels, top_k=2)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    videos = sorted((demo_dataset / "videos").rglob("*.mp4"))
    assert len(rows) == len(videos) > 0
    for r in rows:
        assert len(r["labels"]) == 2 and {lab for lab, _ in r["labels"]} <= set(labels)
        assert r["labels"][0][1] >= r["labels"][1][1]
    meta = json.loads(path.with_suffix(".meta.json").read_text())
    assert meta["prompts"] == ["a video of cat", "a video of dog", "a video of person"]
    assert meta["tower"]["family"] == "image_text"
    # The CLI: predict --zero-shot --labels-from LIST, the tower rebuilt from the store's config.
    from typer.testing import CliRunner

    from pipeline.cli import app

    cli_out = tmp_path / "cli.jsonl"
    r = CliRunner().invoke(app, ["predict", "--out", str(out), "--zero-shot", "--labels-from", str(tmp_path / "labels.txt"),
                                 "--template", "a {label}", "--top-k", "1", "--output", str(cli_out)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in cli_out.read_text().splitlines()]
    assert len(rows) == len(videos) and all(len(r["labels"]) == 1 for r in rows)
    assert json.loads(cli_out.with_suffix(".meta.json").read_text())["prompts"][0] == "a cat"
    r = CliRunner().invoke(app, ["predict", "--out", str(out), "--zero-shot"])
    assert r.exit_code != 0 and "--labels-from" in str(r.exception)   # main() prints it as one line, exit 2
