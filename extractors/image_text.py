"""Frame embeddings from image-text towers and any timm backbone, one vector per frame + their mean.

    backend     model (YAML `model:`)                       output per frame
    clip        CLIPVisionModelWithProjection, any id/folder  image_embeds, L2-normalised (512 for ViT-B/32)
    siglip      SiglipVisionModel, any id/folder              pooler_output (MAP head), L2-normalised
    open_clip   open_clip model name + `pretrained:` tag/file  encode_image, L2-normalised
    timm        any timm model name (num_classes=0)           the pooled backbone features (not normalised)

Default: clip, openai/clip-vit-base-patch32 (video_features' CLIP default). Frames are the clip's
uniform frames (`clip.frames`, times from `frame_spans`), or a decode view named in `view:`
(e.g. {kind: keyframes, num_frames: 8}). Preprocessing is each model's own recipe (the HF image
processor's size / crop / mean / std, open_clip's preprocess config, timm's data config), run
batched on uint8 tensors on the device instead of through PIL.

`embed_texts(texts)` runs the matching text tower (CLIPTextModelWithProjection, SiglipTextModel
with max-length padding as SigLIP was trained, open_clip's encode_text), L2-normalised, in the
same space as the frames: pipeline/zeroshot.py scores videos against label prompts with it.
`logit_scale()` (and `logit_bias()` for SigLIP) are the towers' learnt temperature.

Weights: HF ids come from the Hugging Face cache (HF_HOME/hub; offline: HF_HUB_OFFLINE=1, only the
cache), a local folder never touches the network; absent -> WeightsNotFound naming the repo and the
cache folder. open_clip tags and timm `pretrained: true` also read the HF cache; a file path loads
a local state dict. `weights: random` builds the architecture untrained (HF: the folder's config,
or the library default config when the id is not on disk), recorded as random_weights: true.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import Extractor, WeightsNotFound, autocast, resolve_precision, sha256_file
from .video3d import frames_and_times, rows_to_features

BACKENDS = ("clip", "siglip", "open_clip", "timm")


class Prep:
    """Resize (short side, or exact (h, w)), centre crop, scale to [0, 1], normalise: the image
    processors' recipe on a (N, 3, H, W) uint8 tensor."""

    def __init__(self, resize, crop, mean, std, interpolation="bicubic"):
        from torchvision.transforms import InterpolationMode

        self.resize, self.crop = resize, crop
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        self.mode = InterpolationMode(str(interpolation).lower())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torchvision.transforms.v2.functional as TF

        x = TF.resize(x, self.resize, interpolation=self.mode, antialias=True)
        if self.crop:
            x = TF.center_crop(x, self.crop)
        x = x.float() / 255.0
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def __repr__(self):
        return f"Prep(resize={self.resize}, crop={self.crop}, mean={self.mean.flatten().tolist()}, " \
               f"std={self.std.flatten().tolist()}, interpolation={self.mode.value})"


def _hf_offline(name: str) -> bool:
    return Path(name).expanduser().is_dir() or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") \
        or os.environ.get("MICROVIDEO_OFFLINE", "").lower() in ("1", "true", "yes")


def hf_load(cls, name: str, revision: str | None = None, **kw):
    """`cls.from_pretrained(name)` from a folder or the HF cache; WeightsNotFound when absent offline."""
    from huggingface_hub.constants import HF_HUB_CACHE
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a tower read from a full checkpoint lists the other tower's keys
    try:
        return cls.from_pretrained(name, revision=revision, local_files_only=_hf_offline(name), **kw)
    except OSError as e:
        raise WeightsNotFound(
            f"{name} is not a local folder and is not in the Hugging Face cache {HF_HUB_CACHE} "
            f"({str(e).splitlines()[0]}); fetch it on a machine with internet (`run_pipeline.py weights fetch`, "
            f"or huggingface-cli download {name}) and copy the cache, or set `weights: random`") from e
    finally:
        hf_logging.set_verbosity(verbosity)


def _hf_classes(backend: str):
    import transformers as t

    if backend == "clip":
        return t.CLIPVisionModelWithProjection, t.CLIPTextModelWithProjection, t.CLIPImageProcessor, t.CLIPVisionConfig
    return t.SiglipVisionModel, t.SiglipTextModel, t.SiglipImageProcessor, t.SiglipVisionConfig


def _hf_prep(processor) -> Prep:
    from PIL import Image

    size = processor.size
    resize = [size["height"], size["width"]] if "height" in size else size["shortest_edge"]
    crop = None
    if getattr(processor, "do_center_crop", False):
        crop = [processor.crop_size["height"], processor.crop_size["width"]]
    mode = {Image.Resampling.BICUBIC: "bicubic", Image.Resampling.BILINEAR: "bilinear"}.get(
        Image.Resampling(processor.resample), "bilinear")
    return Prep(resize, crop, processor.image_mean, processor.image_std, mode)


def _timm_prep(model) -> Prep:
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    crop = list(cfg["input_size"][1:])
    resize = int(crop[0] / cfg.get("crop_pct", 1.0)) if cfg.get("crop_mode", "center") == "center" else crop
    return Prep(resize, crop, cfg["mean"], cfg["std"], cfg["interpolation"])


def open_clip_files(model: str, pretrained: str) -> list:
    """What open_clip reads for `create_model(model, pretrained=...)`, without loading it: a local
    file, or the tag's Hugging Face repo and file. open_clip knows each (model, tag) pair's
    `hf_hub` ("org/repo/file", or "org/repo/" for its default file) and, with huggingface_hub
    installed, always loads from the hub cache, trying the .safetensors twin of a .bin first."""
    from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives, get_pretrained_cfg

    from pipeline.weights import hf_repo, local_file

    if Path(pretrained).expanduser().is_file():
        return [local_file(pretrained)]
    tag = get_pretrained_cfg(model, pretrained)
    if not tag.get("hf_hub"):   # not a tag of this model: listed as the file it would have to be
        return [local_file(pretrained)]
    repo, name = os.path.split(tag["hf_hub"])
    name = name or HF_WEIGHTS_NAME
    return [hf_repo(repo, files=[*_get_safe_alternatives(name), name])]   # open_clip's own twin rule


def timm_files(model: str) -> list:
    """The hub weights `timm.create_model(model, pretrained=True)` reads: the model tag's HF repo
    (its file, .safetensors twin first, as timm tries them) or its URL (torch hub cache)."""
    import timm.models
    from timm.models._hub import HF_WEIGHTS_NAME, _get_safe_alternatives

    from pipeline.weights import hf_repo, torch_file

    cfg = timm.models.get_pretrained_cfg(model)
    if cfg is None:   # not a timm model name: create_model says so
        return []
    if cfg.hf_hub_id:
        name = cfg.hf_hub_filename or HF_WEIGHTS_NAME
        return [hf_repo(cfg.hf_hub_id, files=[*_get_safe_alternatives(name), name])]
    return [torch_file(cfg.url)] if cfg.url else []


def model_and_pretrained(cfg) -> tuple[str, str | None]:
    """(model name, open_clip tag / timm file) of a resolved config: `model: null` is the
    backend's entry in `backend_models`, open_clip's `pretrained: null` is `open_clip_pretrained`."""
    backend = cfg["backend"]
    if backend not in BACKENDS:
        raise ValueError(f"image_text backend must be one of {BACKENDS}, got {backend!r}")
    model = str(cfg["model"] or cfg["backend_models"][backend])
    pretrained = cfg["pretrained"] or (cfg["open_clip_pretrained"] if backend == "open_clip" else None)
    return model, (str(pretrained) if pretrained else None)


class ImageTextExtractor(Extractor):
    family = "image_text"
    defaults = "image_text"   # configs/extractors/image_text.yaml declares every key read below

    @classmethod
    def weights_spec(cls, cfg):
        from pipeline.weights import hf_repo, local_file

        cfg = cls.resolved(cfg)
        backend = cfg["backend"]
        model, pretrained = model_and_pretrained(cfg)
        if cfg["weights"] == "random":
            return []
        if backend in ("clip", "siglip"):
            return [local_file(model)] if Path(model).expanduser().is_dir() else [hf_repo(model, cfg["revision"])]
        if backend == "open_clip":
            return open_clip_files(model, pretrained)
        return [local_file(pretrained)] if pretrained else timm_files(model)

    def __init__(self, cfg, device="cpu", seed=None):
        super().__init__(cfg, device, seed=seed)
        self.backend = str(self.cfg["backend"])
        if self.backend not in BACKENDS:
            raise ValueError(f"image_text backend must be one of {BACKENDS}, got {self.backend!r}")
        self.model_name, self.pretrained = model_and_pretrained(self.cfg)
        self.revision = self.cfg["revision"]
        self.random = str(self.cfg["weights"]) == "random"
        self.batch_frames = int(self.cfg["batch_frames"])
        self.precision = resolve_precision(self.cfg["precision"], self.device)
        self.view = self.cfg["view"]
        self.text_model = self.tokenizer = None
        self.weights_id, self.sha256 = "random" if self.random else self.model_name, None
        getattr(self, f"_load_{'hf' if self.backend in ('clip', 'siglip') else self.backend}")()
        self.model = self.model.eval().to(self.device)
        self.normalize = self.backend != "timm"

    # -- loading, one method per backend -------------------------------------------------------
    def _load_hf(self):
        vision_cls, _, proc_cls, config_cls = _hf_classes(self.backend)
        local = Path(self.model_name).expanduser().is_dir()
        if self.random:
            config = hf_load(config_cls, self.model_name, self.revision) if local else config_cls()
            with torch.random.fork_rng():
                torch.manual_seed(self.seed)
                self.model = vision_cls(config)
            processor = hf_load(proc_cls, self.model_name, self.revision) if local else proc_cls()
        else:
            self.model = hf_load(vision_cls, self.model_name, self.revision)
            processor = hf_load(proc_cls, self.model_name, self.revision)
            self.weights_id = f"{self.model_name}@{getattr(self.model.config, '_commit_hash', None) or 'local'}"
            for f in ("model.safetensors", "pytorch_model.bin"):
                if local and (Path(self.model_name) / f).is_file():
                    self.sha256 = sha256_file(Path(self.model_name) / f)
                    break
        self.prep = _hf_prep(processor)
        self.dim = int(getattr(self.model.config, "projection_dim", None) or self.model.config.hidden_size)

    def _load_open_clip(self):
        import open_clip

        from open_clip.pretrained import get_pretrained_cfg

        pretrained = None if self.random else self.pretrained
        # A tag trained with QuickGELU (OpenAI's) needs it in the model too; open_clip only warns.
        quick_gelu = bool(get_pretrained_cfg(self.model_name, self.pretrained).get("quick_gelu"))
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            try:
                self.model = open_clip.create_model(self.model_name, pretrained=pretrained,
                                                    force_quick_gelu=quick_gelu)
            except RuntimeError as e:  # open_clip raises RuntimeError for a missing pretrained file / tag
                raise WeightsNotFound(f"open_clip {self.model_name} pretrained={pretrained!r} is not available "
                                      f"({str(e).splitlines()[0]}); set `weights: random` or give a file") from e
        if pretrained:
            self.weights_id = f"open_clip.{self.model_name}.{pretrained}"
            if Path(str(pretrained)).is_file():
                self.sha256 = sha256_file(pretrained)
        pc = open_clip.get_model_preprocess_cfg(self.model)
        self.prep = Prep(pc["size"][0], list(pc["size"]), pc["mean"], pc["std"], pc["interpolation"])
        self.dim = int(self.model.text_projection.shape[1] if self.model.text_projection is not None
                       else self.model.visual.output_dim)

    def _load_timm(self):
        import timm

        weights = self.pretrained or ""   # a state-dict file; none = the model's own hub weights
        kw = {}
        if not self.random and weights:
            if not Path(weights).expanduser().is_file():
                raise WeightsNotFound(f"timm pretrained file {weights} does not exist (give a state-dict file, "
                                      "or pretrained: null for the model's hub weights)")
            kw = {"pretrained_cfg_overlay": {"file": weights}}
            self.sha256 = sha256_file(weights)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            try:
                self.model = timm.create_model(self.model_name, pretrained=not self.random, num_classes=0, **kw)
            except (OSError, RuntimeError) as e:
                raise WeightsNotFound(f"timm {self.model_name} pretrained weights are not in the Hugging Face "
                                      f"cache or cannot be fetched ({str(e).splitlines()[0]}); "
                                      "give `pretrained: FILE` or set `weights: random`") from e
        if not self.random:
            self.weights_id = f"timm.{self.model_name}" + (f" ({weights})" if kw else "")
        self.prep = _timm_prep(self.model)
        self.dim = int(self.model.num_features)

    # -- images ----------------------------------------------------------------------------------
    def views(self):
        if not self.view:
            return {}
        from pipeline.decode import View

        return {"frames": View(**self.view)}

    def frames_of(self, clip) -> tuple[np.ndarray, np.ndarray]:
        """(frames (T, H, W, 3) uint8, times (T, 2)) this extractor embeds for `clip`."""
        return frames_and_times(clip, self.views()["frames"] if self.view else None)

    @torch.inference_mode()
    def embed_images(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, dim) float32 (L2-normalised except timm)."""
        out = []
        for s in range(0, len(frames), self.batch_frames):
            x = torch.from_numpy(np.ascontiguousarray(frames[s:s + self.batch_frames])).to(self.device)
            x = self.prep(x.permute(0, 3, 1, 2))
            with autocast(self.device, self.precision):
                if self.backend == "clip":
                    e = self.model(pixel_values=x).image_embeds
                elif self.backend == "siglip":
                    e = self.model(pixel_values=x).pooler_output
                elif self.backend == "open_clip":
                    e = self.model.encode_image(x)
                else:
                    e = self.model(x.contiguous(memory_format=torch.channels_last))
            e = e.float()
            out.append(F.normalize(e, dim=-1) if self.normalize else e)
        return torch.cat(out).cpu().numpy()

    def extract(self, clips):
        per_clip = [self.frames_of(c) for c in clips]
        idx = [i for i, (f, _) in enumerate(per_clip) if f is not None and len(f)]
        if not idx:
            return [None] * len(clips)
        feats = np.concatenate([self.embed_images(per_clip[i][0]) for i in idx])  # clips differ in frame size
        return rows_to_features(clips, idx, feats, [per_clip[i][1] for i in idx])

    # -- the text tower --------------------------------------------------------------------------
    def _load_text(self):
        if self.backend == "timm":
            raise ValueError(f"timm model {self.model_name} has no text tower: zero-shot needs backend "
                             "clip, siglip or open_clip")
        if self.backend == "open_clip":
            import open_clip

            self.tokenizer = open_clip.get_tokenizer(self.model_name)
            self.text_model = self.model
            return
        from transformers import AutoTokenizer

        _, text_cls, _, _ = _hf_classes(self.backend)
        self.tokenizer = hf_load(AutoTokenizer, self.model_name, self.revision)
        if self.random:
            from transformers import AutoConfig

            full = hf_load(AutoConfig, self.model_name, self.revision)
            with torch.random.fork_rng():
                torch.manual_seed(self.seed + 1)
                self.text_model = text_cls(full.text_config)
        else:
            self.text_model = hf_load(text_cls, self.model_name, self.revision)
        self.text_model = self.text_model.eval().to(self.device)

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 L2-normalised text embeddings in the frames' space."""
        if self.text_model is None:
            self._load_text()
        if self.backend == "open_clip":
            e = self.model.encode_text(self.tokenizer(list(texts)).to(self.device))
        else:
            padding = "max_length" if self.backend == "siglip" else True  # SigLIP was trained on max-length padding
            tok = self.tokenizer(list(texts), padding=padding, truncation=True, return_tensors="pt",
                                 max_length=getattr(self.text_model.config, "max_position_embeddings", 77))
            tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
            if self.backend == "siglip":
                tok.pop("attention_mask", None)  # SigLIP's text tower attends to its padding tokens
                e = self.text_model(**tok).pooler_output
            else:
                e = self.text_model(**tok).text_embeds
        return F.normalize(e.float(), dim=-1).cpu().numpy()

    def logit_scale(self) -> float:
        """The tower pair's learnt temperature (exp of logit_scale) where the files carry it:
        CLIP / SigLIP full checkpoints and open_clip; 100 (CLIP's value) otherwise."""
        if self.backend == "open_clip":
            return float(self.model.logit_scale.exp())
        return float(np.exp(self._full_param("logit_scale", np.log(100.0))))

    def logit_bias(self) -> float:
        return float(self._full_param("logit_bias", 0.0)) if self.backend == "siglip" else 0.0

    def _full_param(self, name: str, default: float) -> float:
        """A scalar of the full CLIPModel / SiglipModel checkpoint (not part of the towers)."""
        if self.random:
            return default
        path = Path(self.model_name).expanduser() / "model.safetensors"
        if not path.is_file():
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(self.model_name, "model.safetensors", revision=self.revision)
            if not isinstance(cached, str):
                return default
            path = Path(cached)
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return float(f.get_tensor(name)) if name in f.keys() else default

    def metadata(self):
        return {**super().metadata(), "model": f"{self.backend}:{self.model_name}", "weights": self.weights_id,
                "sha256": self.sha256, "random_weights": self.random, "precision": self.precision,
                "normalized": self.normalize, "preprocess": repr(self.prep), "view": self.view}
