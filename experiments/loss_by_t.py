"""Where a class-conditional network's label helps: L_simple at each timestep t with the true label and with "no label"
(DDPM.ipynb's network), on the same training digits and the same noise (experiments/RESULTS.md, "Where the label
helps the noise prediction"). Not part of the test run.

    python experiments/loss_by_t.py --weights data/guided_mnist_ema.pt --images 512 --output-dir runs/loss_by_t

A ratio below 1 means the label makes the prediction of the noise better at that t; above 1, worse.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import guided  # noqa: E402
from guided import SETTINGS, hf  # noqa: E402

TIMESTEPS = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 950, 999)


@torch.inference_mode()
def loss_with_and_without_label(model, x0: torch.Tensor, labels: torch.Tensor, schedule: hf.NoiseSchedule,
                                timesteps, seed: int = 0) -> dict[int, dict[str, float]]:
    """For each t: the mean squared error of model's noise prediction on x0 noised to t, with `labels` and with the
    null label, both on the same noise; and their ratio."""
    if len(x0) != len(labels):
        raise ValueError(f"{len(x0)} images but {len(labels)} labels")
    generator = torch.Generator(x0.device).manual_seed(seed)
    no_label = torch.full_like(labels, model.null_label)
    results = {}
    for t in timesteps:
        if not 0 <= t < schedule.T:
            raise ValueError(f"t must lie in 0 ... {schedule.T - 1}, got {t}")
        with_label, without_label = guided.loss_at_t(model, x0, [labels, no_label], t, schedule, generator)
        results[t] = {"with_label": with_label, "without_label": without_label, "ratio": with_label / without_label}
    return results


def markdown_table(results: dict[int, dict[str, float]]) -> str:
    """The ratio and the label-free loss, one column per t."""
    ts = list(results)
    rows = ["| t | " + " | ".join(str(t) for t in ts) + " |", "| --- |" + " ---: |" * len(ts),
            "| L with label / L without | " + " | ".join(f"{results[t]['ratio']:.2f}" for t in ts) + " |",
            "| L without label | " + " | ".join(f"{results[t]['without_label']:.2g}" for t in ts) + " |"]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=hf.SHIPPED_GUIDED_WEIGHTS_PATH)
    parser.add_argument("--images", type=int, default=512, help="training digits per timestep")
    parser.add_argument("--t", type=int, nargs="+", default=list(TIMESTEPS))
    parser.add_argument("--output-dir", type=Path, default=guided.ROOT / "runs" / "loss_by_t")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be at least 1, got {args.images}")
    if not all(0 <= t < guided.DDPM_CONFIG["T"] for t in args.t):
        parser.error(f"--t must lie in 0 ... {guided.DDPM_CONFIG['T'] - 1}, got {args.t}")
    if not args.weights.is_file():
        parser.error(f"--weights: no file {args.weights}")
    device = hf.choose_device()
    schedule, network, _ = guided.evaluation_setup(args.weights, device, reference=False)
    images, labels = hf.load_mnist_subset()
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(SETTINGS["SEED"]))[: args.images]
    start = time.perf_counter()
    results = loss_with_and_without_label(network, (images[chosen] * 2 - 1).to(device), labels[chosen].to(device), schedule,
                                          args.t, seed=SETTINGS["SEED"])
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "loss_by_t.json").write_text(json.dumps(
        {"weights": str(args.weights), "images": args.images, "machine": guided.machine(),
         "seconds": time.perf_counter() - start, "by_t": results}, indent=1))
    print(markdown_table(results))


if __name__ == "__main__":
    main()
