"""Train, evaluate and predict with the models of `models/` on the feature store.

    run_train(cfg, out, "nmcl")             -> OUT/runs/<run>/{best.pt, last.pt, metrics.json, config.yaml,
                                               events.out.tfevents.*}
    run_evaluate(cfg, out, run_dir, "val")  -> metrics table + OUT/runs/<run>/eval-val.json
    run_evaluate(cfg, out, [run_a, run_b])  -> the same for the ensemble (mean probability) in OUT/ensembles/a+b/
    run_predict(cfg, out, run_dir, path)    -> JSONL {"video_id": ..., "labels": [[label, prob], ...]}
    run_cross_validation(cfg, out, "nmcl", folds=5) -> per-fold and mean +- std metrics
    launch_distributed(2, argv)             -> torchrun with 2 processes (DistributedDataParallel)

The task comes from the catalog: multi-label when the importer fixed a vocabulary
(`Catalog.set_class_names`, e.g. YouTube-8M) or when any video has more than one label, else
multi-class. Splits come from the catalog's split column when it is set ("val"/"validate"/
"validation" count as val), otherwise a seeded random split by `train.val_fraction` (stratified
for multi-class). Checkpoints carry everything needed to rebuild the model without the training
data: model name and config, input modalities and dims, class names, the task type, the label
graph / embeddings the model was built with, the resolved config and library versions.

Distributed training: when torchrun started this process (WORLD_SIZE > 1) the loop initialises
torch.distributed (nccl on CUDA, gloo on CPU), shards each epoch with DistributedSampler and
wraps the model in DistributedDataParallel. The single-process loop uses the same sampler with
one replica, so the global batches (rank r takes every world-th index of the same permutation)
and therefore the averaged gradients are the same: 2 processes reproduce 1 within float
tolerance (tests/test_train.py). Every rank scores the whole validation set, so early stopping
decides the same everywhere; only rank 0 writes files.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from models import build_model, model_class
from models.common import probabilities, task_loss

from .config import resolve_device, to_dict, versions
from .metrics import compute_metrics, default_monitor
from .stages import open_output, write_json
from .store import FeatureDataset, FeatureStore, collate_batch

VAL_NAMES = {"val", "validate", "validation", "valid"}


# -- the task: labels, splits, inputs ----------------------------------------------------------
def load_labels(catalog) -> dict:
    """Labeled videos of the catalog as a task: ids, multi-hot labels [N, C], splits, classes."""
    class_names = catalog.class_names()
    fixed = bool(catalog.get_meta("class_names"))
    rows = [(vid, labels, split) for vid, labels, split in catalog.labeled_videos() if labels]
    if not rows:
        raise ValueError("the catalog has no labeled videos: nothing to train on (labels.tsv, folder names or an importer)")
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({lab for _, labels, _ in rows for lab in labels if lab not in index})
    if unknown:
        raise ValueError(f"{len(unknown)} labels are not in the catalog's class vocabulary, e.g. {unknown[:5]}")
    y = np.zeros((len(rows), len(class_names)), np.float32)
    for i, (_, labels, _) in enumerate(rows):
        y[i, [index[lab] for lab in labels]] = 1
    multilabel = fixed or bool((y.sum(1) > 1).any())
    return {"video_ids": [r[0] for r in rows], "labels": y, "splits": [r[2] for r in rows],
            "class_names": class_names, "multilabel": multilabel}


def split_indices(task: dict, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """{"train", "val", "test"} row indices: the catalog's split column when set, else random."""
    from sklearn.model_selection import train_test_split

    splits = np.array([(s or "").lower() for s in task["splits"]])
    splits = np.where(np.isin(splits, list(VAL_NAMES)), "val", splits)
    idx = np.arange(len(splits))
    test = idx[splits == "test"]
    val = idx[splits == "val"]
    pool = idx[(splits != "test") & (splits != "val")]   # "train" and unset
    if len(val) == 0:
        if len(pool) < 2:
            raise ValueError(f"only {len(pool)} labeled training video(s): cannot hold out a validation split")
        y = task["labels"][pool].argmax(1)
        n_val = max(1, int(round(val_fraction * len(pool))))
        classes, counts = np.unique(y, return_counts=True)
        # stratify when every class can give one video to each side
        stratify = y if not task["multilabel"] and counts.min() >= 2 and n_val >= len(classes) else None
        pool, val = train_test_split(pool, test_size=n_val, random_state=seed, stratify=stratify)
    return {"train": np.sort(pool), "val": np.sort(val), "test": test}


def model_inputs(store: FeatureStore, model_cfg, modalities: Sequence[str] | None,
                 use_completed: bool = False) -> tuple[dict, dict]:
    """({"pooled": [m...], "sequence": [m...]}, dims) to load for a model: its `input` layout
    when the store has it for a modality, else the other one (models/common.py adapts).
    With `use_completed`, a pooled-input model reads `<m>@completed` (written by the complete
    stage) instead of `<m>` wherever the store has it."""
    infos = store.modalities()
    names = list(modalities) if modalities else sorted(m for m in infos if "@" not in m)
    if use_completed and model_cfg.get("input", "pooled") == "pooled":
        names = [f"{m}@completed" if f"{m}@completed" in infos else m for m in names]
    missing = [m for m in names if m not in infos]
    if missing:
        raise ValueError(f"modalities {missing} are not in the store; it has {sorted(infos)}")
    if not names:
        raise ValueError("the store has no features: run extract (or an importer) first")
    want = model_cfg.get("input", "pooled")
    if want not in ("pooled", "sequence"):
        raise ValueError(f"model input must be pooled or sequence, got {want!r}")
    other = "sequence" if want == "pooled" else "pooled"
    inputs, dims = {"pooled": [], "sequence": []}, {"pooled": {}, "sequence": {}}
    for m in names:
        layout = want if want in infos[m].layouts else other
        inputs[layout].append(m)
        dims[layout][m] = infos[m].layouts[layout]
    return inputs, dims


def label_extra(model_name: str, model_cfg, class_names: list[str], train_labels: np.ndarray, device: str) -> dict:
    """What a label-graph model (MARNet) needs besides the features: class-name embeddings from
    the text extractor and co-occurrence counts of the *training* labels."""
    extra: dict = {"class_names": list(class_names),
                   "label_prior": torch.from_numpy(np.asarray(train_labels, np.float32).mean(0))}
    if not getattr(model_class(model_name), "uses_label_graph", False):
        return extra
    y = torch.from_numpy(train_labels)
    extra["label_cooccurrence"] = (y.T @ y).float()
    if model_cfg.get("label_embeddings", "text") == "text":
        try:
            from extractors.text import embed_texts
            extra["label_embeddings"] = torch.from_numpy(np.asarray(embed_texts(list(class_names), device=device)))
        except Exception as e:
            raise RuntimeError(f"{model_name} embeds the class names with the text extractor, which failed: {e}. "
                               f"Set models.{model_name}.label_embeddings=random to use fixed random label "
                               "embeddings instead (recorded in the run's config).") from e
    return extra


def _dataset(store, video_ids, inputs, labels=None) -> FeatureDataset:
    return FeatureDataset(store, video_ids, pooled=inputs["pooled"], sequence=inputs["sequence"], labels=labels)


def _to(batch: dict, device) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, dict):
            out[k] = {m: t.to(device, non_blocking=True) for m, t in v.items()}
        else:
            out[k] = v
    return out


def mixup(batch: dict, alpha: float) -> dict:
    """mixup (Zhang et al., ICLR 2018, Eq. 1): every example of the batch becomes
    lam * x_i + (1 - lam) * x_j with its labels mixed the same way, j a random permutation and
    lam ~ Beta(alpha, alpha) once per batch. Pooled vectors and padded sequences are mixed alike
    (a mixed sequence is as long as the longer of the two); a modality counts as present only
    where it is present in both, since mixing with a missing one would halve the vector. Draws
    from torch's global generator, which the checkpoints save, so a resumed run mixes the same."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    j = torch.randperm(len(batch["video_ids"]), device=batch["labels"].device)
    out = dict(batch)
    out["pooled"] = {m: lam * x + (1 - lam) * x[j] for m, x in batch["pooled"].items()}
    out["sequence"] = {m: lam * x + (1 - lam) * x[j] for m, x in batch["sequence"].items()}
    out["lengths"] = {m: torch.maximum(n, n[j]) for m, n in batch["lengths"].items()}
    for key in ("present", "observed"):
        out[key] = {m: p & p[j] for m, p in batch[key].items()}
    out["labels"] = lam * batch["labels"].float() + (1 - lam) * batch["labels"][j].float()
    return out


# -- distributed ------------------------------------------------------------------------------
def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_distributed(device: str) -> str:
    """Initialise torch.distributed when torchrun started us (WORLD_SIZE > 1); return the device
    this rank uses (cuda:LOCAL_RANK on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


def launch_distributed(nproc: int, argv: Sequence[str], module: str | None = None,
                       script: str | Path | None = None) -> int:
    """What `python -m torch.distributed.run --standalone --nproc_per_node N <entry> argv...`
    does, and return 0 / 1. The entry is `script` (default: run_pipeline.py at the project root)
    or `python -m module`; `--nproc N` is removed from argv so the workers do not launch again.

    torchrun's own argument parser is given only its options: parsing our argv with it would
    reject options that prefix-match torchrun's (`--run` vs `--run-path`)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    entry = ["-m", module] if module else [str(script or Path(__file__).resolve().parent.parent / "run_pipeline.py")]
    launch = get_args_parser().parse_args(["--standalone", f"--nproc_per_node={int(nproc)}", *entry])
    launch.training_script_args = args
    try:
        run(launch)
    except ChildFailedError as e:
        print(f"distributed training failed: {e}", file=sys.stderr)
        return 1
    return 0


# -- checkpoints ------------------------------------------------------------------------------
def _save(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _pack_extra(extra: dict) -> dict:
    """The co-occurrence matrix is C x C but sparse (3,862 classes: 60 MB dense): store only its
    non-zero entries."""
    out = dict(extra)
    if "label_cooccurrence" in out:
        dense = torch.as_tensor(out["label_cooccurrence"])
        nz = dense.nonzero().T
        out["label_cooccurrence"] = {"indices": nz, "values": dense[nz[0], nz[1]], "shape": list(dense.shape)}
    return out


def _unpack_extra(extra: dict) -> dict:
    out = dict(extra)
    packed = out.get("label_cooccurrence")
    if isinstance(packed, dict):
        dense = torch.zeros(packed["shape"], dtype=packed["values"].dtype)
        dense[packed["indices"][0], packed["indices"][1]] = packed["values"]
        out["label_cooccurrence"] = dense
    return out


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a trained model from best.pt / last.pt (eval mode) and return it with the checkpoint."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = build_model(ckpt["model_name"], ckpt["model_cfg"], ckpt["dims"], len(ckpt["class_names"]),
                        ckpt["multilabel"], _unpack_extra(ckpt["extra"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- the loop ---------------------------------------------------------------------------------
def _autocast(device: str, enabled: bool):
    if not enabled:
        return nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


@torch.no_grad()
def predict_scores(model, loader, device: str, multilabel: bool, amp: bool = False):
    """(video_ids, probabilities [N, C], labels [N, C] or None, mean task loss or None)."""
    model.eval()
    ids, scores, labels, losses = [], [], [], []
    for batch in loader:
        batch = _to(batch, device)
        with _autocast(device, amp):
            logits = model(batch)["logits"].float()
        ids += batch["video_ids"]
        scores.append(probabilities(logits, multilabel).cpu())
        if "labels" in batch:
            labels.append(batch["labels"].cpu())
            losses.append(task_loss(logits, batch["labels"], multilabel, reduction="none").cpu())
    y = torch.cat(labels).numpy() if labels else None
    loss = float(torch.cat(losses).mean()) if losses else None
    return ids, torch.cat(scores).numpy(), y, loss


def _optimizer(params, tcfg):
    name = tcfg.get("optimizer", "adamw").lower()
    lr, wd = float(tcfg.lr), float(tcfg.get("weight_decay", 0.0))
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(tcfg.get("momentum", 0.9)))
    raise ValueError(f"unknown optimizer {name!r} (adamw | adam | sgd)")


def _scheduler(optimizer, tcfg, steps_per_epoch: int):
    """Per-step learning-rate factor: linear warmup, then cosine to 0 (or constant)."""
    total = max(1, int(tcfg.epochs) * steps_per_epoch)
    warmup = int(float(tcfg.get("warmup_epochs", 0)) * steps_per_epoch)
    kind = tcfg.get("scheduler", "cosine")
    if kind not in ("cosine", "none", None):
        raise ValueError(f"unknown scheduler {kind!r} (cosine | none)")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _unique_run_dir(runs: Path, name: str) -> Path:
    path, i = runs / name, 1
    while (path / "last.pt").exists() or (path / "metrics.json").exists():
        i += 1
        path = runs / f"{name}-{i}"
    return path


def _broadcast(obj):
    if _dist()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_train(cfg: DictConfig, out_dir: str | Path, model_name: str, run_name: str | None = None,
              resume: str | Path | None = None) -> dict:
    """Train `model_name` on the store of `out_dir`; returns the metrics.json content."""
    return _train(cfg, out_dir, model_name, run_name, resume)


def _train(cfg, out_dir, model_name, run_name=None, resume=None, fixed_split: dict | None = None) -> dict:
    out_dir = Path(out_dir)
    tcfg = cfg.train
    model_cfg = cfg.models.get(model_name)
    if model_cfg is None:
        model_class(model_name)  # raises the clear "unknown model" error when it is not a model at all
        model_cfg = OmegaConf.create({})
    device = setup_distributed(resolve_device(cfg.get("device", "auto")))
    rank, world = _dist()
    catalog, store = open_output(cfg, out_dir)
    started = time.time()
    try:
        task = load_labels(catalog)
        ids = np.array(task["video_ids"])
        if fixed_split is not None:   # cross-validation folds
            split = {k: np.array(v) for k, v in fixed_split.items()}
        else:
            split = split_indices(task, float(tcfg.get("val_fraction", 0.1)), int(cfg.seed))
        inputs, dims = model_inputs(store, model_cfg, tcfg.get("modalities"), bool(tcfg.get("use_completed", False)))
        y = task["labels"]
        train_ds = _dataset(store, ids[split["train"]], inputs, y[split["train"]])
        val_ds = _dataset(store, ids[split["val"]], inputs, y[split["val"]])

        ckpt = None
        if resume is not None:
            resume = Path(resume)
            ckpt = torch.load(resume / "last.pt" if resume.is_dir() else resume, map_location="cpu", weights_only=False)
            if ckpt["model_name"] != model_name:
                raise ValueError(f"resume checkpoint is a {ckpt['model_name']} run, not {model_name}")
            extra = _unpack_extra(ckpt["extra"])
        else:
            extra = label_extra(model_name, model_cfg, task["class_names"], y[split["train"]], device)
        seed_everything(int(cfg.seed))
        model = build_model(model_name, model_cfg, dims, len(task["class_names"]), task["multilabel"], extra).to(device)
        # Exponential moving average of the weights (train.ema = its decay per step, 0 = off):
        # validation, best.pt and everything downstream use the average; the raw weights the
        # optimizer works on are kept too ("train_model") so that a resumed run goes on exactly.
        ema_decay = float(tcfg.get("ema", 0.0) or 0.0)
        ema = None
        if ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        if ckpt is not None:
            model.load_state_dict(ckpt.get("train_model", ckpt["model"]))
            if ema is not None:
                ema.module.load_state_dict(ckpt["model"])
                ema.n_averaged.fill_(1)

        batch_size = int(tcfg.batch_size)
        if batch_size % world:
            raise ValueError(f"train.batch_size={batch_size} must be divisible by the {world} processes")
        # The same sampler with one replica in a single process: identical global batches (see top).
        sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True,
                                                      seed=int(cfg.seed))
        loader = torch.utils.data.DataLoader(train_ds, batch_size=batch_size // world, sampler=sampler,
                                             collate_fn=collate_batch, num_workers=int(tcfg.get("num_workers", 0)))
        val_loader = torch.utils.data.DataLoader(val_ds, batch_size=int(tcfg.get("eval_batch_size", 1024)),
                                                 collate_fn=collate_batch, num_workers=int(tcfg.get("num_workers", 0)))
        optimizer = _optimizer(model.parameters(), tcfg)
        scheduler = _scheduler(optimizer, tcfg, len(loader))
        net = model
        if world > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None,
                find_unused_parameters=bool(tcfg.get("ddp_find_unused", False)))

        monitor = tcfg.get("monitor", "auto")
        top_k, threshold = int(tcfg.get("top_k", 20)), float(tcfg.get("threshold", 0.5))
        if monitor in (None, "auto"):
            monitor = default_monitor(task["multilabel"], top_k)
        start_epoch, best, best_epoch, bad, history = 0, -math.inf, -1, 0, []
        if ckpt is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            start_epoch, best, best_epoch = ckpt["epoch"] + 1, ckpt["best"], ckpt["best_epoch"]
            bad, history = ckpt["bad_epochs"], ckpt["history"]
            _set_rng_state(ckpt["rng"])

        if run_name is not None:
            run_dir = out_dir / "runs" / run_name
        elif ckpt is not None:   # resuming continues in the checkpoint's folder
            run_dir = resume if resume.is_dir() else resume.parent
        else:
            run_dir = _unique_run_dir(out_dir / "runs", model_name)
        run_dir = Path(_broadcast(str(run_dir)))
        writer = None
        if rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            tmp = run_dir / f".config.yaml.{os.getpid()}.tmp"
            OmegaConf.save(cfg, tmp)
            os.replace(tmp, run_dir / "config.yaml")
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(run_dir))

        meta = {"model_name": model_name, "model_cfg": to_dict(model_cfg) if isinstance(model_cfg, DictConfig) else dict(model_cfg),
                "dims": dims, "inputs": inputs, "class_names": task["class_names"], "multilabel": task["multilabel"],
                "extra": _pack_extra(extra), "config": to_dict(cfg), "versions": versions(),
                "split_ids": {k: ids[v].tolist() for k, v in split.items()}, "monitor": monitor}
        amp = bool(tcfg.get("amp", False))
        mixup_alpha = float(tcfg.get("mixup", 0.0) or 0.0)
        clip = tcfg.get("grad_clip")
        stop_after = tcfg.get("stop_after_epochs")   # time-sliced jobs: stop here, resume later
        log_every = int(tcfg.get("log_every", 50))
        show = bool(tcfg.get("progress", True)) and rank == 0
        from rich.console import Console
        from .progress import video_progress
        console = Console()
        stopped_early, ran = False, 0
        step = start_epoch * len(loader)
        for epoch in range(start_epoch, int(tcfg.epochs)):
            sampler.set_epoch(epoch)
            if hasattr(model, "set_progress"):   # schedules inside a model (MART's masking ratio)
                model.set_progress(epoch / max(1, int(tcfg.epochs)))
            net.train()
            total, count = 0.0, 0
            with video_progress(f"{model_name} epoch {epoch + 1}/{tcfg.epochs}", len(loader), show, unit="batches") as advance:
                for batch in loader:
                    batch = _to(batch, device)
                    if mixup_alpha > 0:
                        batch = mixup(batch, mixup_alpha)
                    with _autocast(device, amp):
                        out = net(batch)
                    loss = task_loss(out["logits"].float(), batch["labels"], task["multilabel"]) + out["aux_loss"].float()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip))
                    optimizer.step()
                    scheduler.step()
                    if ema is not None:
                        ema.update_parameters(model)
                    total += float(loss.detach()) * len(batch["video_ids"])
                    count += len(batch["video_ids"])
                    if writer is not None and step % log_every == 0:
                        writer.add_scalar("train/loss", float(loss.detach()), step)
                        for name, value in out["losses"].items():
                            writer.add_scalar(f"train/{name}", float(value.detach()), step)
                        writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                    step += 1
                    advance(1)
            if world > 1:   # the epoch's training loss over every rank's share
                sums = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
                dist.all_reduce(sums)
                total, count = float(sums[0]), int(sums[1])
            evaluated = model if ema is None else ema.module
            _, scores, labels, val_loss = predict_scores(evaluated, val_loader, device, task["multilabel"], amp)
            metrics = compute_metrics(scores, labels, task["multilabel"], threshold, top_k)
            value = metrics[monitor]
            improved = value > best
            if improved:
                best, best_epoch, bad = value, epoch, 0
            else:
                bad += 1
            history.append({"epoch": epoch, "train_loss": total / max(1, count), "val_loss": val_loss, **metrics})
            ran += 1
            if rank == 0:
                for k, v in history[-1].items():
                    if isinstance(v, float) and math.isfinite(v):
                        writer.add_scalar(f"val/{k}" if k != "train_loss" else "train/epoch_loss", v, epoch)
                if show:
                    console.print(f"epoch {epoch + 1}: train loss {total / max(1, count):.4f}  val loss {val_loss:.4f}  "
                                  f"{monitor} {value:.4f}{'  *' if improved else ''}")
                weights = {"model": evaluated.state_dict()} | ({} if ema is None else {"train_model": model.state_dict()})
                state = {**meta, **weights, "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "epoch": epoch, "best": best, "best_epoch": best_epoch,
                         "bad_epochs": bad, "history": history, "rng": _rng_state(), "metrics": metrics}
                _save(run_dir / "last.pt", state)
                if improved:
                    _save(run_dir / "best.pt", state)
            if bad >= int(tcfg.get("patience", 5)):
                stopped_early = True
                break
            if stop_after and ran >= int(stop_after):
                break
        result = {"run_dir": str(run_dir), "model": model_name, "monitor": monitor, "best_epoch": best_epoch,
                  "best": next((h for h in history if h["epoch"] == best_epoch), None),
                  "epochs_run": len(history), "stopped_early": stopped_early, "multilabel": task["multilabel"],
                  "num_classes": len(task["class_names"]), "modalities": inputs, "dims": dims,
                  "videos": {k: int(len(v)) for k, v in split.items()}, "world_size": world,
                  "elapsed_s": round(time.time() - started, 2), "history": history,
                  "config": to_dict(cfg), "versions": versions()}
        if rank == 0:
            write_json(run_dir / "metrics.json", result)
            writer.close()
        if world > 1:
            dist.barrier()
        return result
    finally:
        catalog.close()


# -- evaluate / predict -----------------------------------------------------------------------
def _checkpoint_path(run_dir: Path) -> Path:
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).exists():
            return run_dir / name
    raise FileNotFoundError(f"no best.pt or last.pt in {run_dir}: train first (run_pipeline.py train)")


def _check_store(store: FeatureStore, ckpt: dict) -> None:
    infos = store.modalities()
    for layout, dims in ckpt["dims"].items():
        for m, d in dims.items():
            have = infos.get(m).layouts.get(layout) if m in infos else None
            if have != d:
                raise ValueError(f"the model was trained on {m}/{layout} with dim {d}; this store has "
                                 f"{'none' if have is None else have} (extract the same modalities first)")


def _load_runs(run_dirs, device: str, store: FeatureStore) -> list[tuple[torch.nn.Module, dict]]:
    """best.pt (else last.pt) of each run, checked against the store and against each other: an
    ensemble needs one task (classes, multi-label or not)."""
    loaded = [load_model(_checkpoint_path(Path(r)), device) for r in run_dirs]
    first = loaded[0][1]
    for r, (_, ckpt) in zip(run_dirs, loaded):
        _check_store(store, ckpt)
        if ckpt["class_names"] != first["class_names"] or ckpt["multilabel"] != first["multilabel"]:
            raise ValueError(f"{r} was trained on other classes than {run_dirs[0]}: they cannot be ensembled")
    return loaded


def _run_dirs(run_dir) -> list[Path]:
    return [Path(r) for r in ([run_dir] if isinstance(run_dir, (str, Path)) else run_dir)]


def ensemble_dir(out_dir: str | Path, run_dirs: Sequence) -> Path:
    """Where the files of an ensemble of runs go: OUT/ensembles/<run>+<run>+..."""
    return Path(out_dir) / "ensembles" / "+".join(Path(r).name for r in run_dirs)


def _scores(loaded, store, ids, labels, cfg, device: str):
    """(video_ids, probabilities [N, C], mean task loss or None) of one run, or of several as the
    mean of their probabilities (sigmoids / softmaxes), with the loss of that mean."""
    multilabel = loaded[0][1]["multilabel"]
    tcfg, per_run = cfg.train, []
    for model, ckpt in loaded:
        ds = _dataset(store, list(ids), ckpt["inputs"], labels)
        loader = torch.utils.data.DataLoader(ds, batch_size=int(tcfg.get("eval_batch_size", 1024)), collate_fn=collate_batch)
        per_run.append(predict_scores(model, loader, device, multilabel, bool(tcfg.get("amp", False))))
    if len(per_run) == 1:
        got_ids, scores, _, loss = per_run[0]
        return got_ids, scores, loss
    scores = np.mean([s for _, s, _, _ in per_run], 0)
    loss = None
    if labels is not None:
        p, y = np.clip(scores, 1e-7, 1 - 1e-7), labels.astype(np.float64)
        per_video = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(1) if multilabel else -(y * np.log(p)).sum(1)
        loss = float(per_video.mean())
    return per_run[0][0], scores, loss


def run_evaluate(cfg: DictConfig, out_dir: str | Path, run_dir, split: str = "val") -> dict:
    """Metrics of a trained run (best.pt) on `split` (train / val / test / all labeled videos):
    printed as a table and written to RUN/eval-<split>.json. Several runs (a list) are evaluated
    as one ensemble, the mean of their probabilities, written to OUT/ensembles/<a>+<b>/; train /
    val then have to be the same videos for every run (a video one run trained on would be
    scored as unseen)."""
    run_dirs = _run_dirs(run_dir)
    device = resolve_device(cfg.get("device", "auto"))
    catalog, store = open_output(cfg, out_dir)
    try:
        loaded = _load_runs(run_dirs, device, store)
        ckpt = loaded[0][1]
        task = load_labels(catalog)
        if task["class_names"] != ckpt["class_names"]:
            raise ValueError("the catalog's classes differ from the ones the model was trained on")
        row = {vid: i for i, vid in enumerate(task["video_ids"])}
        if split in ("train", "val") and split in ckpt["split_ids"]:
            ids = ckpt["split_ids"][split]
            if any(c["split_ids"].get(split) != ids for _, c in loaded):
                raise ValueError(f"the runs were trained on different {split} splits: an ensemble cannot be scored on them")
        elif split == "all":
            ids = task["video_ids"]
        else:
            splits = [(s or "").lower() for s in task["splits"]]
            ids = [vid for vid, s in zip(task["video_ids"], splits) if s == split]
        ids = [vid for vid in ids if vid in row]
        if not ids:
            raise ValueError(f"no labeled videos in split {split!r}")
        labels = task["labels"][[row[v] for v in ids]]
        _, scores, loss = _scores(loaded, store, ids, labels, cfg, device)
        tcfg = cfg.train
        metrics = compute_metrics(scores, labels, ckpt["multilabel"], float(tcfg.get("threshold", 0.5)),
                                  int(tcfg.get("top_k", 20)))
        metrics["loss"] = loss
        names = [c["model_name"] for _, c in loaded]
        result = {"run": str(run_dirs[0]) if len(run_dirs) == 1 else [str(r) for r in run_dirs], "split": split,
                  "checkpoint_epoch": ckpt["epoch"] if len(run_dirs) == 1 else [c["epoch"] for _, c in loaded],
                  "model": names[0] if len(run_dirs) == 1 else names, "multilabel": ckpt["multilabel"],
                  "metrics": metrics, "config": to_dict(cfg), "versions": versions()}
        target = run_dirs[0] if len(run_dirs) == 1 else ensemble_dir(out_dir, run_dirs)
        write_json(target / f"eval-{split}.json", result)
        _print_table(f"{' + '.join(names)} on {split} ({len(ids)} videos)", metrics)
        return result
    finally:
        catalog.close()


def _print_table(title: str, metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)


def run_predict(cfg: DictConfig, out_dir: str | Path, run_dir: str | Path, output: str | Path, top_k: int | None = 5,
                threshold: float | None = None, video_ids: Sequence[str] | None = None) -> Path:
    """Labels with probabilities per video, one JSON object a line (MultimodalVideoTag style):
    {"video_id": ..., "labels": [[label, prob], ...]} sorted by probability; the top_k best
    (None = all) of those with prob >= threshold (None = no threshold). Default videos: every
    video of the store that has at least one of the model's input modalities. Several runs (a
    list) predict as one ensemble, the mean of their probabilities."""
    output = Path(output)
    device = resolve_device(cfg.get("device", "auto"))
    catalog, store = open_output(cfg, out_dir)
    try:
        loaded = _load_runs(_run_dirs(run_dir), device, store)
        if video_ids is None:
            have = set()
            for _, ckpt in loaded:
                for layout, names in ckpt["inputs"].items():
                    for m in names:
                        have |= {vid for vid, _, _ in catalog.feature_locations(m, layout)}
            video_ids = sorted(have)
        ids, scores, _ = _scores(loaded, store, video_ids, None, cfg, device)
        names = loaded[0][1]["class_names"]
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            for vid, s in zip(ids, scores):
                order = np.argsort(-s, kind="stable")
                if threshold is not None:
                    order = order[s[order] >= threshold]
                if top_k is not None:
                    order = order[:top_k]
                f.write(json.dumps({"video_id": vid, "labels": [[names[j], round(float(s[j]), 6)] for j in order]}) + "\n")
        os.replace(tmp, output)
        return output
    finally:
        catalog.close()


# -- cross-validation -------------------------------------------------------------------------
def run_cross_validation(cfg: DictConfig, out_dir: str | Path, model_name: str, folds: int = 5,
                         run_name: str | None = None) -> dict:
    """k-fold cross-validation over the labeled videos outside the test split (stratified for
    multi-class): one run per fold under OUT/runs/<name>/fold-<i>, then per-fold best validation
    metrics and their mean and standard deviation in OUT/runs/<name>/cv.json."""
    from sklearn.model_selection import KFold, StratifiedKFold

    out_dir = Path(out_dir)
    catalog, _ = open_output(cfg, out_dir)
    try:
        task = load_labels(catalog)
    finally:
        catalog.close()
    splits = np.array([(s or "").lower() for s in task["splits"]])
    pool = np.flatnonzero(splits != "test")
    y = task["labels"][pool].argmax(1)
    if not task["multilabel"] and np.bincount(y)[np.unique(y)].min() >= folds:
        folder = StratifiedKFold(folds, shuffle=True, random_state=int(cfg.seed)).split(pool, y)
    else:
        folder = KFold(folds, shuffle=True, random_state=int(cfg.seed)).split(pool)
    name = run_name or f"{model_name}-cv{folds}"
    per_fold = []
    for i, (tr, va) in enumerate(folder):
        result = _train(cfg, out_dir, model_name, run_name=f"{name}/fold-{i}",
                        fixed_split={"train": pool[tr], "val": pool[va], "test": np.flatnonzero(splits == "test")})
        per_fold.append({"fold": i, "best_epoch": result["best_epoch"], **(result["best"] or {})})
    keys = [k for k, v in per_fold[0].items() if isinstance(v, float) and k not in ("epoch",)]
    summary = {k: {"mean": float(np.mean([f[k] for f in per_fold])), "std": float(np.std([f[k] for f in per_fold]))}
               for k in keys}
    result = {"model": model_name, "folds": folds, "per_fold": per_fold, "summary": summary,
              "monitor": result["monitor"], "config": to_dict(cfg), "versions": versions()}
    if _dist()[0] == 0:
        write_json(out_dir / "runs" / name / "cv.json", result)
    return result


# -- a small entry point (also what torchrun runs in the tests) -------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    from .config import load_config

    p = argparse.ArgumentParser(prog="python -m pipeline.train", description="train / evaluate / predict")
    p.add_argument("command", choices=["train", "evaluate", "predict"])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model", default="nmcl")
    p.add_argument("--run", default=None)
    p.add_argument("--resume", default=None, type=Path)
    p.add_argument("--folds", default=1, type=int)
    p.add_argument("--nproc", default=1, type=int)
    p.add_argument("--split", default="val")
    p.add_argument("--output", default=None, type=Path)
    p.add_argument("--config", default=None, type=Path)
    p.add_argument("overrides", nargs="*")
    a = p.parse_intermixed_args(argv)
    if a.command == "train" and a.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_distributed(a.nproc, list(sys.argv[1:] if argv is None else argv), module="pipeline.train")
    cfg = load_config(a.config, a.overrides)
    if a.command == "train":
        if a.folds > 1:
            run_cross_validation(cfg, a.out, a.model, a.folds, run_name=a.run)
        else:
            run_train(cfg, a.out, a.model, run_name=a.run, resume=a.resume)
    else:   # evaluate / predict: --run a,b for an ensemble
        run_dirs = [a.out / "runs" / r for r in a.run.split(",")]
        if a.command == "evaluate":
            run_evaluate(cfg, a.out, run_dirs, a.split)
        else:
            folder = run_dirs[0] if len(run_dirs) == 1 else ensemble_dir(a.out, run_dirs)
            run_predict(cfg, a.out, run_dirs, a.output or folder / "predictions.jsonl")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
