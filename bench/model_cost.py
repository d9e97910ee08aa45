"""Cost of every model of the zoo on a YouTube-8M-sized task: parameters, CPU training time per
epoch and peak memory.

The task has the shape of YouTube-8M's video-level data (17,000 videos, rgb 1,024-d + audio
128-d pooled vectors, 3,862 labels, about 3 labels a video), filled with random numbers: the
figures are about cost, not accuracy. The features go through the real path (a feature store on
disk, FeatureDataset, collate_batch, the models' default YAML configs, AdamW, the task loss plus
the model's aux loss), one model per fresh process so that peak memory is that model's.

    python bench/model_cost.py                      # every model, full epochs
    python bench/model_cost.py --models nmcl marnet --max-steps 20
Prints a table and writes bench/results/model_cost.json (rows of models not run this time are
kept from the previous file when the task is the same).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def make_store(out: Path, n: int, dims: dict[str, int], classes: int, seed: int = 0) -> None:
    from pipeline.catalog import Catalog, VideoRow
    from pipeline.store import FeatureStore

    rng = np.random.default_rng(seed)
    names = [f"label{i}" for i in range(classes)]
    catalog = Catalog(out / "catalog.sqlite")
    catalog.set_class_names(names)
    rows = []
    for i in range(n):
        k = 1 + rng.poisson(2.0)
        rows.append(VideoRow(f"v{i:06d}", labels=[names[j] for j in rng.choice(classes, k, replace=False)]))
    catalog.upsert_videos(rows)
    store = FeatureStore(out, catalog, shard_size=4096)
    for m, d in dims.items():
        with store.writer(m, "pooled", d) as w:
            for i in range(n):
                w.add(f"v{i:06d}", rng.normal(size=d).astype(np.float32))
    catalog.close()


def measure(store_dir: Path, name: str, batch_size: int, max_steps: int | None, threads: int) -> dict:
    """Train `name` for one epoch (or max_steps) on the store; return its figures."""
    from models import build_model
    from models.common import task_loss
    from pipeline import task as training
    from pipeline.config import load_config
    from pipeline.output import open_output
    from pipeline.dataset import collate_batch

    torch.set_num_threads(threads)
    cfg = load_config(overrides=["device=cpu", f"models.{name}.label_embeddings=random"] if name == "marnet"
                      else ["device=cpu"])
    catalog, store = open_output(cfg, store_dir)
    task = training.load_labels(catalog)
    inputs, dims = training.model_inputs(store, cfg.models[name], None)
    ds = training.make_dataset(store, task["video_ids"], inputs, task["labels"])
    extra = training.label_extra(name, cfg.models[name], task["class_names"], task["labels"], "cpu")
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.manual_seed(0)
    model = build_model(name, cfg.models[name], dims, len(task["class_names"]), True, extra)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, collate_fn=collate_batch)
    steps_per_epoch = len(loader)
    if hasattr(model, "set_progress"):
        model.set_progress(0.5)
    model.train()
    times = []
    for step, batch in enumerate(loader):
        t = time.perf_counter()
        out = model(batch)
        loss = task_loss(out["logits"], batch["labels"], True) + out["aux_loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
        if max_steps and step + 1 >= max_steps:
            break
    wall = sum(times)
    steady = float(np.mean(times[1:])) if len(times) > 1 else times[0]   # the first step allocates
    epoch_s = wall if len(times) == steps_per_epoch else times[0] + steady * (steps_per_epoch - 1)
    catalog.close()
    return {"model": name, "parameters": int(params), "steps_measured": len(times), "steps_per_epoch": steps_per_epoch,
            "epoch_s": round(epoch_s, 1), "extrapolated": len(times) != steps_per_epoch,
            "step_ms": round(1000 * steady, 1), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_before_model_mb": round(rss_data), "inputs": inputs}


def main() -> None:
    from models import available_models

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--videos", type=int, default=17000)
    p.add_argument("--classes", type=int, default=3862)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-steps", type=int, default=None, help="time this many steps and extrapolate to the epoch")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--store", type=Path, default=None, help="reuse a store made by an earlier run")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)   # internal: measure one model, print JSON
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "model_cost.json")
    a = p.parse_args()
    if a.one:
        print(json.dumps(measure(a.store, a.one, a.batch_size, a.max_steps, a.threads)))
        return
    names = a.models or available_models()
    with tempfile.TemporaryDirectory() as tmp:
        store = a.store or Path(tmp)
        if a.store is None:
            t = time.time()
            make_store(store, a.videos, {"rgb": 1024, "audio": 128}, a.classes)
            print(f"random store of {a.videos} videos written in {time.time() - t:.1f}s")
        rows = []
        for name in names:
            cmd = [sys.executable, __file__, "--one", name, "--store", str(store), "--batch-size", str(a.batch_size),
                   "--threads", str(a.threads)] + (["--max-steps", str(a.max_steps)] if a.max_steps else [])
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{name}: failed\n{res.stderr[-2000:]}")
                rows.append({"model": name, "error": res.stderr[-500:]})
                continue
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{name:13s} params {r['parameters'] / 1e6:7.2f} M   epoch {r['epoch_s']:7.1f} s"
                  f"{' (extrapolated)' if r['extrapolated'] else ''}   step {r['step_ms']:7.1f} ms   "
                  f"peak RSS {r['peak_rss_mb']} MB")
    from pipeline.config import versions

    result = {"task": {"videos": a.videos, "dims": {"rgb": 1024, "audio": 128}, "classes": a.classes,
                       "labels_per_video": "1 + Poisson(2)", "data": "random numbers (cost only)",
                       "batch_size": a.batch_size, "optimizer": "AdamW", "configs": "configs/models/*.yaml defaults"},
              "machine": {"threads": a.threads, "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
                          "device": "cpu"},
              "models": rows, "versions": versions()}
    if a.output.exists():   # keep the other models' rows of an earlier run of the same task
        old = json.loads(a.output.read_text())
        if old.get("task") == result["task"]:
            done = {r["model"] for r in rows}
            result["models"] = [r for r in old["models"] if r["model"] not in done] + rows
    a.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.output.with_name(f".{a.output.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, a.output)
    print(f"written {a.output}")


if __name__ == "__main__":
    main()
