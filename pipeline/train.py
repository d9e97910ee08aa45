"""Train a model of `models/` on the feature store: `run_pipeline.py train --model NAME`.

    run_train(cfg, out, "nmcl")    -> OUT/runs/<run>/{best.pt, last.pt, metrics.json, config.yaml,
                                      events.out.tfevents.*}

The loop, in the order a reader meets it: `_build` (task, datasets, model, optimizer; or the
state of a checkpoint to resume), then per epoch `_train_epoch`, `_validate` (early stopping on
`train.monitor`) and `_save` (last.pt, and best.pt when it improved). The task and its splits
come from `task.py`, checkpoints from `checkpoint.py`, the torchrun setup from
`distributed.py`; evaluation and prediction are in `evaluate.py`, k-fold cross-validation in
`crossval.py`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .checkpoint import pack_extra, read_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state, \
    unpack_extra
from .config import resolve_device, to_dict, versions
from .distributed import all_sum, barrier, broadcast, rank_world, setup_distributed
from .errors import UsageError
from .evaluate import autocast, eval_loader, predict_scores
from .io import write_json, write_text
from .metrics import compute_metrics, default_monitor
from .output import open_output
from .task import input_stats, label_extra, load_labels, make_dataset, mixup, model_inputs, split_indices, to_device


def make_optimizer(params, tcfg):
    name = tcfg.optimizer.lower()
    lr, wd = float(tcfg.lr), float(tcfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(tcfg.momentum))
    if name == "rmsprop":   # Paddle's RMSPropOptimizer defaults (rho 0.95, epsilon 1e-6), L2 in the gradient
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd, alpha=0.95, eps=1e-6)
    raise UsageError(f"unknown train.optimizer {name!r} (adamw | adam | sgd | rmsprop)")


def make_scheduler(optimizer, tcfg, steps_per_epoch: int):
    """Per-step learning-rate factor: linear warmup, then cosine to 0 (or constant)."""
    total = max(1, int(tcfg.epochs) * steps_per_epoch)
    warmup = int(float(tcfg.warmup_epochs) * steps_per_epoch)
    kind = tcfg.scheduler
    if kind not in ("cosine", "none", None):
        raise UsageError(f"unknown train.scheduler {kind!r} (cosine | none)")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def model_config(cfg: DictConfig, model_name: str):
    """cfg.models.<name>; an unknown name is a usage error listing the known ones, a mistyped key
    in the section a ConfigError, both before any data is read."""
    from models import available_models, resolved_config

    if model_name not in available_models() or model_name not in cfg.models:
        known = sorted(set(available_models()) & set(cfg.models))
        raise UsageError(f"unknown model {model_name!r}; choose one of {', '.join(known)}")
    resolved_config(model_name, cfg.models[model_name])   # raises on a key the model does not declare
    return cfg.models[model_name]


def _unique_run_dir(runs: Path, name: str) -> Path:
    path, i = runs / name, 1
    while (path / "last.pt").exists() or (path / "metrics.json").exists():
        i += 1
        path = runs / f"{name}-{i}"
    return path


@dataclass
class Loop:
    """Everything one training run holds; built by `_build`, advanced one epoch at a time."""
    cfg: DictConfig
    model_name: str
    device: str
    task: dict
    split: dict
    inputs: dict
    dims: dict
    model: torch.nn.Module
    net: torch.nn.Module          # the model, or its DistributedDataParallel wrapper
    ema: object                   # AveragedModel or None
    loader: object
    sampler: object
    val_loader: object
    optimizer: object
    scheduler: object
    monitor: str
    meta: dict
    run_dir: Path = None
    writer: object = None
    start_epoch: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    bad: int = 0
    history: list = field(default_factory=list)
    step: int = 0

    @property
    def evaluated(self) -> torch.nn.Module:
        """What validation, best.pt and predictions use: the EMA weights when train.ema > 0."""
        return self.model if self.ema is None else self.ema.module


def _data(cfg, store, task, split, model_cfg, world: int):
    """(inputs, dims, train loader, its sampler, val loader)."""
    from .dataset import collate_batch

    tcfg = cfg.train
    ids, y = np.array(task["video_ids"]), task["labels"]
    inputs, dims = model_inputs(store, model_cfg, tcfg.modalities, bool(tcfg.use_completed))
    train_ds = make_dataset(store, ids[split["train"]], inputs, y[split["train"]])
    val_ds = make_dataset(store, ids[split["val"]], inputs, y[split["val"]])
    batch_size = int(tcfg.batch_size)
    if batch_size % world:
        raise UsageError(f"train.batch_size={batch_size} must be divisible by the {world} processes")
    rank = rank_world()[0]
    # The same sampler with one replica in a single process: identical global batches (distributed.py).
    sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True,
                                                  seed=int(cfg.seed))
    loader = torch.utils.data.DataLoader(train_ds, batch_size=batch_size // world, sampler=sampler,
                                         collate_fn=collate_batch, num_workers=int(tcfg.num_workers))
    return inputs, dims, loader, sampler, eval_loader(val_ds, tcfg)


def _model(cfg, model_name, model_cfg, dims, task, extra, device, ckpt):
    """(model, EMA or None). Exponential moving average of the weights (train.ema = its decay
    per step, 0 = off): validation, best.pt and everything downstream use the average; the raw
    weights the optimizer works on are kept too ("train_model") so a resumed run goes on exactly."""
    from models import build_model

    seed_everything(int(cfg.seed))
    model = build_model(model_name, model_cfg, dims, len(task["class_names"]), task["multilabel"], extra).to(device)
    ema = None
    if float(cfg.train.ema) > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(cfg.train.ema)), use_buffers=True)
    if ckpt is not None:
        model.load_state_dict(ckpt.get("train_model", ckpt["model"]))   # train_model: only saved with EMA
        if ema is not None:
            ema.module.load_state_dict(ckpt["model"])
            ema.n_averaged.fill_(1)
    return model, ema


def _task_split(cfg, catalog, fixed_split):
    task = load_labels(catalog)
    if fixed_split is not None:   # cross-validation folds
        return task, {k: np.array(v) for k, v in fixed_split.items()}
    return task, split_indices(task, float(cfg.train.val_fraction), int(cfg.seed))


def _build(cfg, catalog, store, model_name, resume, fixed_split) -> Loop:
    tcfg = cfg.train
    model_cfg = model_config(cfg, model_name)
    if tcfg.keep not in ("best", "last"):   # before any data is read, as model_config's checks
        raise UsageError(f"train.keep must be best or last; got {tcfg.keep!r}")
    device = setup_distributed(resolve_device(cfg.device))
    world = rank_world()[1]
    task, split = _task_split(cfg, catalog, fixed_split)
    inputs, dims, loader, sampler, val_loader = _data(cfg, store, task, split, model_cfg, world)
    ckpt = read_checkpoint(resume) if resume is not None else None
    if ckpt is not None and ckpt["model_name"] != model_name:
        raise UsageError(f"resume checkpoint is a {ckpt['model_name']} run, not {model_name}")
    extra = unpack_extra(ckpt["extra"]) if ckpt is not None else \
        label_extra(model_name, model_cfg, task["class_names"], task["labels"][split["train"]], device)
    if ckpt is None and bool(tcfg.standardize):   # train split only; applied inside the model (models/standardize.py)
        extra["input_stats"] = input_stats(loader.dataset)
    model, ema = _model(cfg, model_name, model_cfg, dims, task, extra, device, ckpt)
    optimizer = make_optimizer(model.parameters(), tcfg)
    scheduler = make_scheduler(optimizer, tcfg, len(loader))
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None,
            find_unused_parameters=bool(tcfg.ddp_find_unused))
    monitor = tcfg.monitor if tcfg.monitor not in (None, "auto") else default_monitor(task["multilabel"], int(tcfg.metric_k))
    ids = np.array(task["video_ids"])
    meta = {"model_name": model_name, "model_cfg": to_dict(model_cfg), "dims": dims, "inputs": inputs,
            "class_names": task["class_names"], "multilabel": task["multilabel"], "extra": pack_extra(extra),
            "config": to_dict(cfg), "versions": versions(),
            "split_ids": {k: ids[v].tolist() for k, v in split.items()}, "monitor": monitor}
    loop = Loop(cfg, model_name, device, task, split, inputs, dims, model, net, ema, loader, sampler, val_loader,
                optimizer, scheduler, monitor, meta)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        loop.start_epoch, loop.best, loop.best_epoch = ckpt["epoch"] + 1, ckpt["best"], ckpt["best_epoch"]
        loop.bad, loop.history = ckpt["bad_epochs"], ckpt["history"]
        set_rng_state(ckpt["rng"])
    loop.step = loop.start_epoch * len(loader)
    return loop


def _open_run_dir(loop: Loop, out_dir: Path, run_name, resume) -> None:
    """OUT/runs/<name> (a fresh `<model>-N` when unnamed; the checkpoint's folder when resuming),
    the same on every rank; rank 0 writes config.yaml and opens the TensorBoard writer."""
    if run_name is not None:
        run_dir = out_dir / "runs" / run_name
    elif resume is not None:
        resume = Path(resume)
        run_dir = resume if resume.is_dir() else resume.parent
    else:
        run_dir = _unique_run_dir(out_dir / "runs", loop.model_name)
    loop.run_dir = Path(broadcast(str(run_dir)))
    if rank_world()[0] == 0:
        write_text(loop.run_dir / "config.yaml", OmegaConf.to_yaml(loop.cfg))
        from torch.utils.tensorboard import SummaryWriter
        loop.writer = SummaryWriter(str(loop.run_dir))


def _train_step(loop: Loop, batch: dict, mixup_alpha: float, clip) -> float:
    from models.common import task_loss

    batch = to_device(batch, loop.device)
    if mixup_alpha > 0:
        batch = mixup(batch, mixup_alpha)
    with autocast(loop.device, bool(loop.cfg.train.amp)):
        out = loop.net(batch)
    loss = task_loss(out["logits"].float(), batch["labels"], loop.task["multilabel"]) + out["aux_loss"].float()
    loop.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(loop.model.parameters(), float(clip))
    loop.optimizer.step()
    loop.scheduler.step()
    if loop.ema is not None:
        loop.ema.update_parameters(loop.model)
    if loop.writer is not None and loop.step % int(loop.cfg.train.log_every) == 0:
        loop.writer.add_scalar("train/loss", float(loss.detach()), loop.step)
        for name, value in out["losses"].items():
            loop.writer.add_scalar(f"train/{name}", float(value.detach()), loop.step)
        loop.writer.add_scalar("train/lr", loop.scheduler.get_last_lr()[0], loop.step)
    loop.step += 1
    return float(loss.detach()) * len(batch["video_ids"])


def _train_epoch(loop: Loop, epoch: int, show: bool) -> float:
    """One pass over the training split; the mean training loss over every rank's share."""
    from .progress import video_progress

    tcfg = loop.cfg.train
    loop.sampler.set_epoch(epoch)
    if hasattr(loop.model, "set_progress"):   # schedules inside a model (MART's masking ratio)
        loop.model.set_progress(epoch / max(1, int(tcfg.epochs)))
    loop.net.train()
    total, count = 0.0, 0
    label = f"{loop.model_name} epoch {epoch + 1}/{tcfg.epochs}"
    with video_progress(label, len(loop.loader), show, unit="batches") as advance:
        for batch in loop.loader:
            total += _train_step(loop, batch, float(tcfg.mixup), tcfg.grad_clip)
            count += len(batch["video_ids"])
            advance(1)
    total, count = all_sum([total, float(count)], loop.device)
    return total / max(1.0, count)


def _validate(loop: Loop, epoch: int, train_loss: float) -> tuple[dict, bool]:
    """Score the validation split; update early stopping and the history. (metrics, improved)"""
    tcfg = loop.cfg.train
    _, scores, labels, val_loss = predict_scores(loop.evaluated, loop.val_loader, loop.device,
                                                 loop.task["multilabel"], bool(tcfg.amp))
    metrics = compute_metrics(scores, labels, loop.task["multilabel"], float(tcfg.threshold), int(tcfg.metric_k),
                              tcfg.hit_at)
    # keep: last (a refit whose val split is inside its training data): every epoch is the "best"
    improved = metrics[loop.monitor] > loop.best or tcfg.keep == "last"
    if improved:
        loop.best, loop.best_epoch, loop.bad = metrics[loop.monitor], epoch, 0
    else:
        loop.bad += 1
    loop.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, **metrics})
    if loop.writer is not None:
        for k, v in loop.history[-1].items():
            if isinstance(v, float) and math.isfinite(v):
                loop.writer.add_scalar(f"val/{k}" if k != "train_loss" else "train/epoch_loss", v, epoch)
    return metrics, improved


def _save(loop: Loop, epoch: int, metrics: dict, improved: bool) -> None:
    """last.pt every epoch, best.pt when the monitored metric improved (rank 0 only)."""
    weights = {"model": loop.evaluated.state_dict()} | ({} if loop.ema is None else {"train_model": loop.model.state_dict()})
    state = {**loop.meta, **weights, "optimizer": loop.optimizer.state_dict(),
             "scheduler": loop.scheduler.state_dict(), "epoch": epoch, "best": loop.best,
             "best_epoch": loop.best_epoch, "bad_epochs": loop.bad, "history": loop.history, "rng": rng_state(),
             "metrics": metrics}
    if hasattr(loop.evaluated, "artifacts"):   # MARNet: its GNN's correlation matrices + label representations
        state["extra"] = {**state["extra"], "label_graph": loop.evaluated.artifacts()}
    save_checkpoint(loop.run_dir / "last.pt", state)
    if improved:
        save_checkpoint(loop.run_dir / "best.pt", state)


def _epochs(loop: Loop) -> bool:
    """Run epochs until `train.epochs`, early stopping (`train.patience`) or
    `train.stop_after_epochs` (time-sliced jobs: stop here, resume later). True if stopped early."""
    from rich.console import Console

    tcfg = loop.cfg.train
    rank = rank_world()[0]
    show = bool(tcfg.progress) and rank == 0
    console = Console()
    for ran, epoch in enumerate(range(loop.start_epoch, int(tcfg.epochs)), start=1):
        train_loss = _train_epoch(loop, epoch, show)
        metrics, improved = _validate(loop, epoch, train_loss)
        if show:
            console.print(f"epoch {epoch + 1}: train loss {train_loss:.4f}  val loss {loop.history[-1]['val_loss']:.4f}  "
                          f"{loop.monitor} {metrics[loop.monitor]:.4f}{'  *' if improved else ''}")
        if rank == 0:
            _save(loop, epoch, metrics, improved)
        if loop.bad >= int(tcfg.patience):
            return True
        if tcfg.stop_after_epochs and ran >= int(tcfg.stop_after_epochs):
            return False
    return False


def run_train(cfg: DictConfig, out_dir: str | Path, model_name: str, run_name: str | None = None,
              resume: str | Path | None = None, fixed_split: dict | None = None) -> dict:
    """Train `model_name` on the store of `out_dir`; returns the metrics.json content.
    `fixed_split` ({"train", "val", "test"} task row indices) replaces the catalog's splits
    (cross-validation folds, the held-out test split of `run`)."""
    out_dir = Path(out_dir)
    catalog, store = open_output(cfg, out_dir)
    started = time.time()
    try:
        loop = _build(cfg, catalog, store, model_name, resume, fixed_split)
        _open_run_dir(loop, out_dir, run_name, resume)
        stopped_early = _epochs(loop)
        h = loop.history
        result = {"run_dir": str(loop.run_dir), "model": model_name, "monitor": loop.monitor,
                  "best_epoch": loop.best_epoch, "best": next((e for e in h if e["epoch"] == loop.best_epoch), None),
                  "epochs_run": len(h), "stopped_early": stopped_early, "multilabel": loop.task["multilabel"],
                  "num_classes": len(loop.task["class_names"]), "modalities": loop.inputs, "dims": loop.dims,
                  "videos": {k: int(len(v)) for k, v in loop.split.items()}, "world_size": rank_world()[1],
                  "elapsed_s": round(time.time() - started, 2), "history": h,
                  "config": to_dict(cfg), "versions": versions()}
        if rank_world()[0] == 0:
            write_json(loop.run_dir / "metrics.json", result)
            loop.writer.close()
        barrier()
        return result
    finally:
        catalog.close()
