"""How long eps_theta is along DDIM's path, against the same network on noised real digits (not part of the default test run).

    python tests/eps_norms.py --n 100 --seed 1000 --steps 50

At every timestep of a DDIM (eta = 0) path from x_T, prints the mean of ||eps_theta(x_t, t)|| / sqrt(D) on the
sampler's own x_t and on q(x_t | x_0) for as many real digits (the inputs the network was trained on), the true
noise's norm on the latter, and the bfloat16-autocast network's norm relative to float32's on the sampler's x_t.
A network that sees x_t it was not trained on (exposure bias, Ning et al. 2024) predicts a longer eps than on
training-like inputs; scaling eps by --eps-scale in evaluate_quality.py tests what that length does to the FD.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import helper_functions as hf  # noqa: E402
from evaluate_quality import CONFIG  # noqa: E402
from notebook_code import notebook_classes  # noqa: E402


def mean_norm(x: torch.Tensor) -> float:
    """Mean over the batch of ||x_i|| / sqrt(D): about 1 for standard normal noise."""
    return (x.flatten(1).norm(dim=1) / x[0].numel() ** 0.5).mean().item()


@torch.inference_mode()
def eps_norms_along_ddim(model, schedule: hf.NoiseSchedule, real_x0: torch.Tensor, steps: int, seed: int) -> list[dict]:
    """One row per DDIM timestep tau (from T-1 down): eps norms on the path's x_t, on noised real digits, of the true
    noise, and bfloat16's norm / float32's on the path. The path is hf.ddim_sample's (float32, eta = 0), which draws
    x_T from the seeded generator; each step's noise for the real digits comes from the same generator after it."""
    generator = torch.Generator().manual_seed(seed)
    bf16_model = hf.autocast_model(model, "cpu")
    rows = []

    def measured_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = model(x, t)
        noise = torch.randn(real_x0.shape, generator=generator)
        eps_on_real = model(hf.q_sample(real_x0, t, schedule, noise), t)  # the inputs the network was trained on
        rows.append({"t": int(t[0]), "path": mean_norm(eps), "real": mean_norm(eps_on_real), "noise": mean_norm(noise),
                     "bf16_over_fp32": (bf16_model(x, t).flatten(1).norm(dim=1) / eps.flatten(1).norm(dim=1)).mean().item()})
        return eps

    hf.ddim_sample(measured_model, schedule, real_x0.shape, steps, generator=generator, progress=False)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="paths, and real digits")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--weights", default=str(hf.DATA_DIR / "ddpm_mnist_ema.pt"))
    args = parser.parse_args()
    if not 1 <= args.n <= 5000 or not 2 <= args.steps <= CONFIG["T"]:
        parser.error(f"--n must lie in 1 ... 5000 (the shipped digits) and --steps in 2 ... {CONFIG['T']}, got {args.n}, {args.steps}")
    model = notebook_classes("DDPM.ipynb")["Unet"](dim=CONFIG["dim"], dim_mults=tuple(CONFIG["dim_mults"]))
    model = hf.load_weights(model, args.weights, CONFIG).eval()
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(CONFIG["T"]))
    images, labels = hf.load_mnist_subset()
    real_x0 = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[:args.n]] * 2 - 1
    print(f"||eps|| / sqrt(D), mean over {args.n} images; DDIM eta = 0, {args.steps} steps from seed {args.seed}")
    print(f"{'t':>5s} {'on the path':>12s} {'on real x_t':>12s} {'path / real':>12s} {'true noise':>11s} {'bf16 / fp32':>12s}")
    for row in eps_norms_along_ddim(model, schedule, real_x0, args.steps, args.seed):
        print(f"{row['t']:5d} {row['path']:12.4f} {row['real']:12.4f} {row['path'] / row['real']:12.4f} {row['noise']:11.4f} {row['bf16_over_fp32']:12.5f}")


if __name__ == "__main__":
    main()
