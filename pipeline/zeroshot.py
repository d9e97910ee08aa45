"""Zero-shot prediction: no training, each video's image-text embedding scored against label prompts.

For video v with pooled frame embedding x_v (the `image_text` modality: the mean of the L2-normalised
frame embeddings, re-normalised here) and label l with prompt embedding t_l = text_tower(template
with {label} = l), L2-normalised:

    CLIP / OpenCLIP:  p(l | v) = softmax_l( s * x_v . t_l )       (s = exp(logit_scale), 100 for CLIP)
    SigLIP:           p(l | v) = sigmoid( s * x_v . t_l + b )      (its pairwise sigmoid loss; b = logit_bias)

The text tower is the one matching the tower that made the stored embeddings: the extractor is
rebuilt from the config saved with the modality in the store (the current YAML only when the store
has none). Output: the same JSONL as `predict` ({"video_id", "labels": [[label, prob], ...]},
best first, top_k / threshold applied), plus <output>.meta.json with labels, template, prompts and
the tower's metadata. The store is opened read-only: nothing here changes the training data.

    run_pipeline.py predict --out OUT --zero-shot --labels-from labels.txt [--template "a photo of {label}"]
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .evaluate import write_predictions
from .io import write_json
from .output import open_output

def read_labels(path: str | Path) -> list[str]:
    """Labels from a file: one per line (txt), or a JSON list; blank lines and duplicates dropped."""
    text = Path(path).read_text(encoding="utf-8")
    items = json.loads(text) if str(path).endswith(".json") else text.splitlines()
    labels = list(dict.fromkeys(str(s).strip() for s in items if str(s).strip()))
    if not labels:
        raise ValueError(f"no labels in {path}")
    return labels


def zero_shot_probs(video_emb: np.ndarray, text_emb: np.ndarray, scale: float, bias: float = 0.0,
                    sigmoid: bool = False) -> np.ndarray:
    """(N, D) video and (L, D) prompt embeddings -> (N, L) probabilities (see the module docstring)."""
    v = video_emb / np.maximum(np.linalg.norm(video_emb, axis=1, keepdims=True), 1e-12)
    t = text_emb / np.maximum(np.linalg.norm(text_emb, axis=1, keepdims=True), 1e-12)
    logits = scale * v @ t.T + bias
    if sigmoid:
        return 1.0 / (1.0 + np.exp(-logits))
    logits = logits - logits.max(1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


def tower_config(cfg, store, modality: str) -> dict:
    """The extractor config saved with `modality` in the store, else the current YAML's."""
    info = store.modalities().get(modality)
    if info is None:
        raise KeyError(f"the store has no {modality!r} features: extract them first "
                       f"(extract.modalities=[{modality}]); it has {sorted(store.modalities())}")
    saved = (info.meta or {}).get("config")
    if saved:
        return dict(saved)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.extractors[modality], resolve=True)


def run_zero_shot(cfg, out_dir: str | Path, labels: list[str], output: str | Path | None = None,
                  template: str | None = None, modality: str = "image_text", top_k: int | None = 5,
                  threshold: float | None = None, device: str = "cpu") -> Path:
    """Score every video that has `modality` against the label prompts; write predict's JSONL."""
    from extractors import build_extractor

    catalog, store = open_output(cfg, out_dir, readonly=True)
    try:
        tcfg = tower_config(cfg, store, modality)
        ids, pooled, present = store.read_pooled(modality)
        ids, pooled = [v for v, p in zip(ids, present) if p], pooled[present].astype(np.float32)
    finally:
        catalog.close()
    tower = build_extractor(modality, tcfg, device)
    if not hasattr(tower, "embed_texts"):
        raise ValueError(f"modality {modality!r} ({tower.family}) has no text tower for zero-shot prediction")
    template = template or tower.cfg["zero_shot"]["template"]   # the YAML's, as saved with the modality
    if "{label}" not in template:
        raise ValueError(f"zero-shot template {template!r} has no {{label}} placeholder")
    prompts = [template.format(label=label) for label in labels]
    probs = zero_shot_probs(pooled, tower.embed_texts(prompts), tower.logit_scale(), tower.logit_bias(),
                            sigmoid=tower.backend == "siglip")
    output = write_predictions(output or Path(out_dir) / "zeroshot" / "predictions.jsonl", ids, probs, labels,
                               top_k, threshold)   # the records of `predict`, written the same way
    write_json(output.with_suffix(".meta.json"), {
        "mode": "zero-shot", "modality": modality, "labels": labels, "template": template, "prompts": prompts,
        "scale": tower.logit_scale(), "bias": tower.logit_bias(), "videos": len(ids), "tower": tower.metadata()})
    return output
