#!/usr/bin/env python3
"""Cost of the audio and time-stamped text families on real clips (../shared/data/fight).

No pretrained weights can be downloaded here, so each transformers network is a seeded random
model of the released architecture's size, saved with save_pretrained into a temporary folder and
loaded through the real path (the speed of a network does not depend on its weights):
  AST base (ASTConfig defaults = MIT/ast-finetuned-audioset: 768 x 12, 1,024 frames x 128 mels),
  wav2vec2 / HuBERT base (the config defaults), the whisper-base encoder (512 x 6), CLAP's
  HTSAT audio tower (ClapConfig defaults), and for ASR a whisper-base-sized random Whisper
  with a byte-level tokenizer (extractors/asr.py:save_random_whisper; random weights write
  random text until `max_new_tokens`, so its figure is the cost of a full 128-token window).
The fight clips have no subtitles or speech worth the name: subtitle_text is timed on 4 made-up
segments per clip (msrvtt-mini pseudo captions). Prints and saves bench/results/audio.json.

    python bench/audio.py [--clips 20] [--asr-clips 4] [--threads 2] [--only audio_mfcc audio_ast ...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from extractors import build_extractor  # noqa: E402
from extractors.asr import save_random_whisper  # noqa: E402
from extractors.hf_audio import save_random_model  # noqa: E402
from extractors.mfcc import rms_dbfs  # noqa: E402
from pipeline.config import load_config, versions  # noqa: E402
from pipeline.decode import DecodeOptions, decode_video  # noqa: E402
from pipeline.io import write_json  # noqa: E402

WHISPER_BASE = dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                    decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048)
NETWORKS = {  # modality -> (kind, config overrides of the random model)
    "audio_ast": ("ast", {"num_labels": 527}),
    "audio_ast_scores": ("ast", {"num_labels": 527}),
    "audio_wav2vec2": ("wav2vec2", {}),
    "audio_hubert": ("hubert", {}),
    "audio_whisper": ("whisper", WHISPER_BASE),
    "audio_clap": ("clap", {}),
}
ALL = ["audio", "audio_vggish_hop032", "audio_mfcc", *NETWORKS, "subtitle_text", "speech_text"]


def timed(ext, clips, batch=8) -> dict:
    # warm-up (lazy imports, first-call allocations) on a clip that has sound: several fight clips
    # have an audio track of digital zeros, which the families skip without importing anything
    ext.extract([next((c for c in clips if c.audio is not None and rms_dbfs(c.audio) > -70), clips[0])])
    start, rows, present = time.perf_counter(), 0, 0
    for i in range(0, len(clips), batch):
        for f in ext.extract(clips[i:i + batch]):
            if f is not None:
                present += 1
                rows += len(f.sequence) if f.sequence is not None else 0
    s = time.perf_counter() - start
    audio_s = sum(len(c.audio) / c.sample_rate for c in clips if c.audio is not None)
    return {"clips": len(clips), "with_features": present, "seconds": round(s, 2),
            "clips_per_s": round(len(clips) / s, 3), "audio_seconds_per_s": round(audio_s / s, 1),
            "rows": rows, "dim": ext.dim, "precision": ext.metadata().get("precision")}


def build(name, cfg, tmp: Path):
    section = dict(cfg.extractors[name.replace("_vggish_hop032", "")])
    if name == "audio_vggish_hop032":
        section["hop_s"] = 0.32
    if name in ("audio", "audio_vggish_hop032"):
        section["weights"] = "random"
    if name in NETWORKS:
        kind, config = NETWORKS[name]
        folder = tmp / kind
        if not folder.exists():
            save_random_model(kind, folder, **config)
        section["model"] = str(folder)
    if name == "speech_text":
        section["model"] = str(save_random_whisper(tmp / "asr", **WHISPER_BASE))
    return build_extractor(name, section, "cpu")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fight"))
    ap.add_argument("--captions", default=str(ROOT.parent / "shared" / "data" / "msrvtt-mini" / "pseudo_captions.yaml"))
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--asr-clips", type=int, default=4)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--only", nargs="*", default=ALL)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "audio.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging

    logging.set_verbosity_error()
    paths = sorted(Path(args.data).rglob("*.mp4"))
    if not paths:
        sys.exit(f"no clips under {args.data} (the real clips ship beside the repo as ../shared/data/fight)")
    paths = paths[:: max(1, len(paths) // args.clips)][: args.clips]   # spread over both folders
    opts = DecodeOptions(num_frames=1, short_side=32)
    clips = [decode_video(p, opts, video_id=p.stem) for p in paths]
    with_audio = [c for c in clips if c.audio is not None]
    import yaml

    captions = [str(v) for v in yaml.safe_load(Path(args.captions).read_text()).values()]
    for i, c in enumerate(clips):  # 4 made-up segments per clip for subtitle_text
        c.subtitles = [(k * c.duration / 4, (k + 1) * c.duration / 4, captions[(4 * i + k) % len(captions)])
                       for k in range(4)]
    res = {"data": args.data, "clips": len(clips), "clips_with_audio": len(with_audio),
           "clips_with_silent_audio_track": int(sum(rms_dbfs(c.audio) <= -70 for c in with_audio)),
           "mean_audio_s": round(float(np.mean([len(c.audio) / c.sample_rate for c in with_audio])), 2),
           "torch_threads": args.threads, "loadavg_before": os.getloadavg(), "versions": versions(),
           "families": {}}
    if Path(args.out).exists() and set(args.only) != set(ALL):  # a partial rerun keeps the other rows
        res["families"] = json.loads(Path(args.out).read_text()).get("families", {})
    cfg = load_config()
    with tempfile.TemporaryDirectory() as tmp:
        for name in [n for n in ALL if n in args.only]:
            t0 = time.perf_counter()
            ext = build(name, cfg, Path(tmp))
            load_s = time.perf_counter() - t0
            sub = clips[: args.asr_clips] if name == "speech_text" else clips
            r = {"load_s": round(load_s, 2), **timed(ext, sub), "loadavg_1min_after": round(os.getloadavg()[0], 1)}
            res["families"][name] = r
            print(name, r, flush=True)
            res["loadavg_after"] = os.getloadavg()
            write_json(args.out, res)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
