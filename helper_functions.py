"""Shared helpers for the Diffusion Playground notebooks.

Sections, in the order the notebooks use them: setup, data, noising, schedules and the forward process, the U-Net,
training, sampling, measuring, plotting and files, and last the optional fast paths (bfloat16, CUDA graphs).
Every function takes what it needs as arguments; nothing here reads a notebook's globals.

Names: T is the number of diffusion timesteps the model was trained on, `steps` the number a sampler takes; eps is
the noise of the forward process (q_sample), z the fresh noise of a reverse step (p_sample).
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import random
import socket
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from PIL import Image
from torchvision.utils import make_grid
from tqdm import tqdm

PROJECT_DIR = Path(__file__).resolve().parent
DATA_DIR = PROJECT_DIR / "data"          # shipped files: the data subset, the weights, the classifier, the figures
RUNS_DIR = PROJECT_DIR / "runs"          # git-ignored: what a reader's own runs write
SUBSET_PATH = DATA_DIR / "mnist_5k.npz"
SHIPPED_WEIGHTS_PATH = DATA_DIR / "ddpm_mnist_ema.pt"
SHIPPED_GUIDED_WEIGHTS_PATH = DATA_DIR / "guided_mnist_ema.pt"
CLASSIFIER_PATH = DATA_DIR / "mnist_classifier.pt"

SMOKE_TEST_ENV = "SMOKE_TEST"
OFFLINE_DATA_ENV = "PLAYGROUND_OFFLINE_DATA"
FIGURE_DPI = 120


# ----------------------------------------------------------------------------- setup


def is_smoke_test(environ: dict | None = None) -> bool:
    """True when SMOKE_TEST=1 or CI is set: the notebooks then shrink sizes, never the code path."""
    environ = os.environ if environ is None else environ
    return environ.get(SMOKE_TEST_ENV) == "1" or "CI" in environ


def choose_device(verbose: bool = True) -> torch.device:
    """Pick cuda, then mps, then cpu, and print the choice on one line."""
    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    if verbose:
        print(f"Using device: {device}")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices) so that a run repeats."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- data

DATASET_CLASSES = {
    "mnist": torchvision.datasets.MNIST,
    "fashion_mnist": torchvision.datasets.FashionMNIST,
}


def offline_data_forced(environ: dict | None = None) -> bool:
    """True when PLAYGROUND_OFFLINE_DATA=1 asks for the shipped subset instead of a download."""
    environ = os.environ if environ is None else environ
    return environ.get(OFFLINE_DATA_ENV) == "1"


def load_mnist_subset(path: Path | str = SUBSET_PATH) -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped 5,000 real MNIST digits: images (N, 1, 28, 28) in [0, 1] and labels (N,)."""
    with np.load(path) as archive:
        images = torch.from_numpy(archive["images"]).float().div(255.0).unsqueeze(1)
        labels = torch.from_numpy(archive["labels"]).long()
    return images, labels


def _host_reachable(url: str, timeout: float) -> bool:
    """Whether a TCP connection to url's host opens within timeout seconds (DNS included)."""
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result = {"ok": False}

    def probe() -> None:
        try:
            with socket.create_connection((parsed.hostname, port), timeout=timeout):
                result["ok"] = True
        except OSError:
            pass

    # getaddrinfo ignores socket timeouts, so the probe runs in a thread we can stop waiting for.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result["ok"]


def load_dataset(
    name: str = "mnist",
    train: bool = True,
    root: Path | str = DATA_DIR / "torchvision",
    force_subset: bool | None = None,
    timeout: float = 3.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) in [0, 1] and labels (N,): torchvision's data set, or the shipped 5k subset offline.

    force_subset=True (or PLAYGROUND_OFFLINE_DATA=1 when force_subset is None) skips the network.
    """
    if name not in DATASET_CLASSES:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASET_CLASSES)}")
    if force_subset is None:
        force_subset = offline_data_forced()
    dataset_class = DATASET_CLASSES[name]
    root = Path(root)

    def subset(reason: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name != "mnist":
            raise RuntimeError(
                f"{name} is not shipped with the project and could not be loaded ({reason}); "
                "connect to the internet once so torchvision can download it, or use name='mnist'"
            )
        print(f"Using the shipped 5,000-digit MNIST subset ({reason}).")
        return load_mnist_subset()

    if force_subset:
        return subset(f"{OFFLINE_DATA_ENV}=1 or force_subset=True")
    try:  # already downloaded earlier: no network needed
        dataset = dataset_class(root=str(root), train=train, download=False)
    except RuntimeError:
        dataset = None
    if dataset is None:
        mirror = dataset_class.mirrors[0]
        if not _host_reachable(mirror, timeout):
            return subset(f"no network: {urllib.parse.urlparse(mirror).hostname} is unreachable")
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout * 10)  # a stalled download fails instead of hanging
        try:
            dataset = dataset_class(root=str(root), train=train, download=True)
        except Exception as error:  # any download or parse failure falls back, with the reason printed
            return subset(f"torchvision could not download {name}: {type(error).__name__}")
        finally:
            socket.setdefaulttimeout(previous_timeout)
    images = dataset.data.float().div(255.0).unsqueeze(1)
    labels = torch.as_tensor(dataset.targets).long()
    print(f"Loaded {name} ({'train' if train else 'test'}) through torchvision: {len(images):,} images.")
    return images, labels


def take_subset(
    images: torch.Tensor, labels: torch.Tensor, count: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random subset of count images (all of them if count is larger), class mix preserved on average."""
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)[: min(count, len(images))]
    return images[order], labels[order]


# ----------------------------------------------------------------------------- noising (the toy model)


def corrupt(x: torch.Tensor, amount: torch.Tensor | float, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Mix each image with noise: x * (1 - a) + noise * a, with one amount a in [0, 1] per image.

    noise defaults to uniform noise in [0, 1], the same range as the images.
    """
    if x.dim() < 2:
        raise ValueError(f"x must be a batch of images (B, ...), got shape {tuple(x.shape)}")
    amount = torch.as_tensor(amount, dtype=x.dtype, device=x.device)
    if amount.dim() == 0:
        amount = amount.expand(x.shape[0])
    if amount.shape != (x.shape[0],):
        raise ValueError(
            f"amount must have one value per image, shape ({x.shape[0]},), got {tuple(amount.shape)}"
        )
    if torch.any(amount < 0) or torch.any(amount > 1):
        raise ValueError(
            f"amount must lie in [0, 1] (0 = clean, 1 = pure noise); got values from "
            f"{amount.min().item():.3g} to {amount.max().item():.3g}"
        )
    if noise is None:
        noise = torch.rand_like(x)
    elif noise.shape != x.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} does not match x shape {tuple(x.shape)}")
    a = amount.view(-1, *([1] * (x.dim() - 1)))  # (B,) -> (B, 1, 1, 1) to broadcast over pixels
    return x * (1 - a) + noise * a


# ----------------------------------------------------------------------------- schedules and the forward process (DDPM)


def linear_beta_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al.'s schedule: beta_t rising linearly from beta_start to beta_end over T steps (float64 maths, float32 result)."""
    if T < 1:
        raise ValueError(f"T (the number of diffusion timesteps) must be at least 1, got {T}")
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64).float()


def cosine_beta_schedule(T: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's schedule: alphas_cumprod follows cos^2, betas from its ratios, clipped at 0.999."""
    if T < 1:
        raise ValueError(f"T (the number of diffusion timesteps) must be at least 1, got {T}")
    t = torch.linspace(0, T, T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    # beta_t = 1 - alphas_cumprod_t / alphas_cumprod_{t-1} (Improved DDPM, eq. 17), clipped to avoid beta = 1 at the end
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(0, 0.999).float()


class NoiseSchedule:
    """Every per-timestep constant of DDPM's forward and reverse processes, computed once in float64, kept as float32.

    Timesteps are 0-based: code index t = 0 ... T-1 holds the paper's step t + 1.
    """

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.dim() != 1 or len(betas) == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if torch.any(betas <= 0) or torch.any(betas >= 1):
            raise ValueError("every beta_t must lie strictly between 0 and 1")
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        # q(x_t | x_0) = N(sqrt(alphas_cumprod) x_0, (1 - alphas_cumprod) I)  (DDPM eq. 4)
        values = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas": alphas.rsqrt(),
            # beta_tilde_t = (1 - alphas_cumprod_prev) / (1 - alphas_cumprod) * beta_t  (eq. 7); 0 at the paper's t = 1
            "posterior_variance": betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            # mu_tilde_t = coef1 x_0 + coef2 x_t  (eq. 7)
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
        }
        for name, value in values.items():
            setattr(self, name, value.float())
        self.T = len(betas)
        self.names = tuple(values)

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        """This schedule with every tensor moved to device (returns self, like nn.Module.to)."""
        for name in self.names:
            setattr(self, name, getattr(self, name).to(device))
        return self

    def __repr__(self) -> str:
        return f"NoiseSchedule(T={self.T}, beta from {self.betas[0]:.4g} to {self.betas[-1]:.4g})"


def extract(constants: torch.Tensor, t: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
    """Pick constants[t] for a batch of timesteps t (B,) and shape it (B, 1, 1, ...) to broadcast over x."""
    return constants.to(t.device)[t].view(-1, *([1] * (len(x_shape) - 1)))


def check_timesteps(t: torch.Tensor, batch_size: int, T: int) -> None:
    """Raise a clear error unless t is an integer tensor (B,) with values in 0 ... T-1.

    The values are checked only for CPU tensors: reading them off a GPU would make it wait at every training step
    (a host-device sync). There an out-of-range t still fails loudly, as an index error inside `extract`.
    """
    if t.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"timesteps t must be an integer tensor, got {t.dtype}")
    if t.shape != (batch_size,):
        raise ValueError(f"need one timestep per image, shape ({batch_size},), got {tuple(t.shape)}")
    if t.device.type == "cpu" and t.numel() and (t.min() < 0 or t.max() >= T):
        raise ValueError(f"timesteps are 0-based: t must lie in 0 ... {T - 1}, got {t.min().item()} ... {t.max().item()}")


def sample_timesteps(batch_size: int, T: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """t ~ Uniform{0, ..., T-1}, one per image (Algorithm 1, line 3, 0-based)."""
    return torch.randint(0, T, (batch_size,), device=device, generator=generator)


def q_sample(x0: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, eps: torch.Tensor | None = None) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0) in closed form (DDPM eq. 4); eps ~ N(0, I) is drawn unless given."""
    check_timesteps(t, x0.shape[0], schedule.T)
    if eps is None:
        eps = torch.randn_like(x0)
    elif eps.shape != x0.shape:
        raise ValueError(f"eps shape {tuple(eps.shape)} does not match x0 shape {tuple(x0.shape)}")
    # x_t = sqrt(alphas_cumprod_t) x0 + sqrt(1 - alphas_cumprod_t) eps
    return extract(schedule.sqrt_alphas_cumprod, t, x0.shape) * x0 + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.shape) * eps


# ----------------------------------------------------------------------------- the U-Net (DDPM, and with class labels)


class SinusoidalTimestepEmbedding(nn.Module):
    """t (B,) -> (B, dim): sines and cosines of t at dim/2 geometrically spaced frequencies (Transformer, sec. 3.5)."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"the embedding size must be even (half sines, half cosines), got {dim}")
        # frequencies omega_k = max_period^(-k / (dim/2 - 1)), k = 0 ... dim/2 - 1
        exponents = torch.arange(dim // 2, dtype=torch.float64) / (dim // 2 - 1)
        self.register_buffer("frequencies", (max_period ** -exponents).float(), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ConvNormAct(nn.Module):
    """3x3 conv -> GroupNorm -> (optional x * (scale + 1) + shift from the time embedding) -> SiLU."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.GroupNorm(groups, out_channels)
        self.act = nn.SiLU()

    def forward(self, x, scale_shift=None):
        x = self.norm(self.conv(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


class ResnetBlock(nn.Module):
    """Two ConvNormAct sub-blocks with dropout between them; the time embedding scales and shifts the first; a 1x1
    conv matches channels on the skip.

    With labelled=True a second scale-shift layer, label_mlp, reads the label embedding (zero for "no label") and
    adds its scale and shift to the time's. It has no bias and starts at zero, so it adds nothing until trained, and
    never anything for "no label".
    """

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, groups: int = 8, dropout: float = 0.0,
                 labelled: bool = False):
        super().__init__()
        self.time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, out_channels * 2))
        if labelled:
            self.label_mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, out_channels * 2, bias=False))
            nn.init.zeros_(self.label_mlp[1].weight)
        self.block1 = ConvNormAct(in_channels, out_channels, groups)
        self.dropout = nn.Dropout(dropout)  # no weights: the same state dict for any dropout
        self.block2 = ConvNormAct(out_channels, out_channels, groups)
        self.residual = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x, time_embedding, label_embedding=None):
        scale_shift = self.time_mlp(time_embedding)
        if label_embedding is not None:  # SiLU(0) = 0 and no bias: "no label" adds exactly nothing
            scale_shift = scale_shift + self.label_mlp(label_embedding)
        scale_shift = scale_shift[:, :, None, None].chunk(2, dim=1)
        h = self.block1(x, scale_shift)
        h = self.block2(self.dropout(h))
        return h + self.residual(x)


class LinearAttention(nn.Module):
    """Attention in O(HW): softmax over features for q and over positions for k, then (k v^T) q (Shen et al. 2018)."""

    def __init__(self, channels: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(channels, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, channels, 1), nn.GroupNorm(1, channels))

    def forward(self, x):
        b, _, height, width = x.shape
        q, k, v = (part.reshape(b, self.heads, -1, height * width) for part in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale     # over the dim_head features of each position
        k = k.softmax(dim=-1)                  # over the positions
        context = k @ v.transpose(-1, -2)      # (b, heads, d, d): a summary of the whole image
        out = context.transpose(-1, -2) @ q    # (b, heads, d, HW)
        return self.to_out(out.reshape(b, -1, height, width))


class Attention(nn.Module):
    """Full multi-head self-attention over all positions, through PyTorch's scaled_dot_product_attention."""

    def __init__(self, channels: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads = heads
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(channels, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        b, _, height, width = x.shape
        # (b, 3 * hidden, h, w) -> three tensors (b, heads, HW, dim_head)
        q, k, v = (part.reshape(b, self.heads, -1, height * width).transpose(-1, -2) for part in self.to_qkv(x).chunk(3, dim=1))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return self.to_out(out.transpose(-1, -2).reshape(b, -1, height, width))


class PreNormResidual(nn.Module):
    """x + fn(norm(x)): normalise first, then add the block's output back (pre-norm residual)."""

    def __init__(self, channels: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)  # one group: layer norm over channels and positions
        self.fn = fn

    def forward(self, x):
        return x + self.fn(self.norm(x))


class Downsample(nn.Module):
    """Halve the resolution without losing a pixel: pixel-unshuffle (2x2 -> 4 channels), then a 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(2)
        self.conv = nn.Conv2d(in_channels * 4, out_channels, 1)

    def forward(self, x):
        return self.conv(self.unshuffle(x))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour copies, then a 3x3 conv to smooth them."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x):
        return self.conv(self.up(x))


class DownStage(nn.Module):
    """One encoder level: two ResNet blocks, linear attention, then down-sampling (or a plain conv at the last level)."""

    def __init__(self, in_channels, out_channels, time_dim, is_last, dropout=0.0, labelled=False):
        super().__init__()
        self.block1 = ResnetBlock(in_channels, in_channels, time_dim, dropout=dropout, labelled=labelled)
        self.block2 = ResnetBlock(in_channels, in_channels, time_dim, dropout=dropout, labelled=labelled)
        self.attention = PreNormResidual(in_channels, LinearAttention(in_channels))
        self.downsample = nn.Conv2d(in_channels, out_channels, 3, padding=1) if is_last else Downsample(in_channels, out_channels)


class UpStage(nn.Module):
    """One decoder level: each ResNet block first concatenates a skip from the encoder; then attention and up-sampling."""

    def __init__(self, in_channels, out_channels, time_dim, is_last, dropout=0.0, labelled=False):
        super().__init__()
        self.block1 = ResnetBlock(out_channels + in_channels, out_channels, time_dim, dropout=dropout, labelled=labelled)
        self.block2 = ResnetBlock(out_channels + in_channels, out_channels, time_dim, dropout=dropout, labelled=labelled)
        self.attention = PreNormResidual(out_channels, LinearAttention(out_channels))
        self.upsample = nn.Conv2d(out_channels, in_channels, 3, padding=1) if is_last else Upsample(out_channels, in_channels)


class Unet(nn.Module):
    """eps_theta(x_t, t): predicts the noise in x_t. Channels dim * dim_mults per level, as in denoising-diffusion-pytorch.

    With num_classes it is eps_theta(x_t, t, c): a learned vector per class label 0 ... num_classes - 1 is added to
    the time embedding, and each ResNet block gets a second scale-shift layer that reads that sum. "No label" (the
    label num_classes, `null_label`) has a vector fixed at zero and skips the label layers, so it computes exactly
    what the same weights compute without labels. The class vectors and the label layers start at zero: a fresh
    class-conditional U-Net gives that unconditional prediction for every label.
    """

    def __init__(self, dim: int = 32, dim_mults=(1, 2, 4), channels: int = 1, dropout: float = 0.0,
                 num_classes: int | None = None):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout is the share of activations zeroed while training and must lie in [0, 1), got {dropout}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes is the number of class labels (10 for digits), or None for no labels; got {num_classes}")
        self.dim, self.dim_mults, self.channels, self.dropout = dim, tuple(dim_mults), channels, dropout
        self.num_classes = num_classes
        self.downsample_factor = 2 ** (len(dim_mults) - 1)
        time_dim = dim * 4
        self.time_mlp = nn.Sequential(
            SinusoidalTimestepEmbedding(dim), nn.Linear(dim, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim)
        )
        if num_classes is not None:
            self.class_embedding = nn.Embedding(num_classes + 1, time_dim, padding_idx=num_classes)  # last row: no label, zero
            nn.init.zeros_(self.class_embedding.weight)
        labelled = num_classes is not None
        self.init_conv = nn.Conv2d(channels, dim, 7, padding=3)
        widths = [dim] + [dim * m for m in dim_mults]
        pairs = list(zip(widths[:-1], widths[1:]))  # (1, 2, 4) -> (d, d), (d, 2d), (2d, 4d)
        self.downs = nn.ModuleList(
            DownStage(c_in, c_out, time_dim, is_last=(i == len(pairs) - 1), dropout=dropout, labelled=labelled)
            for i, (c_in, c_out) in enumerate(pairs)
        )
        mid = widths[-1]
        self.mid_block1 = ResnetBlock(mid, mid, time_dim, dropout=dropout, labelled=labelled)
        self.mid_attention = PreNormResidual(mid, Attention(mid))
        self.mid_block2 = ResnetBlock(mid, mid, time_dim, dropout=dropout, labelled=labelled)
        self.ups = nn.ModuleList(
            UpStage(c_in, c_out, time_dim, is_last=(i == len(pairs) - 1), dropout=dropout, labelled=labelled)
            for i, (c_in, c_out) in enumerate(reversed(pairs))
        )
        self.final_block = ResnetBlock(dim * 2, dim, time_dim, dropout=dropout, labelled=labelled)
        self.final_conv = nn.Conv2d(dim, channels, 1)

    def check_size(self, height: int, width: int) -> None:
        """Refuse image sizes that the down-sampling cannot halve exactly."""
        f = self.downsample_factor
        if height % f or width % f:
            raise ValueError(
                f"image size {height}x{width} is not divisible by {f} (the U-Net halves it {len(self.dim_mults) - 1} times); "
                f"use a multiple of {f} such as 28 or 32, or pad, e.g. F.pad(x, (2, 2, 2, 2)) turns 28 into 32"
            )

    @property
    def null_label(self) -> int:
        """The label that means "no label" (classifier-free guidance's empty condition)."""
        if self.num_classes is None:
            raise ValueError("this U-Net was built without num_classes: it takes no labels")
        return self.num_classes

    def check_labels(self, labels: torch.Tensor, batch_size: int) -> None:
        """Refuse labels that are not one integer in 0 ... num_classes per image."""
        if self.num_classes is None:
            raise ValueError("this U-Net was built without num_classes, so it takes no labels; build it with num_classes=10")
        if labels.shape != (batch_size,) or labels.is_floating_point():
            raise ValueError(f"labels must be one integer per image, shape ({batch_size},); got {tuple(labels.shape)} {labels.dtype}")
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            return  # reading the values would stop a CUDA graph's recording; they were checked on the eager calls
        if labels.numel() and (labels.min() < 0 or labels.max() > self.num_classes):
            raise ValueError(f"labels must lie in 0 ... {self.num_classes - 1}, or {self.num_classes} for no label; "
                             f"got values from {labels.min().item()} to {labels.max().item()}")

    def forward(self, x, t, labels=None):
        self.check_size(*x.shape[-2:])
        time_embedding = self.time_mlp(t)
        label_embedding = None
        if self.num_classes is not None:  # no labels given: every image gets "no label"
            labels = torch.full((len(x),), self.num_classes, device=x.device) if labels is None else labels
            self.check_labels(labels, len(x))
            labelled = (labels != self.num_classes).to(time_embedding.dtype)[:, None]  # 0 for "no label"
            time_embedding = time_embedding + labelled * self.class_embedding(labels)
            label_embedding = labelled * time_embedding  # zero for "no label": the blocks' label layers add nothing
        elif labels is not None:
            self.check_labels(labels, len(x))  # raises: no labels without num_classes
        x = self.init_conv(x)
        initial = x
        skips = []
        for stage in self.downs:
            x = stage.block1(x, time_embedding, label_embedding)
            skips.append(x)
            x = stage.attention(stage.block2(x, time_embedding, label_embedding))
            skips.append(x)
            x = stage.downsample(x)
        x = self.mid_attention(self.mid_block1(x, time_embedding, label_embedding))
        x = self.mid_block2(x, time_embedding, label_embedding)
        for stage in self.ups:
            x = stage.block1(torch.cat([x, skips.pop()], dim=1), time_embedding, label_embedding)
            x = stage.block2(torch.cat([x, skips.pop()], dim=1), time_embedding, label_embedding)
            x = stage.upsample(stage.attention(x))
        x = self.final_block(torch.cat([x, initial], dim=1), time_embedding, label_embedding)
        return self.final_conv(x)


# ----------------------------------------------------------------------------- training (Algorithm 1's recipe)


def random_batches(data, batch_size):
    """Endless batches of batch_size rows of data (on its device): each epoch is a fresh random permutation.

    data is one tensor, or a tuple of tensors with the same number of rows (images and their labels), batched alike.
    """
    tensors = data if isinstance(data, tuple) else (data,)
    if any(len(tensor) != len(tensors[0]) for tensor in tensors):
        raise ValueError(f"the tensors of data must have the same number of rows, got {[len(tensor) for tensor in tensors]}")
    if not 1 <= batch_size <= len(tensors[0]):
        raise ValueError(f"batch_size must lie in 1 ... {len(tensors[0])} (the number of training images), got {batch_size}")
    while True:
        order = torch.randperm(len(tensors[0]), device=tensors[0].device)
        for first in range(0, len(order) - batch_size + 1, batch_size):
            rows = order[first:first + batch_size]
            yield tuple(tensor[rows] for tensor in tensors) if isinstance(data, tuple) else data[rows]


class EMA:
    """A frozen copy of the model whose weights follow theta_bar <- d_n theta_bar + (1 - d_n) theta after update n,
    with the warm-up d_n = min(decay, (1 + n) / (10 + n)) (warmup=False keeps d_n = decay from the start)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must lie strictly between 0 and 1, got {decay}")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """d_n for the next update."""
        # d_n = min(d, (1 + n) / (10 + n))
        return min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # theta_bar <- d_n theta_bar + (1 - d_n) theta, all tensors at once
        average_into = torch.optim.swa_utils.get_ema_multi_avg_fn(self.current_decay())
        average_into(list(self.module.parameters()), list(model.parameters()), None)
        self.updates += 1


def learning_rate(step: int, fraction_done: float, peak: float, warmup_steps: int) -> float:
    """Linear warm-up to `peak` over warmup_steps (0: none), times a cosine decay from 1 to 0 as fraction_done goes 0 -> 1."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps is a number of steps, 0 for no warm-up; got {warmup_steps}")
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    return peak * warmup * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction_done)))


def train_ddpm(model, ema_models, optimizer, loss_fn, data, batch_size, max_steps, peak_lr, warmup_steps,
               grad_clip, max_seconds=None, bf16=False, cuda_graph=False):
    """Algorithm 1 until max_steps or max_seconds: loss_fn(*batch) is the loss of one batch of data (a tensor, or a
    tuple of tensors such as images and labels, on the model's device); returns the per-step losses. Every parameter
    group's learning rate warms up to peak_lr and decays, or to the group's own "peak_lr" where it has one."""

    def loss_and_gradients(*batch):
        with torch.autocast(batch[0].device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(*batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        return loss.detach()

    losses = []
    batches = (batch if isinstance(batch, tuple) else (batch,) for batch in random_batches(data, batch_size))
    if cuda_graph:
        loss_and_gradients = cuda_graphed(loss_and_gradients, *next(batches))  # recorded once, replayed every step
    progress = tqdm(total=None if max_seconds is not None else max_steps, desc="training", mininterval=5)
    start = time.perf_counter()
    for step in range(max_steps):
        elapsed = time.perf_counter() - start
        if max_seconds is not None and elapsed >= max_seconds:
            break
        fraction_done = max(step / max_steps, elapsed / max_seconds if max_seconds else 0.0)
        for group in optimizer.param_groups:  # a group with its own "peak_lr" follows the same schedule to its own peak
            group["lr"] = learning_rate(step, fraction_done, group.get("peak_lr", peak_lr), warmup_steps)
        losses.append(loss_and_gradients(*next(batches)))
        optimizer.step()
        for ema in ema_models:
            ema.update(model)
        progress.update()
        if len(losses) % 50 == 0:
            recent = torch.stack(losses[-50:])
            if not torch.isfinite(recent).all():
                raise FloatingPointError(
                    f"the loss became {recent[~torch.isfinite(recent)][0].item()} near step {len(losses)}: training "
                    "diverged; lower LEARNING_RATE or GRAD_CLIP, or lengthen WARMUP_STEPS, and run again"
                )
            progress.set_postfix(loss=f"{recent.mean().item():.4f}")
    progress.close()
    if not losses:
        return []
    losses = torch.stack(losses).float().cpu()
    if not torch.isfinite(losses).all():
        raise FloatingPointError("the loss became non-finite in the last steps: training diverged; lower LEARNING_RATE")
    return losses.tolist()


# ----------------------------------------------------------------------------- sampling


@torch.no_grad()
def toy_sample(
    model: Callable[[torch.Tensor], torch.Tensor],
    steps: int,
    shape: Sequence[int],
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    """The toy sampler: start from uniform noise, move 1/(steps - i) of the way to the model's prediction at step i.

    Returns the final images and a history {"inputs": [...], "predictions": [...]} with one entry per step (on the CPU).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    z = torch.rand(tuple(shape), generator=generator, device="cpu").to(device)
    history: dict[str, list[torch.Tensor]] = {"inputs": [], "predictions": []}
    for i in range(steps):
        prediction = model(z)
        history["inputs"].append(z.detach().cpu())
        history["predictions"].append(prediction.detach().cpu())
        mix = 1.0 / (steps - i)  # m_i = 1 / (n - i): the last step has m = 1 and returns the prediction itself
        z = z * (1 - mix) + prediction * mix
    return z, history


REVERSE_VARIANCES = ("posterior", "beta")


def _standard_normal(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, I) noise of shape on like's device; drawn from generator (on its own device) when one is given."""
    if generator is None:
        return torch.randn(tuple(shape), device=like.device, dtype=like.dtype)
    return torch.randn(tuple(shape), generator=generator, device=generator.device).to(like.device, like.dtype)


@torch.inference_mode()
def p_sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_t: torch.Tensor,
    t: int,
    schedule: NoiseSchedule,
    z: torch.Tensor | None = None,
    variance: str = "posterior",
    generator: torch.Generator | None = None,
    noise_scale: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """One step of Algorithm 2 at code index t (the paper's t + 1): x_{t-1} = mu_theta(x_t, t) + sigma_t z.

    sigma_t^2 is beta_tilde_t (variance="posterior") or beta_t (variance="beta"); z = 0 at index 0 (the paper's t = 1).
    z ~ N(0, I) is drawn from generator unless given. noise_scale (a number, or one per image) multiplies sigma_t, to
    show what too little or too much fresh noise does.
    """
    if variance not in REVERSE_VARIANCES:
        raise ValueError(f"variance must be one of {REVERSE_VARIANCES}, got {variance!r}")
    if not 0 <= t < schedule.T:
        raise ValueError(f"timesteps are 0-based: t must lie in 0 ... {schedule.T - 1}, got {t}")
    t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
    eps_theta = model(x_t, t_batch).to(x_t.dtype)
    # mu_theta(x_t, t) = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alphas_cumprod_t) eps_theta)  (eq. 11)
    mean = schedule.sqrt_recip_alphas[t] * (x_t - schedule.betas[t] / schedule.sqrt_one_minus_alphas_cumprod[t] * eps_theta)
    if t == 0:
        return mean  # Algorithm 2, line 3: z = 0 at the last step
    sigma_squared = schedule.posterior_variance[t] if variance == "posterior" else schedule.betas[t]
    if z is None:
        z = _standard_normal(x_t.shape, x_t, generator)
    scale = torch.as_tensor(noise_scale, dtype=x_t.dtype, device=x_t.device)
    if scale.dim() == 1:
        scale = scale.view(-1, *([1] * (x_t.dim() - 1)))  # one scale per image
    return mean + scale * sigma_squared.sqrt() * z


@torch.inference_mode()
def ddpm_sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: NoiseSchedule,
    shape: Sequence[int],
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    variance: str = "posterior",
    frames_at: Sequence[int] = (),
    progress: bool = True,
    noise_scale: float | torch.Tensor = 1.0,
) -> torch.Tensor | tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Algorithm 2 in full: x_T ~ N(0, I), then p_sample at code index t = T-1 ... 0; returns the final images.

    With frames_at, also returns {t: x_t on the CPU}: the images as they enter step t (T-1 is the pure noise).
    """
    frames_at = set(frames_at)
    bad = [t for t in frames_at if not 0 <= t < schedule.T]
    if bad:
        raise ValueError(f"frames_at must lie in 0 ... {schedule.T - 1}, got {sorted(bad)}")
    x = _standard_normal(shape, torch.empty(0, device=device), generator)  # x_T ~ N(0, I)
    frames: dict[int, torch.Tensor] = {}
    for t in tqdm(reversed(range(schedule.T)), total=schedule.T, desc="sampling", disable=not progress, mininterval=2):
        if t in frames_at:
            frames[t] = x.cpu()
        x = p_sample(model, x, t, schedule, variance=variance, generator=generator, noise_scale=noise_scale)
    return (x, frames) if frames_at else x


def spaced_timesteps(T: int, steps: int) -> torch.Tensor:
    """tau: `steps` evenly spaced code indices from 0 to T-1, ascending, for samplers that skip timesteps."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must lie in 1 ... {T} (the trained timesteps), got {steps}")
    return torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long()


@torch.inference_mode()
def ddim_sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: NoiseSchedule,
    shape: Sequence[int],
    steps: int,
    eta: float = 0.0,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """DDIM (Song et al. 2020, eq. 12) on `steps` evenly spaced timesteps tau of the trained eps-model.

    The DDIM paper writes alpha_t for DDPM's alphas_cumprod (abar); the code keeps DDPM's name. eta = 0 is
    deterministic given x_T; eta = 1 is DDPM's ancestral sampler on the same timesteps (the same images as
    ddpm_sample on `respaced` for the same generator).
    """
    if eta < 0:
        raise ValueError(f"eta must be non-negative (0 = deterministic DDIM, 1 = DDPM-like), got {eta}")
    taus = spaced_timesteps(schedule.T, int(steps)).flip(0).tolist()  # from T-1 down to 0
    x = _standard_normal(shape, torch.empty(0, device=device), generator)  # x_T ~ N(0, I)
    alphas_cumprod = schedule.alphas_cumprod.to(device)
    for i, t in enumerate(tqdm(taus, desc=f"DDIM {steps} steps", disable=not progress, mininterval=2)):
        abar_t = alphas_cumprod[t]
        abar_prev = alphas_cumprod[taus[i + 1]] if i + 1 < len(taus) else torch.ones((), device=device)
        eps_theta = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).to(x.dtype)
        # x0_hat = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t)  (eq. 12, "predicted x0")
        x0_hat = (x - (1 - abar_t).sqrt() * eps_theta) / abar_t.sqrt()
        # sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)  (eq. 16)
        sigma = eta * ((1 - abar_prev) / (1 - abar_t)).sqrt() * (1 - abar_t / abar_prev).sqrt()
        # x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_theta + sigma z  (eq. 12)
        x = abar_prev.sqrt() * x0_hat + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps_theta
        if eta > 0 and i + 1 < len(taus):
            x = x + sigma * _standard_normal(x.shape, x, generator)
    return x


def respaced(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: NoiseSchedule, steps: int
             ) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], NoiseSchedule]:
    """DDPM on `steps` evenly spaced timesteps tau_i: a schedule with beta_i = 1 - abar_{tau_i} / abar_{tau_{i-1}}
    (same alphas_cumprod at the kept steps) and a model wrapper that maps index i back to the trained timestep tau_i.
    """
    taus = spaced_timesteps(schedule.T, steps)
    alphas_cumprod = schedule.alphas_cumprod.double().cpu()[taus]
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    short_schedule = NoiseSchedule((1 - alphas_cumprod / previous).clamp(max=0.999))

    def respaced_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x, taus.to(t.device)[t])

    return respaced_model, short_schedule


def sample_in_batches(sampler: Callable[[int], torch.Tensor], n: int, batch_size: int) -> torch.Tensor:
    """n samples as sampler(size) calls of at most batch_size images each, concatenated on the CPU.

    A GPU samples fastest in one large batch, a CPU in batches small enough to stay in its caches. Give the sampler
    one generator shared by all calls, and the result is reproducible for a given batch_size.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be positive, got n={n}, batch_size={batch_size}")
    return torch.cat([sampler(min(batch_size, n - first)).cpu() for first in range(0, n, batch_size)])


# ----------------------------------------------------------------------------- measuring

HELD_OUT_PER_CLASS = 100


class MnistClassifier(torch.nn.Module):
    """A LeNet-sized CNN for 28x28 digits in [0, 1]; its 64-d penultimate layer is the feature space of the measure.

    64 features (not Inception's 2048) so that a few hundred samples estimate their covariance well.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 24, 3)   # 26 x 26
        self.conv2 = torch.nn.Conv2d(24, 24, 3)  # 24 x 24 -> pool 12 x 12
        self.conv3 = torch.nn.Conv2d(24, 48, 3)  # 10 x 10
        self.conv4 = torch.nn.Conv2d(48, 48, 3)  # 8 x 8 -> pool 4 x 4
        self.fc = torch.nn.Linear(48 * 4 * 4, 64)
        self.dropout = torch.nn.Dropout(0.3)
        self.head = torch.nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate activations (B, 64)."""
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        h = F.max_pool2d(F.relu(self.conv4(F.relu(self.conv3(h)))), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def split_held_out(labels: torch.Tensor, per_class: int = HELD_OUT_PER_CLASS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, held_out) with per_class random digits of each class held out, seeded."""
    generator = torch.Generator().manual_seed(seed)
    held = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        if len(members) <= per_class:
            raise ValueError(f"class {c} has {len(members)} images, fewer than the {per_class} to hold out")
        held.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    held_out = torch.cat(held).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held_out] = False
    return mask.nonzero().flatten(), held_out


def load_classifier(path: Path | str = CLASSIFIER_PATH) -> MnistClassifier:
    """The shipped measuring classifier (weights_only load), in eval mode."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = MnistClassifier()
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two feature sets (N, D), in float64."""
    a, b = features_a.double(), features_b.double()
    if a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two sets of at least 2 feature vectors of the same size, got {tuple(a.shape)} and {tuple(b.shape)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # Tr((S_a S_b)^(1/2)) = sum of sqrt(eigenvalues of S_a^(1/2) S_b S_a^(1/2)), a symmetric PSD matrix
    eigenvalues, eigenvectors = torch.linalg.eigh(cov_a)
    sqrt_a = eigenvectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T
    trace_sqrt = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return ((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt).item()


def nearest_distances(queries: torch.Tensor, references: torch.Tensor, exclude_self: bool = False,
                      exclude_identical: bool = False) -> torch.Tensor:
    """Pixel L2 distance from each query image to its nearest reference image.

    exclude_self: the queries are the references (skip the diagonal); exclude_identical: skip exact matches
    (distance below 1e-3), for real digits that are themselves among the references.
    """
    q, r = queries.flatten(1).double(), references.flatten(1).double()
    out = []
    for first in range(0, len(q), 500):
        d = torch.cdist(q[first:first + 500], r)
        if exclude_self:
            d[torch.arange(len(d)), torch.arange(first, first + len(d))] = float("inf")
        if exclude_identical:
            d[d < 1e-3] = float("inf")  # cdist's matrix-product form leaves ~1e-7 for identical images
        out.append(d.min(1).values)
    return torch.cat(out).float()


class QualityReference:
    """What sample_quality compares against: the classifier, real features, the training images and a copy threshold.

    The real digits are split in two class-balanced halves: `reference` (the FD's real statistics) and `holdout`
    (real digits scored like samples, for the real-vs-real floor). The copy threshold is the `copy_quantile`
    quantile of the distances from each training digit to its nearest other training digit.
    """

    def __init__(self, classifier: MnistClassifier, real_images: torch.Tensor, real_labels: torch.Tensor,
                 training_images: torch.Tensor | None = None, copy_quantile: float = 0.05, seed: int = 0):
        self.classifier = classifier.eval()
        half, other = split_held_out(real_labels, per_class=int((real_labels == real_labels[0]).sum()) // 2, seed=seed)
        self.holdout_images, self.reference_images = real_images[half], real_images[other]
        self.holdout_labels = real_labels[half]
        self.reference_features = self.features(self.reference_images)
        self.training_images = real_images if training_images is None else training_images
        self.copy_quantile = copy_quantile
        self.copy_threshold = nearest_distances(self.training_images, self.training_images, exclude_self=True).quantile(copy_quantile).item()

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Classifier features of images in [0, 1]."""
        return torch.cat([self.classifier.features(chunk) for chunk in images.float().split(1000)])

    @torch.inference_mode()
    def class_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """The classifier's probability of each digit, (N, 10), from the features of N images."""
        return self.classifier.head(features).softmax(1)

    def holdout_class_probabilities(self) -> torch.Tensor:
        """class_probabilities of the held-out real digits, (N, 10), in the order of holdout_labels."""
        return self.class_probabilities(self.features(self.holdout_images))


@torch.inference_mode()
def sample_quality(samples: torch.Tensor, reference: QualityReference, value_range: tuple[float, float] = (-1.0, 1.0),
                   real_digits: bool = False) -> dict[str, float]:
    """Classifier FD (lower is better), mean confidence, class spread (1 = all ten classes equally), copy fraction.

    copy_fraction: share of samples nearer (pixel L2) to a training image than `copy_quantile` of real digits are to
    their nearest neighbour; real digits score about copy_quantile, a model that copies its training set more.
    real_digits=True scores real digits that may be training images themselves (their exact match is skipped).
    """
    return _quality_and_classes(samples, reference, value_range, real_digits)[0]


def _quality_and_classes(samples: torch.Tensor, reference: QualityReference, value_range: tuple[float, float],
                         real_digits: bool) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """sample_quality's figures, the images in [0, 1] and the classes the classifier reads in them, from one pass."""
    if samples.dim() != 4 or samples.shape[1:] != (1, 28, 28):
        raise ValueError(f"samples must be (N, 1, 28, 28), got {tuple(samples.shape)}")
    if len(samples) < 2:
        raise ValueError(f"need at least 2 samples to estimate a covariance, got {len(samples)}")
    images = to_unit_range(samples, value_range)
    features = reference.features(images)
    probabilities = reference.class_probabilities(features)
    classes = probabilities.argmax(1)
    histogram = torch.bincount(classes, minlength=10).double() / len(images)
    entropy = -(histogram[histogram > 0] * histogram[histogram > 0].log()).sum()
    copies = nearest_distances(images, reference.training_images, exclude_identical=real_digits) < reference.copy_threshold
    scores = {
        "classifier_fd": frechet_distance(features, reference.reference_features),
        "confidence": probabilities.max(1).values.mean().item(),
        "class_spread": max(0.0, (entropy / math.log(10)).item()),
        "copy_fraction": copies.float().mean().item(),
        "n": len(images),
    }
    return scores, images, classes


def mean_over_draws(per_draw: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each figure over draws of the same n, with "draws" and "classifier_fd_sd", the FD's spread between
    them (0 for one draw)."""
    if not per_draw:
        raise ValueError("draws must be at least 1, got 0")
    scores = {key: sum(draw[key] for draw in per_draw) / len(per_draw) for key in per_draw[0] if key != "n"}
    fds = torch.tensor([draw["classifier_fd"] for draw in per_draw], dtype=torch.float64)
    return scores | {"n": per_draw[0]["n"], "draws": len(per_draw),
                     "classifier_fd_sd": fds.std().item() if len(per_draw) > 1 else 0.0}


def score_sampler(sampler: Callable[[int, torch.Generator], torch.Tensor], reference: QualityReference, n: int,
                  batch_size: int, seed: int, device: torch.device | str = "cpu") -> tuple[dict[str, float], float]:
    """Draw n samples as sampler(size, generator) calls of at most batch_size images, all from one generator seeded
    with seed on device, clamp them to [-1, 1] and score them: returns (sample_quality's figures, seconds to sample).

    The same seed gives every sampler the same starting noise x_T for its first batch.
    """
    start = time.perf_counter()
    generator = torch.Generator(device).manual_seed(seed)
    samples = sample_in_batches(lambda size: sampler(size, generator), n, batch_size).clamp(-1, 1)
    seconds = time.perf_counter() - start  # sample_in_batches moved the samples to the CPU: the device has finished
    return sample_quality(samples, reference), seconds


def reference_scores(reference: QualityReference, n: int, seed: int = 0, draws: int = 10) -> dict[str, dict[str, float]]:
    """The same measure for real held-out digits (the floor to aim at) and for n images of pure uniform noise.

    One draw of n real digits is a noisy floor, so "real" is the mean of `draws` random draws of n held-out digits
    (draws may share digits when n is large), with "classifier_fd_sd", the spread of the FD between draws, beside
    it: about how far any single FD at this n can move by chance.
    """
    if n > len(reference.holdout_images):
        raise ValueError(f"only {len(reference.holdout_images)} held-out real digits; ask for n <= that")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    generator = torch.Generator().manual_seed(seed)
    per_draw = []
    for _ in range(draws):
        real = reference.holdout_images[torch.randperm(len(reference.holdout_images), generator=generator)[:n]]
        per_draw.append(sample_quality(real, reference, value_range=(0, 1), real_digits=True))
    noise = torch.rand(n, 1, 28, 28, generator=generator)
    return {"real": mean_over_draws(per_draw), "noise": sample_quality(noise, reference, value_range=(0, 1))}


def format_quality(name: str, scores: dict[str, float], floor: dict[str, float] | None = None) -> str:
    """One aligned line of the measure, for printing tables. A floor averaged over draws says so at the end; with
    floor (reference_scores' "real" at the same n) the line ends with that floor's FD and its spread between draws."""
    line = (f"{name:<30s} FD {scores['classifier_fd']:8.2f}   confidence {scores['confidence']:.3f}   "
            f"class spread {scores['class_spread']:.3f}   copies {scores['copy_fraction']:.3f}   (n = {scores['n']}")
    if scores.get("draws", 1) > 1:
        line += f", mean of {scores['draws']} draws, FD sd {scores['classifier_fd_sd']:.2f}"
    line += ")"
    if floor is not None:
        if floor["n"] != scores["n"]:
            raise ValueError(f"the floor was measured at n = {floor['n']}, the samples at n = {scores['n']}: an FD depends on n")
        line += f"   floor {floor['classifier_fd']:.2f} ± {floor['classifier_fd_sd']:.2f}"
    return line


def within_class_distance(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Diversity: the mean pixel L2 distance between two different images of the same label, averaged over the labels
    (images in [0, 1]); digits that all look alike score low."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels: give one label per image")
    means = []
    for label in labels.unique():
        members = images[labels == label].flatten(1).double()
        if len(members) < 2:
            raise ValueError(f"label {label.item()} has {len(members)} image; a distance needs at least 2 per label")
        distances = torch.cdist(members, members)
        means.append(distances.sum() / (len(members) * (len(members) - 1)))  # the diagonal is zero
    return torch.stack(means).mean().item()


@torch.inference_mode()
def conditional_quality(samples: torch.Tensor, labels: torch.Tensor, reference: QualityReference,
                        value_range: tuple[float, float] = (-1.0, 1.0), real_digits: bool = False) -> dict[str, float]:
    """sample_quality of samples asked to show `labels`, plus "accuracy" (the share the classifier reads as the digit
    asked for) and "within_class_distance" (diversity). With ten digits asked equally often, the FD compares with real
    digits of the same classes, the reference half being class-balanced too."""
    if len(samples) != len(labels):
        raise ValueError(f"{len(samples)} samples but {len(labels)} labels: give the label each sample was asked for")
    scores, images, predicted = _quality_and_classes(samples, reference, value_range, real_digits)
    return scores | {"accuracy": (predicted == labels.cpu()).float().mean().item(),
                     "within_class_distance": within_class_distance(images, labels.cpu())}


def conditional_reference_scores(reference: QualityReference, per_class: int, seed: int = 0, draws: int = 10,
                                 pool: torch.Tensor | None = None) -> dict[str, float]:
    """conditional_quality of real held-out digits, per_class of each digit, averaged over `draws` random draws, with
    "classifier_fd_sd" (the FD's spread between draws) beside it: the floor for class-conditional samples.

    pool: a boolean mask over the held-out digits to draw from only those (every held-out digit by default)."""
    if pool is not None and (pool.dtype != torch.bool or pool.shape != reference.holdout_labels.shape):
        raise ValueError(f"pool must be a boolean mask of shape {tuple(reference.holdout_labels.shape)} over the held-out "
                         f"digits, got {pool.dtype} of shape {tuple(pool.shape)}")
    per_draw = [conditional_quality(reference.holdout_images[picked], reference.holdout_labels[picked], reference,
                                    value_range=(0, 1), real_digits=True)
                for picked in held_out_draws(reference, per_class, seed, draws, pool)]
    return mean_over_draws(per_draw)


def held_out_draws(reference: QualityReference, per_class: int, seed: int = 0, draws: int = 10,
                   pool: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Indices into the held-out digits for `draws` random draws of per_class of each digit, from one generator
    seeded with seed; pool: a boolean mask over the held-out digits to draw from only those."""
    generator = torch.Generator().manual_seed(seed)
    classes = reference.holdout_labels.unique()
    all_draws = []
    for _ in range(draws):
        picked = []
        for c in classes:
            in_pool = reference.holdout_labels == c if pool is None else (reference.holdout_labels == c) & pool
            members = in_pool.nonzero().flatten()
            if per_class > len(members):
                raise ValueError(f"only {len(members)} held-out real digits of class {c.item()}"
                                 f"{'' if pool is None else ' in the pool'}; ask for per_class <= that")
            picked.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
        all_draws.append(torch.cat(picked))
    return all_draws


def format_guided_quality(name: str, scores: dict[str, float], floor: dict[str, float] | None = None) -> str:
    """One aligned line of the class-conditional measure; with floor (conditional_reference_scores at the same n) the
    real digits' FD, spread, accuracy and diversity follow."""
    line = (f"{name:<24s} accuracy {scores['accuracy']:6.1%}   FD {scores['classifier_fd']:7.2f}   "
            f"diversity {scores['within_class_distance']:5.2f}   copies {scores['copy_fraction']:.3f}   (n = {scores['n']})")
    if floor is not None:
        if floor["n"] != scores["n"]:
            raise ValueError(f"the floor was measured at n = {floor['n']}, the samples at n = {scores['n']}: an FD depends on n")
        line += (f"   real: FD {floor['classifier_fd']:.2f} ± {floor['classifier_fd_sd']:.2f}, accuracy {floor['accuracy']:.1%}, "
                 f"diversity {floor['within_class_distance']:.2f}, copies {floor['copy_fraction']:.3f}")
    return line


# ----------------------------------------------------------------------------- plotting and files


def to_unit_range(images: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """Images mapped from value_range to [0, 1] (clipped), as float32 on the CPU."""
    low, high = value_range
    return ((images.detach().float().cpu() - low) / (high - low)).clamp(0, 1)


def show_images(
    images: torch.Tensor,
    ax: plt.Axes | None = None,
    nrow: int = 8,
    title: str | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> plt.Axes:
    """Draw a batch (B, C, H, W) as one grid with torchvision's make_grid; values outside value_range are clipped."""
    if images.dim() != 4:
        raise ValueError(f"images must be a batch (B, C, H, W), got shape {tuple(images.shape)}")
    grid = make_grid(to_unit_range(images, value_range), nrow=nrow, padding=2, pad_value=1.0)
    if ax is None:
        _, ax = plt.subplots(figsize=(min(nrow, len(images)) * 0.9, (len(images) + nrow - 1) // nrow * 0.9))
    ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def plot_loss_curve(losses: Sequence[float], ax: plt.Axes | None = None, smoothing: int = 50, title: str = "Training loss") -> plt.Axes:
    """Per-step losses (faint) and their running mean over smoothing steps, on a log scale."""
    losses = np.asarray(losses, dtype=np.float64)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(losses, alpha=0.3, label="per batch")
    window = max(1, min(smoothing, len(losses)))
    if len(losses) >= window:
        running = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window - 1, len(losses)), running, label=f"mean of {window}")
    ax.set_xlabel("training step")
    ax.set_ylabel("MSE loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    return ax


def plot_sampling_history(
    history: dict[str, list[torch.Tensor]], final_images: torch.Tensor, title: str = "", n_show: int = 8
) -> plt.Figure:
    """One row per sampler step (inputs left, predictions right) and a last row with the final images."""
    steps = len(history["inputs"])
    fig, axes = plt.subplots(steps + 1, 2, figsize=(6.4, 0.42 * (steps + 1) + 0.5), squeeze=False)
    for i in range(steps):
        show_images(history["inputs"][i][:n_show], ax=axes[i, 0], nrow=n_show)
        show_images(history["predictions"][i][:n_show], ax=axes[i, 1], nrow=n_show)
        axes[i, 0].text(-4, 16, f"step {i}", ha="right", va="center", fontsize=8)
    axes[0, 0].set_title("input to the model", fontsize=10)
    axes[0, 1].set_title("model's prediction", fontsize=10)
    show_images(final_images[:n_show], ax=axes[steps, 0], nrow=n_show)
    axes[steps, 0].text(-4, 16, "final", ha="right", va="center", fontsize=8, weight="bold")
    axes[steps, 1].set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_source(*definitions: Callable | type) -> "IPython.display.Code | str":
    """The source of functions or classes as highlighted code, to display in a notebook right under the equation
    or the explanation it computes; as plain text where IPython is not installed (a notebook run as a script)."""
    if not definitions:
        raise ValueError("show_source needs at least one function or class to show")
    source = "\n\n".join(inspect.getsource(definition) for definition in definitions)
    try:
        from IPython.display import Code
    except ImportError:
        return source
    return Code(source, language="python")


def figure_folder(smoke: bool | None = None) -> Path:
    """Where save_figure and save_gif write: data/ in full mode, a temporary folder in smoke mode."""
    smoke = is_smoke_test() if smoke is None else smoke
    if smoke:
        folder = Path(tempfile.gettempdir()) / "diffusion_playground_figures"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return DATA_DIR


def run_folder(smoke: bool | None = None) -> Path:
    """Where a notebook's own trained weights go: runs/ (git-ignored) in full mode, a temporary folder in smoke mode."""
    smoke = is_smoke_test() if smoke is None else smoke
    folder = Path(tempfile.gettempdir()) / "diffusion_playground_runs" if smoke else RUNS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def output_path(name: str, suffix: str, smoke: bool | None = None) -> Path:
    """<figure_folder>/<name><suffix>, after checking that name is a bare file stem (no folder, no extension)."""
    if not name or "/" in name or "\\" in name or "." in name:
        raise ValueError(f"output name must be a bare file stem like 'toy_forward_process' (no folder, no {suffix}), got {name!r}")
    return figure_folder(smoke) / f"{name}{suffix}"


def save_figure(fig: plt.Figure, name: str, smoke: bool | None = None, dpi: int = FIGURE_DPI) -> Path:
    """Write fig as <folder>/<name>.png (folder from figure_folder) and return the path."""
    path = output_path(name, ".png", smoke)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white", metadata={"Software": None})
    return path


def save_gif(frames: Sequence[torch.Tensor], name: str, smoke: bool | None = None, nrow: int = 8,
             value_range: tuple[float, float] = (-1.0, 1.0), frame_ms: int = 80, hold_last_ms: int = 1500) -> Path:
    """Write batches (B, C, H, W), one per frame, as an animated <folder>/<name>.gif (Pillow), holding the last frame."""
    if not frames:
        raise ValueError("need at least one frame")
    path = output_path(name, ".gif", smoke)
    images = []
    for batch in frames:
        grid = make_grid(to_unit_range(batch, value_range), nrow=nrow, padding=2, pad_value=1.0)
        pixels = (grid[0] * 255).round().to(torch.uint8).numpy()
        images.append(Image.fromarray(pixels, mode="L").resize((pixels.shape[1] * 2, pixels.shape[0] * 2), Image.NEAREST))
    durations = [frame_ms] * (len(images) - 1) + [hold_last_ms]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=True)
    return path


def is_shipped_file(path: Path | str) -> bool:
    """True for a path inside data/, where the shipped data, weights and classifier live."""
    return Path(path).resolve().parent == DATA_DIR.resolve()


def save_weights(model: torch.nn.Module, path: Path | str, config: dict, metadata: dict | None = None,
                 replace_shipped: bool = False) -> Path:
    """Write model's weights in float16 (half the size; loading restores float32) with the config that built it.

    metadata (plain numbers, strings and lists: how and where they were trained, a loss curve) is stored beside them.
    A file in data/ is shipped with the project: it is written only with replace_shipped=True (a maintainer's step).
    """
    path = Path(path)
    if is_shipped_file(path) and not replace_shipped:
        raise PermissionError(f"{path.name} in data/ is a shipped file; write a run's weights to {RUNS_DIR.name}/ "
                              "(run_folder()), or pass replace_shipped=True in a maintainer's script")
    state = {key: value.detach().cpu().half() if value.is_floating_point() else value.detach().cpu()
             for key, value in model.state_dict().items()}
    torch.save({"config": dict(config), "state_dict": state, "metadata": dict(metadata or {})}, path)
    return path


def weights_metadata(path: Path | str) -> dict:
    """The metadata stored by save_weights (an empty dict for files written without any)."""
    return torch.load(path, map_location="cpu", weights_only=True).get("metadata", {})


def load_weights(model: torch.nn.Module, path: Path | str, config: dict) -> torch.nn.Module:
    """Load weights written by save_weights into model, after checking that they were made with the same config."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no weights at {path}; train the model first, or load the shipped ones")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    saved = checkpoint["config"]
    mismatches = [f"{key}: weights have {saved.get(key)!r}, notebook has {value!r}"
                  for key, value in config.items() if saved.get(key) != value]
    if mismatches:
        raise ValueError(f"{path.name} was trained with another configuration ({'; '.join(mismatches)}); "
                         "set these back or train instead of loading")
    reference = model.state_dict()
    state = {key: value.to(reference[key].dtype) if key in reference else value for key, value in checkpoint["state_dict"].items()}
    model.load_state_dict(state)
    return model


# ----------------------------------------------------------------------------- fast paths (optional: bfloat16, CUDA graphs)


def autocast_model(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device_type: str,
                   dtype: torch.dtype = torch.bfloat16) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """model(x, t) (or model(x, t, labels)) run under autocast (convolutions and matrix products in `dtype`), its
    output back in float32.

    The samplers keep x_t and all the schedule arithmetic in float32, so only the network's own rounding changes.
    """
    def mixed_precision_model(x: torch.Tensor, t: torch.Tensor, *labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=dtype):
            return model(x, t, *labels).float()

    return mixed_precision_model


def cuda_graphed(fn: Callable[..., torch.Tensor], *example_inputs: torch.Tensor, warmup_calls: int = 3
                 ) -> Callable[..., torch.Tensor]:
    """fn recorded once as a CUDA graph and replayed from then on: the same kernels, launched by one call.

    A small network on a large GPU spends most of a step launching kernels, not running them: the DDPM U-Net's
    forward pass is a few hundred kernels of microseconds each, each launched from Python. A graph replays all of
    them from a single launch. What that asks of fn: GPU work only, no values read back to the host, no shapes or
    branches that depend on values; random draws inside it (torch.randn and friends on the default generator) are
    drawn afresh at every replay. The recorded inputs and output live at fixed addresses, so the returned function
    copies its arguments into the recorded inputs (same shapes, dtypes and device as example_inputs), replays, and
    returns a copy of the recorded output. fn first runs warmup_calls times on example_inputs, on a side stream, so
    that lazy set-up (cuDNN's algorithm choice, autograd's buffers) is not recorded; their results are dropped.
    Call this in the grad mode fn will run in (under torch.inference_mode for sampling).
    """
    if not example_inputs or any(not torch.is_tensor(x) or x.device.type != "cuda" for x in example_inputs):
        raise ValueError("cuda_graphed records GPU work: give it at least one example input, all tensors on a CUDA device")
    if warmup_calls < 1:
        raise ValueError(f"warmup_calls must be at least 1 (lazy set-up must not be recorded), got {warmup_calls}")
    static_inputs = [x.detach().clone() for x in example_inputs]
    side_stream = torch.cuda.Stream(device=static_inputs[0].device)
    side_stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side_stream):
        for _ in range(warmup_calls):
            fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(side_stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_output = fn(*static_inputs)

    def replay(*inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(static_inputs):
            raise ValueError(f"the graph was recorded with {len(static_inputs)} inputs, got {len(inputs)}")
        for recorded, given in zip(static_inputs, inputs):
            if given.shape != recorded.shape or given.dtype != recorded.dtype or given.device != recorded.device:
                raise ValueError(f"the graph was recorded for {tuple(recorded.shape)} {recorded.dtype} on {recorded.device}, got "
                                 f"{tuple(given.shape)} {given.dtype} on {given.device}: record another one for this input")
            recorded.copy_(given)
        graph.replay()
        return static_output.clone()

    return replay


def graphed_model(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """model(x, t) (or model(x, t, labels)) for a sampler, recorded as a CUDA graph (cuda_graphed) the first time it
    meets each batch shape.

    The samplers call the network once per step with the same shapes, so after the first step every call is a single
    graph launch. The graph reads the weights where they live, so in-place changes to them (an EMA update,
    load_state_dict) are seen by the next call. GPU only; call it, and sample, under torch.inference_mode (the
    samplers are).
    """
    graphs: dict[tuple, Callable[..., torch.Tensor]] = {}

    def model_from_graph(x: torch.Tensor, t: torch.Tensor, *labels: torch.Tensor) -> torch.Tensor:
        inputs = (x, t, *labels)
        key = tuple((tuple(tensor.shape), tensor.dtype, tensor.device) for tensor in inputs)
        if key not in graphs:
            graphs[key] = cuda_graphed(model, *inputs)
        return graphs[key](*inputs)

    return model_from_graph
