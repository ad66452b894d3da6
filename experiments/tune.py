"""A small hyperparameter sweep of the DDPM notebook's own training loop, scored with the project's measure
(not part of the default test run).

Each setting trains the notebook's `Unet` with its `train_ddpm` from the same seed for the same budget, then scores
the last raw weights (the cosine decay ends at a learning rate of 0, and a short run is too short for the EMA
decays the notebook uses) with ancestral sampling on respaced steps (sigma^2 = beta_tilde, i.e. DDIM with eta = 1),
and, with --ddim-steps, with deterministic DDIM too. Besides the training loss (with dropout on, when there is
dropout) it reports the loss in eval mode on 1,000 training digits with fixed t and eps, the same for every setting.

    python experiments/tune.py --bf16 --steps 600 --batch 32 --lr 2.5e-4 5e-4 1e-3 --n 500       # 2-core CPU, ~20 minutes
    python experiments/tune.py --seconds 60 --batch 128 --lr 5e-4 1e-3 2e-3 --dims 32 64 --n 1000  # one GPU
    python experiments/tune.py --bf16 --steps 600 --batch 32 --lr 1e-3 --dropout 0 0.1 --n 500      # dropout, 2-core CPU
    python experiments/tune.py --bf16 --steps 3000 --batch 32 --lr 5e-4 --dropout 0 0.1 --n 1000 --ddim-steps 50  # ~40 min
    python experiments/tune.py --bf16 --seconds 420 --batch 32 --lr 5e-4 --dims 16 32 64 --n 500     # width, same minutes
    python experiments/tune.py --bf16 --seconds 420 --batch 16 64 128 --lr 1e-3 --lr-at-batch 128 --n 500  # batch, same minutes

--dims, --lr, --dropout, --batch and --warmup each take several values; every combination is trained. With
--lr-at-batch B the learning rates are peaks at batch B, scaled by sqrt(batch / B) for each batch tried, the rule the
notebook follows (B = 128); without it every batch uses the given rates as they are.

Prints one line per setting (steps done, last-100-step loss, the measure) and writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # notebook_code
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import helper_functions as hf  # noqa: E402
from notebook_code import notebook_classes, notebook_settings  # noqa: E402

SETTINGS = notebook_settings("DDPM.ipynb")  # the notebook's own values are the defaults of the sweep


@torch.no_grad()
def fixed_noise_loss(model, x0: torch.Tensor, schedule: hf.NoiseSchedule, seed: int, batch: int = 200) -> float:
    """|| eps - eps_theta(x_t, t) ||^2 in eval mode over x0, with t and eps drawn once from `seed`: comparable across
    settings, and free of dropout's noise."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.randint(0, schedule.T, (len(x0),), generator=generator).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(x0), batch):
        x_t = hf.q_sample(x0[i:i + batch], t[i:i + batch], schedule, eps=eps[i:i + batch])
        total += torch.nn.functional.mse_loss(model(x_t, t[i:i + batch]).float(), eps[i:i + batch], reduction="sum").item()
    model.train(was_training)
    return total / eps.numel()


def peak_learning_rate(lr: float, batch: int, lr_at_batch: int | None) -> float:
    """The peak rate for `batch`: `lr` as given, or scaled by sqrt(batch / lr_at_batch) (the notebook's rule)."""
    return lr if lr_at_batch is None else lr * math.sqrt(batch / lr_at_batch)


def setting_name(dim: int, peak_lr: float, dropout: float, batch: int, warmup: int, swept: set[str]) -> str:
    """A short label: width and learning rate always, batch and warm-up when swept, dropout when swept or on."""
    name = f"dim {dim}, lr {peak_lr:.3g}"
    if "dropout" in swept or dropout:
        name += f", dropout {dropout:g}"
    if "batch" in swept:
        name += f", batch {batch}"
    if "warmup" in swept:
        name += f", warm-up {warmup}"
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lr", type=float, nargs="+", default=[SETTINGS["LEARNING_RATE"]], help="peak Adam learning rates to try")
    parser.add_argument("--dims", type=int, nargs="+", default=[SETTINGS["DIM"]], help="U-Net widths to try")
    parser.add_argument("--dropout", type=float, nargs="+", default=[0.0], help="ResNet-block dropout rates to try")
    parser.add_argument("--batch", type=int, nargs="+", default=[SETTINGS["CPU_BATCH_SIZE"]], help="batch sizes to try")
    parser.add_argument("--lr-at-batch", type=int, default=None,
                        help="the --lr values are peaks at this batch, scaled by sqrt(batch / it) (notebook: 128)")
    parser.add_argument("--warmup", type=int, nargs="+", default=[SETTINGS["WARMUP_STEPS"]], help="linear warm-up steps to try")
    parser.add_argument("--steps", type=int, default=600, help="training steps per setting (the budget on a CPU)")
    parser.add_argument("--seconds", type=float, default=None, help="wall-clock budget per setting instead of --steps")
    parser.add_argument("--n", type=int, default=500, help="samples scored per setting")
    parser.add_argument("--sample-steps", type=int, default=50, help="respaced ancestral steps for the samples")
    parser.add_argument("--ddim-steps", type=int, default=0, help="also score DDIM (eta = 0) with this many steps")
    parser.add_argument("--chunk", type=int, default=200, help="images per sampling batch")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for training and sampling")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="tune.json")
    args = parser.parse_args()
    if args.ddim_steps < 0:
        parser.error(f"--ddim-steps must be 0 (off) or positive, got {args.ddim_steps}")
    if args.steps < 1 or args.n < 2 or min(args.batch) < 1 or (args.lr_at_batch is not None and args.lr_at_batch < 1):
        parser.error("--steps, --batch and --lr-at-batch must be positive and --n at least 2")
    if min(args.warmup) < 0:
        parser.error(f"--warmup must be 0 or more steps, got {args.warmup}")
    if not all(0.0 <= p < 1.0 for p in args.dropout):
        parser.error(f"--dropout rates must lie in [0, 1), got {args.dropout}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    notebook = notebook_classes("DDPM.ipynb")
    images, labels = hf.load_mnist_subset()
    x0 = (images * 2 - 1).to(device)  # the notebook's x0 = 2x - 1, all 5,000 shipped digits
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(SETTINGS["T"], SETTINGS["BETA_START"], SETTINGS["BETA_END"])).to(device)
    reference = hf.QualityReference(hf.load_classifier(), images, labels)
    floor = hf.reference_scores(reference, args.n, seed=args.seed)["real"]
    budget = f"{args.seconds:g} s" if args.seconds else f"{args.steps} steps"
    print(f"{device} | batch {' '.join(map(str, args.batch))} | {budget} per setting | bf16 {args.bf16} | n = {args.n}, "
          f"{args.sample_steps} respaced ancestral steps", flush=True)
    print(hf.format_quality("real digits (floor)", floor), flush=True)
    results = {"device": str(device), "args": vars(args), "floor": floor, "runs": {}}
    swept = {option for option in ("dropout", "batch", "warmup") if len(getattr(args, option)) > 1}  # what setting_name shows
    for dim, lr, dropout, batch, warmup in itertools.product(args.dims, args.lr, args.dropout, args.batch, args.warmup):
        peak_lr = peak_learning_rate(lr, batch, args.lr_at_batch)
        hf.seed_everything(args.seed)
        model = notebook["Unet"](dim=dim, dim_mults=(1, 2, 4), dropout=dropout).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=peak_lr, fused=device.type == "cuda")
        start = time.perf_counter()
        losses = notebook["train_ddpm"](model, [], optimizer, lambda x0: notebook["ddpm_loss"](model, x0, schedule),
                                        x0, batch,
                                        max_steps=10**9 if args.seconds else args.steps, peak_lr=peak_lr,
                                        warmup_steps=warmup, grad_clip=1.0, max_seconds=args.seconds, bf16=args.bf16,
                                        cuda_graph=device.type == "cuda")  # as the notebook trains on a GPU
        train_seconds = time.perf_counter() - start
        eval_loss = fixed_noise_loss(model, x0[::5], schedule, seed=args.seed)  # 1,000 digits, 100 of each class
        network = hf.autocast_model(model.eval(), device.type) if args.bf16 else model.eval()
        short_model, short_schedule = hf.respaced(network, schedule, args.sample_steps)
        generator = torch.Generator(device).manual_seed(args.seed)
        samples = hf.sample_in_batches(
            lambda size: hf.ddpm_sample(short_model, short_schedule.to(device), (size, 1, 28, 28), device=device,
                                        generator=generator, progress=False),
            args.n, args.chunk).clamp(-1, 1)
        scores = hf.sample_quality(samples, reference)
        name = setting_name(dim, peak_lr, dropout, batch, warmup, swept)
        results["runs"][name] = {**scores, "steps": len(losses), "batch": batch, "warmup": warmup, "peak_lr": peak_lr,
                                 "dim": dim, "dropout": dropout, "train_seconds": train_seconds,
                                 "last_loss": sum(losses[-100:]) / len(losses[-100:]), "eval_loss": eval_loss}
        print(hf.format_quality(name, scores) + f"   {len(losses)} steps in {train_seconds:.0f} s, "
              f"loss {results['runs'][name]['last_loss']:.4f}, eval-mode loss {eval_loss:.4f}", flush=True)
        if args.ddim_steps:
            ddim_generator = torch.Generator(device).manual_seed(args.seed)
            ddim_samples = hf.sample_in_batches(
                lambda size: hf.ddim_sample(network, schedule, (size, 1, 28, 28), args.ddim_steps, device=device,
                                            generator=ddim_generator, progress=False),
                args.n, args.chunk).clamp(-1, 1)
            results["runs"][name]["ddim"] = hf.sample_quality(ddim_samples, reference)
            print(hf.format_quality(f"  DDIM {args.ddim_steps} steps", results["runs"][name]["ddim"]), flush=True)
        Path(args.output).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
