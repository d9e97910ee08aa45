"""Standardized inputs (`train.standardize: true`): every input dimension of every modality is
shifted and scaled by the mean and standard deviation of the training features before the model
sees it,

    x' = (x - mean_m) / std_m        (per dimension d of modality m; std 0 -> 1)

Why: features from different extractors live on different scales (a random-weight ResNet's
pooled vector has a norm near 1,000, dense trajectories' near 2), and a model that concatenates
them learns from the large one only (the paper Early Fusion, Early+Att and NMCL rows of
bench/e2e_fight.py predicted one class for that reason). The statistics are computed once, on the
training split only (`pipeline.task.input_stats`), saved in the checkpoint's `extra` and applied
here, inside the model, so evaluate, predict and serve use the same numbers and never
read the training data again. Missing modalities and padded steps stay zero.

    model = Standardized(inner, {"pooled": {m: (mean[D], std[D])}, "sequence": {m: (mean, std)}})
    model(batch)   # == inner(batch with every present input standardized)
"""
from __future__ import annotations

import torch
from torch import nn

from .common import _sequence


class Standardized(nn.Module):
    """`model` reading standardized inputs. Attributes the wrapper does not have (a model's
    intermediates, MART's `set_progress`, ...) are the inner model's."""

    def __init__(self, model: nn.Module, stats: dict):
        super().__init__()
        self.model = model
        self.standardized: list[tuple[str, str]] = []   # (layout, modality) of buffer i
        for layout in ("pooled", "sequence"):
            for m, (mean, std) in sorted(stats.get(layout, {}).items()):
                std, i = torch.as_tensor(std, dtype=torch.float32), len(self.standardized)
                # Buffers, not parameters: in the state dict (checkpoint round trip), never trained.
                self.register_buffer(f"mean_{i}", torch.as_tensor(mean, dtype=torch.float32))
                self.register_buffer(f"scale_{i}", 1.0 / torch.where(std > 1e-6, std, torch.ones_like(std)))
                self.standardized.append((layout, m))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    def standardize(self, batch: dict) -> dict:
        out = {**batch, "pooled": dict(batch.get("pooled", {})), "sequence": dict(batch.get("sequence", {}))}
        for i, (layout, m) in enumerate(self.standardized):
            if m not in batch.get(layout, {}):
                continue
            x = (batch[layout][m] - getattr(self, f"mean_{i}")) * getattr(self, f"scale_{i}")
            if layout == "pooled":
                keep = batch["present"][m][:, None]
            else:   # padded steps (and aligned steps without data) stay zero
                keep = _sequence(batch, m)[1]
                if m in batch.get("step_present", {}):
                    keep = keep & batch["step_present"][m]
                keep = (keep & batch["present"][m][:, None])[..., None]
            out[layout][m] = x * keep.to(x.dtype)
        return out

    def forward(self, batch: dict) -> dict:
        return self.model(self.standardize(batch))
