"""Distributed training with torchrun: `run_pipeline.py train --nproc N` starts N processes.

When torchrun started this process (WORLD_SIZE > 1) the training loop initialises
torch.distributed (nccl on CUDA, gloo on CPU), shards each epoch with DistributedSampler and
wraps the model in DistributedDataParallel. The single-process loop uses the same sampler with
one replica, so the global batches (rank r takes every world-th index of the same permutation)
and therefore the averaged gradients are the same: 2 processes reproduce 1 within float
tolerance (tests/test_train.py). Every rank scores the whole validation set, so early stopping
decides the same everywhere; only rank 0 writes files.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist

ENTRY = Path(__file__).resolve().parent.parent / "run_pipeline.py"


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_worker() -> bool:
    """True in a process torchrun started (the launcher holds the output lock, not its workers)."""
    return "WORLD_SIZE" in os.environ


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


def teardown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj):
    """Rank 0's `obj` on every rank."""
    if rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: Sequence[float], device) -> list[float]:
    """Element-wise sum over the ranks (the identity in one process)."""
    if rank_world()[1] == 1:
        return list(values)
    sums = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    return sums.tolist()


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def launch_distributed(nproc: int, argv: Sequence[str], module: str | None = None,
                       script: str | Path | None = None) -> int:
    """What `python -m torch.distributed.run --standalone --nproc_per_node N <entry> argv...`
    does, and return 0 / 1. The entry is `script` (default: run_pipeline.py at the project root,
    so the workers run `run_pipeline.py train ...`) or `python -m module`; `--nproc N` is removed
    from argv so the workers do not launch again.

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
    entry = ["-m", module] if module else [str(script or ENTRY)]
    launch = get_args_parser().parse_args(["--standalone", f"--nproc_per_node={int(nproc)}", *entry])
    launch.training_script_args = args
    try:
        run(launch)
    except ChildFailedError as e:
        print(f"distributed training failed: {e}", file=sys.stderr)
        return 1
    return 0
