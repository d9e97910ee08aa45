"""Dense optical flow between consecutive frames of a clip, three back-ends behind one function:

    compute_flows(frames, method, device) -> (T-1, h, w, 2) float32 tensor on `device`:
    the forward flow (dx, dy) in pixels from frame t to frame t+1, median-filtered 3x3
    (Wang et al., IJCV 2013, Eq. 1 tracks through the median-filtered flow).

  * "farneback": OpenCV's Farneback (G. Farneback, "Two-frame motion estimation based on
    polynomial expansion", SCIA 2003), CPU only, one pair after the other.
  * "torch": coarse-to-fine dense Lucas-Kanade with warping (`torch_flows` below), plain tensor
    ops, so it runs on the GPU (or the CPU), all frame pairs of the clip as one batch.
  * "raft": torchvision's RAFT (Teed & Deng, "RAFT: Recurrent all-pairs field transforms for
    optical flow", ECCV 2020), raft_small or raft_large, pretrained weights from the torch hub
    cache (`load_raft`), or `random` (untrained, for speed tests only).
  * "auto" (`resolve_method`): raft when its weights file is on disk, else torch on CUDA, else
    farneback on the CPU.

Frames are (T, h, w) uint8 gray or (T, h, w, 3) uint8 RGB, numpy or torch, already at the
working resolution; gray back-ends convert RGB with OpenCV's weights, RAFT repeats gray to RGB.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import hub_checkpoint, sha256_file

METHODS = ("auto", "farneback", "torch", "raft")
RAFT_MODELS = ("raft_small", "raft_large")


# -- choosing a back-end -------------------------------------------------------------------------
def raft_weights_enum(model: str):
    from torchvision.models import optical_flow

    if model not in RAFT_MODELS:
        raise ValueError(f"raft_model must be one of {RAFT_MODELS}, got {model!r}")
    return {"raft_small": optical_flow.Raft_Small_Weights, "raft_large": optical_flow.Raft_Large_Weights}[model]


def raft_weights_path(model: str, weights: str) -> Path | None:
    """Where `weights` (an enum name such as C_T_V2, or a file path) lives on disk; None for
    `random`. Does not download anything."""
    if weights == "random":
        return None
    enum = raft_weights_enum(model)
    if weights in enum.__members__:
        return Path(torch.hub.get_dir()) / "checkpoints" / Path(enum[weights].url).name
    return Path(weights).expanduser()


def resolve_method(method: str, device: str | torch.device, raft_model: str = "raft_small",
                   raft_weights: str = "C_T_V2") -> str:
    """The back-end `method` stands for: itself, or for "auto" on CUDA raft when its weights
    file is on disk (never a download, never random weights), else torch; on the CPU farneback,
    the fastest there (353 pairs/s against torch's 164 and raft_small's 12, bench/flow.py):
    ask for `flow: raft` by name to run RAFT on a CPU."""
    if method not in METHODS:
        raise ValueError(f"flow must be one of {METHODS}, got {method!r}")
    if method != "auto":
        return method
    if torch.device(device).type != "cuda":
        return "farneback"
    path = raft_weights_path(raft_model, raft_weights)
    return "raft" if path is not None and path.is_file() else "torch"


# -- shared pieces -------------------------------------------------------------------------------
def to_gray(frames) -> np.ndarray:
    """(T, h, w[, 3]) uint8 -> (T, h, w) uint8 gray (OpenCV's RGB weights)."""
    import cv2

    frames = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if frames.ndim == 3:
        return frames
    return np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames])


def median3x3(flow: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> each channel median-filtered over 3x3, edges replicated (like
    cv2.medianBlur, and equal to it). The median of the 9 shifted copies comes from a network of
    19 compare-exchanges (`opt_med9` of N. Devillard, "Fast median search: an ANSI C
    implementation", 1998): elementwise min/max only, several times faster on the CPU than
    torch.median over an unfolded window, and deterministic on every device."""
    h, w = flow.shape[-2:]
    p = F.pad(flow, (1, 1, 1, 1), mode="replicate")
    v = [p[..., i:i + h, j:j + w] for i in range(3) for j in range(3)]
    for a, b in ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8),
                 (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2)):
        v[a], v[b] = torch.minimum(v[a], v[b]), torch.maximum(v[a], v[b])
    return v[4]


# -- farneback -----------------------------------------------------------------------------------
def farneback_flows(frames) -> torch.Tensor:
    """(T, h, w[, 3]) uint8 -> (T-1, h, w, 2) float32 CPU tensor. Parameters: 3 pyramid levels,
    9 px window (small: the frames are ~112 px), 3 iterations, polynomial n=5, sigma=1.1 (OpenCV's
    recommended pair for n=5)."""
    import cv2

    gray = to_gray(frames)
    flows = []
    for a, b in zip(gray[:-1], gray[1:]):
        f = cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=3, winsize=9,
                                         iterations=3, poly_n=5, poly_sigma=1.1, flags=0)
        flows.append(np.dstack([cv2.medianBlur(f[..., 0], 3), cv2.medianBlur(f[..., 1], 3)]))
    return torch.from_numpy(np.stack(flows).astype(np.float32))


# -- torch: coarse-to-fine Lucas-Kanade with warping ---------------------------------------------
def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, C, h, w) separable Gaussian, edges replicated. Written as a weighted sum of shifted
    slices instead of conv2d: each output pixel is then computed by the same elementwise ops
    whatever the batch size (conv2d gives no such guarantee: its kernel may change with the
    batch size), so a pair's flow does not depend on the other pairs of the batch, bit for bit.
    It is also faster than a depthwise conv2d on the CPU at these sizes (measured)."""
    r = max(1, int(round(2.5 * sigma)))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).tolist()
    h, w = x.shape[-2:]
    x = F.pad(x, (r, r, 0, 0), mode="replicate")
    x = sum(k[i] * x[..., :, i:i + w] for i in range(2 * r + 1))
    x = F.pad(x, (0, 0, r, r), mode="replicate")
    return sum(k[i] * x[..., i:i + h, :] for i in range(2 * r + 1))


def gradients(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, h, w) -> d/dx, d/dy with the 5-point derivative (f(x-2) - 8 f(x-1) + 8 f(x+1) -
    f(x+2)) / 12, found best by Sun, Roth & Black (CVPR 2010): more accurate than central
    differences on textures of a few pixels' period. Edges replicated."""
    p = F.pad(img, (2, 2, 2, 2), mode="replicate")
    h, w = img.shape[-2:]
    c = p[..., 2:2 + h, :]
    gx = (c[..., 0:w] - 8 * c[..., 1:1 + w] + 8 * c[..., 3:3 + w] - c[..., 4:4 + w]) / 12
    c = p[..., :, 2:2 + w]
    gy = (c[..., 0:h, :] - 8 * c[..., 1:1 + h, :] + 8 * c[..., 3:3 + h, :] - c[..., 4:4 + h, :]) / 12
    return gx, gy


def warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """img (N, 1, h, w) sampled at x + flow(x), flow (N, 2, h, w) in pixels: bilinear, edges
    replicated (points warped out of the frame see the border instead of black)."""
    n, _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=img.device, dtype=img.dtype),
                            torch.arange(w, device=img.device, dtype=img.dtype), indexing="ij")
    gx = (xs + flow[:, 0]) * (2 / max(w - 1, 1)) - 1  # align_corners=True: -1 / 1 = pixel centres 0 / w-1
    gy = (ys + flow[:, 1]) * (2 / max(h - 1, 1)) - 1
    return F.grid_sample(img, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border",
                         align_corners=True)


def downsample(img: torch.Tensor) -> torch.Tensor:
    """Half size: Gaussian pre-smoothing (sigma 1, against aliasing) then 2x2 averaging."""
    return F.avg_pool2d(gaussian_blur(img, 1.0), 2, ceil_mode=True)


def torch_flows(frames, device: str | torch.device = "cpu", window_sigma: float = 2.0,
                iterations: int = 3, min_size: int = 12, max_levels: int = 5,
                regularisation: float = 1e-4) -> torch.Tensor:
    """(T, h, w[, 3]) uint8 -> (T-1, h, w, 2) float32 on `device`. Dense Lucas-Kanade (Lucas &
    Kanade, IJCAI 1981), coarse to fine with warping (Bouguet's pyramidal scheme, 2001), all
    pairs of the clip batched.

    At each pyramid level, starting from the flow u of the coarser level (upsampled, doubled),
    `iterations` times: warp the second frame back, I2w(x) = I2(x + u(x)), and solve for each
    pixel the Gauss-Newton step du of the brightness constancy residual summed over a Gaussian
    window G (sigma `window_sigma`), the LK normal equations

        [G*(Ix Ix) + a   G*(Ix Iy)    ] du = - [G*(Ix It)]         It = I2w - I1
        [G*(Ix Iy)       G*(Iy Iy) + a]        [G*(Iy It)]         (Ix, Iy) = grad (I1 + I2w) / 2

    then u += du and a 3x3 median filter of u. Choices, and why:
      * gradients of the average of I1 and the warped I2 (a symmetric linearisation; Sun, Roth
        & Black, "Secrets of optical flow estimation", CVPR 2010, blend the derivatives of both
        frames the same way) converge in fewer warps than gradients of I1 alone;
      * `a` (Tikhonov term, intensities in [0, 1]) keeps the 2x2 system solvable in textureless
        areas, where du goes to 0 and u keeps the coarser level's estimate instead of blowing up;
        it is far below the structure tensor of a textured window (gradients of 0.05 per px
        give 2.5e-3), so it does not bias those;
      * the median filter after every warp (Sun et al.'s main "secret") removes outliers before
        they are propagated to the finer level;
      * 3 warps per level: more do not lower the error on textured test images (the 3x3 median
        and the uint8 rounding of the frames set the floor, about 0.05-0.1 px), they only cost;
      * levels: halve until the short side would drop below `min_size` px (a 112 px frame gets
        4 levels; measured on textured frames, motions up to 16 px per frame are recovered to
        0.1 px, 20 px and more are not).
    Deterministic: only elementwise ops, shifted-slice sums, min/max and grid_sample (whose
    forward pass is deterministic on CPU and CUDA); the same result for a pair alone or in a batch.
    """
    if isinstance(frames, torch.Tensor) and frames.ndim == 3:  # gray already (maybe on the GPU)
        gray = frames
    else:
        gray = torch.from_numpy(to_gray(frames))
    img = gray.to(device).float().div_(255)[:, None]                         # (T, 1, h, w)
    flow = None
    for level in reversed(pyramid(img, min_size, max_levels)):
        i1, i2 = level[:-1], level[1:]
        lh, lw = i1.shape[-2:]
        if flow is None:
            flow = torch.zeros(len(i1), 2, lh, lw, device=img.device)
        else:  # the coarser estimate, upsampled, in this level's pixels
            scale = torch.tensor([lw / flow.shape[-1], lh / flow.shape[-2]], device=img.device)
            flow = F.interpolate(flow, size=(lh, lw), mode="bilinear", align_corners=False) * scale[None, :, None, None]
        for _ in range(iterations):
            flow = median3x3(flow + lucas_kanade_step(i1, warp(i2, flow), window_sigma, regularisation))
    return flow.permute(0, 2, 3, 1).contiguous()


def pyramid(img: torch.Tensor, min_size: int, max_levels: int) -> list[torch.Tensor]:
    """[img, img / 2, ...]: halved until the short side would drop below `min_size` px, at most
    `max_levels` levels."""
    h, w = img.shape[-2:]
    levels = 1
    while levels < max_levels and min(h, w) / 2 ** levels >= min_size:
        levels += 1
    out = [img]
    for _ in range(levels - 1):
        out.append(downsample(out[-1]))
    return out


def lucas_kanade_step(i1: torch.Tensor, i2w: torch.Tensor, window_sigma: float, regularisation: float) -> torch.Tensor:
    """(N, 2, h, w) Gauss-Newton step du of the LK normal equations of `torch_flows` between the
    first frames i1 and the warped second frames i2w (N, 1, h, w)."""
    ix, iy = gradients((i1 + i2w) / 2)
    it = i2w - i1
    a11, a12, a22, b1, b2 = gaussian_blur(torch.cat([ix * ix, ix * iy, iy * iy, ix * it, iy * it], 1),
                                          window_sigma).unbind(1)
    a11, a22 = a11 + regularisation, a22 + regularisation
    det = a11 * a22 - a12 * a12
    du = (a12 * b2 - a22 * b1) / det
    dv = (a12 * b1 - a11 * b2) / det
    return torch.stack([du, dv], 1)


# -- RAFT ----------------------------------------------------------------------------------------
def load_raft(model: str = "raft_small", weights: str = "C_T_V2", seed: int = 0):
    """(network in eval mode on the CPU, info) for torchvision's RAFT. `weights`: a Weights enum
    name (C_T_V2 ...) -> the file from the torch hub cache, `torch.hub.get_dir()/checkpoints/
    <file>` (downloaded when online, sha256 prefix checked, WeightsNotFound naming the file and the
    folder otherwise); a path to a state dict with torchvision's keys; or `random` (untrained,
    seeded: for speed tests only). Loaded strictly: a wrong file is an error, not half a model.
    info = {"model", "weights", "weights_file", "sha256", "random_weights"}."""
    import torchvision

    enum = raft_weights_enum(model)
    with torch.random.fork_rng():  # `random` must be the same network on every run
        torch.manual_seed(seed)
        net = getattr(torchvision.models.optical_flow, model)(weights=None)
    info = {"model": f"torchvision.{model}", "weights": "random", "weights_file": None, "sha256": None,
            "random_weights": weights == "random"}
    if weights != "random":
        if weights in enum.__members__:
            path, wid = hub_checkpoint(enum[weights].url), f"{model}.{weights}"
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"raft_weights: {weights!r} is neither a {enum.__name__} name "
                                        f"({', '.join(enum.__members__)}), 'random', nor an existing file")
            wid = str(path)
        net.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True), strict=True)
        info.update(weights=wid, weights_file=str(path), sha256=sha256_file(path))
    return net.eval(), info


RAFT_MIN_SIDE = 128  # torchvision's correlation pyramid needs 1/8-resolution maps of >= 16 px


@torch.inference_mode()
def raft_flows(frames, net: torch.nn.Module, device: str | torch.device = "cpu", iterations: int = 12,
               batch_pairs: int = 16) -> torch.Tensor:
    """(T, h, w[, 3]) uint8 -> (T-1, h, w, 2) float32 on `device`, RAFT's last refinement.
    Preprocessing is the weights' own transform (torchvision's OpticalFlow preset, the same for
    every RAFT weight: uint8 -> [-1, 1]). Frames with a side below 128 px (112 px trajectory
    frames) are first upscaled bilinearly to a short side of 128, the least RAFT accepts, and the
    flow is scaled back. Then they are padded to a multiple of 8 (RAFT works at 1/8 resolution)
    by replicating the edges, split evenly between both sides as in RAFT's InputPadder, and the
    flow is cropped back. `net` must already be on `device`."""
    from torchvision.models.optical_flow import Raft_Small_Weights

    preprocess = Raft_Small_Weights.DEFAULT.transforms()
    x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    x = x.to(device)
    if x.ndim == 3:  # gray: RAFT's encoders want 3 channels
        x = x[..., None].expand(*x.shape, 3)
    x = x.permute(0, 3, 1, 2)                                               # (T, 3, h, w) uint8
    h, w = x.shape[-2:]
    scale = max(1.0, RAFT_MIN_SIDE / min(h, w))
    sh, sw = max(RAFT_MIN_SIDE, round(h * scale)), max(RAFT_MIN_SIDE, round(w * scale))
    ph, pw = -sh % 8, -sw % 8
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)

    def prepare(img):
        if (sh, sw) != (h, w):
            img = F.interpolate(img, size=(sh, sw), mode="bilinear", align_corners=False)
        return F.pad(img, pad, mode="replicate")

    out = []
    for s in range(0, len(x) - 1, batch_pairs):
        e = min(s + batch_pairs, len(x) - 1)
        a, b = preprocess(x[s:e], x[s + 1:e + 1])
        out.append(net(prepare(a), prepare(b), num_flow_updates=iterations)[-1])
    flow = torch.cat(out)[..., pad[2]:pad[2] + sh, pad[0]:pad[0] + sw].float()
    if (sh, sw) != (h, w):  # back to the frames' pixels: resample, then rescale the vectors
        flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
        flow = flow * torch.tensor([w / sw, h / sh], device=flow.device)[None, :, None, None]
    return median3x3(flow).permute(0, 2, 3, 1).contiguous()


# -- the one entry point -------------------------------------------------------------------------
def compute_flows(frames, method: str, device: str | torch.device = "cpu", raft: torch.nn.Module | None = None,
                  raft_iterations: int = 12) -> torch.Tensor:
    """(T, h, w[, 3]) uint8 frames -> (T-1, h, w, 2) float32 forward flows (dx, dy) in pixels, t ->
    t+1, median-filtered 3x3, on `device`. `method` is farneback | torch | raft (resolve "auto"
    first with `resolve_method`); raft needs the network from `load_raft`, already on `device`."""
    if method == "farneback":
        return farneback_flows(frames).to(device)
    if method == "torch":
        return torch_flows(frames, device)
    if method == "raft":
        if raft is None:
            raise ValueError("flow method raft needs the network: pass raft=load_raft(...)[0].to(device)")
        return raft_flows(frames, raft, device, raft_iterations)
    raise ValueError(f"flow method must be farneback | torch | raft (resolve 'auto' first), got {method!r}")
