"""Shared helpers for the Diffusion Playground notebooks.

Sections, in the order a reader meets them: setup, data, noising, plotting, sampling.
Every function takes what it needs as arguments; nothing here reads a notebook's globals.
"""

from __future__ import annotations

import os
import random
import socket
import tempfile
import threading
import urllib.parse
from pathlib import Path
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torchvision
from torchvision.utils import make_grid
from tqdm import tqdm

PROJECT_DIR = Path(__file__).resolve().parent
DATA_DIR = PROJECT_DIR / "data"
SUBSET_PATH = DATA_DIR / "mnist_5k.npz"

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


# ----------------------------------------------------------------------------- noising


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


# ----------------------------------------------------------------------------- plotting


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
    low, high = value_range
    scaled = ((images.detach().float().cpu() - low) / (high - low)).clamp(0, 1)
    grid = make_grid(scaled, nrow=nrow, padding=2, pad_value=1.0)
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
    n_steps = len(history["inputs"])
    fig, axes = plt.subplots(n_steps + 1, 2, figsize=(6.4, 0.42 * (n_steps + 1) + 0.5), squeeze=False)
    for i in range(n_steps):
        show_images(history["inputs"][i][:n_show], ax=axes[i, 0], nrow=n_show)
        show_images(history["predictions"][i][:n_show], ax=axes[i, 1], nrow=n_show)
        axes[i, 0].text(-4, 16, f"step {i}", ha="right", va="center", fontsize=8)
    axes[0, 0].set_title("input to the model", fontsize=10)
    axes[0, 1].set_title("model's prediction", fontsize=10)
    show_images(final_images[:n_show], ax=axes[n_steps, 0], nrow=n_show)
    axes[n_steps, 0].text(-4, 16, "final", ha="right", va="center", fontsize=8, weight="bold")
    axes[n_steps, 1].set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def figure_folder(smoke: bool | None = None) -> Path:
    """Where save_figure writes: data/ in full mode, a temporary folder in smoke mode."""
    smoke = is_smoke_test() if smoke is None else smoke
    if smoke:
        folder = Path(tempfile.gettempdir()) / "diffusion_playground_figures"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return DATA_DIR


def save_figure(fig: plt.Figure, name: str, smoke: bool | None = None, dpi: int = FIGURE_DPI) -> Path:
    """Write fig as <folder>/<name>.png (folder from figure_folder) and return the path."""
    if not name or "/" in name or "\\" in name or name.endswith(".png"):
        raise ValueError(f"figure name must be a bare file stem like 'toy_forward_process', got {name!r}")
    path = figure_folder(smoke) / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white", metadata={"Software": None})
    return path


# ----------------------------------------------------------------------------- sampling


@torch.no_grad()
def toy_sample(
    model: Callable[[torch.Tensor], torch.Tensor],
    n_steps: int,
    shape: Sequence[int],
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    """The toy sampler: start from uniform noise, move 1/(n_steps - i) of the way to the model's prediction each step.

    Returns the final images and a history {"inputs": [...], "predictions": [...]} with one entry per step (on the CPU).
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    x = torch.rand(tuple(shape), generator=generator, device="cpu").to(device)
    history: dict[str, list[torch.Tensor]] = {"inputs": [], "predictions": []}
    for i in range(n_steps):
        prediction = model(x)
        history["inputs"].append(x.detach().cpu())
        history["predictions"].append(prediction.detach().cpu())
        mix = 1.0 / (n_steps - i)  # the last step has mix = 1 and returns the prediction itself
        x = x * (1 - mix) + prediction * mix
    return x, history


