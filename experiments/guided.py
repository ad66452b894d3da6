"""Train the shipped class-conditional weights of guided_diffusion.ipynb, and measure classifier-free guidance on
1,000 samples per strength for experiments/RESULTS.md. Not part of the default test run.

    python experiments/guided.py train --seconds 3600 --output-dir guided_results           # an hour on 2 CPU cores
    python experiments/guided.py train --seconds 3600 --output-dir guided_results --ship    # the maintainer's step
                                                   # that replaces the shipped data/guided_mnist_ema.pt
    python experiments/guided.py train --steps 6194 --t-min 0 --output-dir guided_all_t  # a set number of steps, t drawn
                                                   # from every timestep instead of the notebook's T_MIN on
    python experiments/guided.py train --seconds 3000 --from-weights data/guided_mnist_ema.pt --every-weight-lr 2e-4 \
        --class-lr 5e-3 --label-layer-lr 5e-4 --warmup-steps 100 --t-min 0 --output-dir guided_whole  # then every weight
    python experiments/guided.py train --relative-loss --t-min 200 --seconds 3600 --output-dir guided_relative  # every
                                                   # t weighed alike: each image's loss over DDPM's own loss at its t
    python experiments/guided.py train --t-min 200 --t-max 500 --seconds 1800 --output-dir guided_200_500  # the label
                                                   # parts trained on one window of t only
    python experiments/guided.py train --from-random-weights --seconds 180 --output-dir guided_random  # on a GPU: the
                                                   # notebook's route from random weights, every weight, every t
    python experiments/guided.py evaluate --weights data/guided_mnist_ema.pt --w 0 0.5 1 3 --output-dir guided_results

`train` runs the notebook's own pieces (its `conditional_from_ddpm`, `guided_loss` and the shared `train_ddpm`) at
its settings, read from its configuration cell, on this machine's device: from DDPM.ipynb's shipped weights, batch
CPU_BATCH_SIZE (GPU_BATCH_SIZE on a GPU), for a wall-clock budget. `--from-weights` starts from a conditional network trained before,
and `--every-weight-lr` trains DDPM's weights too, beside the label parts at their own peaks. `--from-random-weights` is the
notebook's `FROM_DDPM_WEIGHTS = False`: a fresh conditional U-Net, every weight trained on every t at its LEARNING_RATE,
with GPU_DROPOUT on a GPU (experiments/guided_on_gpu.sh runs it and scores it in one call). `evaluate` draws `--per-digit` samples of each digit
per strength with the notebook's `sample_digits` (DDIM on SAMPLING_STEPS steps with SAMPLING_ETA, the label on
t >= LABEL_T_MIN, the same noise for every strength), scores them with the project's classifier against real
held-out digits at the same n, then scores the label-free half of the network beside DDPM.ipynb's network with the
same sampler and noise. `--relative-loss` divides each image's squared error by the label-free network's (DDPM's)
mean squared error at its t, measured before training on a grid of timesteps, so that the noisiest steps, where
DDPM's error is thousands of times smaller, weigh as much as the rest. Results are written to --output-dir/guided_results.json after every measurement, so a run
cut short keeps what it had.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # notebook_code
sys.path.insert(0, str(ROOT))
import helper_functions as hf  # noqa: E402
from notebook_code import notebook_classes, notebook_settings, notebook_weights_config  # noqa: E402

NOTEBOOK = "guided_diffusion.ipynb"
SETTINGS = notebook_settings(NOTEBOOK)
DDPM_CONFIG = notebook_weights_config("DDPM.ipynb")  # what the shipped DDPM weights were made with
WEIGHTS_CONFIG = DDPM_CONFIG | {"num_classes": SETTINGS["NUM_CLASSES"], "p_uncond": SETTINGS["P_UNCOND"]}


def machine() -> str:
    """The device this script runs on, in words."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    return f"{names[0] if names else platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def write(results: dict, output_dir: Path, name: str = "guided_results.json") -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / name).write_text(json.dumps(results, indent=1))


@torch.no_grad()
def loss_at_t(model, x0: torch.Tensor, label_sets: list[torch.Tensor], t: int, schedule: hf.NoiseSchedule,
              generator: torch.Generator) -> list[float]:
    """L_simple of model on the images x0 noised to timestep t with one draw of noise from generator, once for each
    tensor of labels in label_sets, all on that same noise."""
    eps = torch.randn(x0.shape, device=x0.device, generator=generator)
    t_batch = torch.full((len(x0),), t, device=x0.device)
    x_t = hf.q_sample(x0, t_batch, schedule, eps=eps)
    return [F.mse_loss(model(x_t, t_batch, labels).float(), eps).item() for labels in label_sets]


def label_free_loss_by_t(model, x0: torch.Tensor, schedule: hf.NoiseSchedule, every: int = 25, seed: int = 0) -> torch.Tensor:
    """L_simple of model with no label, for every t in 0 ... T-1: measured on the images x0 with fixed noise at t = 0,
    every, 2 every, ... and T-1, and interpolated between those on a log scale (it falls about 10,000-fold over t)."""
    grid = sorted({*range(0, schedule.T, every), schedule.T - 1})
    generator = torch.Generator(x0.device).manual_seed(seed)
    no_label = torch.full((len(x0),), model.null_label, device=x0.device)
    losses = [loss_at_t(model, x0, [no_label], t, schedule, generator)[0] for t in grid]
    return torch.from_numpy(np.exp(np.interp(np.arange(schedule.T), grid, np.log(losses)))).float()


def windowed_guided_loss(model, x0, labels, schedule, p_uncond, t_min, t_max, drop_labels, loss_by_t=None):
    """The notebook's guided_loss on t drawn from {t_min, ..., t_max - 1} instead of {t_min, ..., T-1}; with
    loss_by_t, each image's squared error is divided by loss_by_t at its t: about 1 where the label adds nothing,
    below 1 where it helps, at every t alike."""
    if not 0 <= t_min < t_max <= schedule.T:
        raise ValueError(f"need 0 <= t_min < t_max <= {schedule.T}, got t_min {t_min} and t_max {t_max}")
    c = drop_labels(labels, p_uncond, model.null_label)
    t = torch.randint(t_min, t_max, (len(x0),), device=x0.device)
    eps = torch.randn_like(x0)
    x_t = hf.q_sample(x0, t, schedule, eps=eps)
    per_image = (model(x_t, t, c).float() - eps).pow(2).flatten(1).mean(1)
    return (per_image if loss_by_t is None else per_image / loss_by_t.to(x0.device)[t]).mean()


def train(args) -> None:
    nb = notebook_classes(NOTEBOOK)
    device = hf.choose_device()
    on_gpu = device.type == "cuda"
    hf.seed_everything(SETTINGS["SEED"])
    images, labels = hf.load_mnist_subset()
    x0, c = images * 2 - 1, labels
    every_weight = args.every_weight_lr is not None
    only_conditioning = SETTINGS["TRAIN_ONLY_CONDITIONING"] and not every_weight and not args.from_random_weights
    dropout = 0.0 if only_conditioning else (SETTINGS["GPU_DROPOUT"] if on_gpu else SETTINGS["CPU_DROPOUT"])
    if args.from_random_weights:  # the notebook's FROM_DDPM_WEIGHTS = False
        model = hf.Unet(DDPM_CONFIG["dim"], tuple(DDPM_CONFIG["dim_mults"]), dropout=dropout, num_classes=SETTINGS["NUM_CLASSES"])
    else:
        model = nb["conditional_from_ddpm"](hf.SHIPPED_WEIGHTS_PATH, DDPM_CONFIG, SETTINGS["NUM_CLASSES"], dropout=dropout)
    if args.from_weights is not None:  # a class-conditional network trained before, label parts and all
        model = hf.load_weights(model, args.from_weights, WEIGHTS_CONFIG)
    model = model.to(device)
    ema = hf.EMA(model, SETTINGS["EMA_DECAY"])
    batch_size = SETTINGS["GPU_BATCH_SIZE"] if on_gpu else SETTINGS["CPU_BATCH_SIZE"]
    class_lr, label_layer_lr = args.class_lr or SETTINGS["CLASS_LEARNING_RATE"], args.label_layer_lr or SETTINGS["LABEL_LAYER_LEARNING_RATE"]
    if every_weight:  # the notebook's label-part groups at their own peaks, then every other weight at --every-weight-lr
        trained = nb["only_conditioning"](model, class_lr, label_layer_lr)
        label_parts = {id(q) for group in trained for q in group["params"]}
        model.requires_grad_(True)  # only_conditioning froze the rest
        trained.append({"params": [q for q in model.parameters() if id(q) not in label_parts], "peak_lr": args.every_weight_lr})
        peak_lr = args.every_weight_lr
    elif only_conditioning:
        trained = nb["only_conditioning"](model, class_lr, label_layer_lr)
        peak_lr = class_lr
    else:
        trained, peak_lr = [{"params": list(model.parameters())}], SETTINGS["LEARNING_RATE"] * math.sqrt(batch_size / 128)
    optimizer = torch.optim.Adam(trained, lr=peak_lr, fused=on_gpu)
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(DDPM_CONFIG["T"], DDPM_CONFIG["beta_start"], DDPM_CONFIG["beta_end"])).to(device)
    p_uncond, t_min, loss_by_t = SETTINGS["P_UNCOND"], args.t_min, None
    if args.relative_loss:  # DDPM's own error at each t, before any label part has learned
        measure_on = x0[torch.randperm(len(x0), generator=torch.Generator().manual_seed(SETTINGS["SEED"]))[:128]].to(device)
        loss_by_t = label_free_loss_by_t(model.eval(), measure_on, schedule, every=50, seed=SETTINGS["SEED"])
        model.train()
        print("DDPM's L_simple at t = 0, 250, 500, 750, 999: " + ", ".join(f"{loss_by_t[t]:.2g}" for t in (0, 250, 500, 750, 999)))
    if args.relative_loss or args.t_max < schedule.T:
        loss_fn = lambda x, y: windowed_guided_loss(model, x, y, schedule, p_uncond, t_min, args.t_max,  # noqa: E731
                                                    nb["drop_labels"], loss_by_t)
    else:
        loss_fn = lambda x, y: nb["guided_loss"](model, x, y, schedule, p_uncond, t_min)  # noqa: E731
    start = time.perf_counter()
    losses = hf.train_ddpm(model, [ema], optimizer, loss_fn,
                           (x0.to(device), c.to(device)), batch_size, max_steps=args.steps or 10**9, peak_lr=peak_lr,
                           warmup_steps=args.warmup_steps, grad_clip=SETTINGS["GRAD_CLIP"],
                           max_seconds=None if args.steps else args.seconds,
                           cuda_graph=on_gpu)
    seconds = time.perf_counter() - start
    run_info = {"ema_decay": SETTINGS["EMA_DECAY"], "ema_warmup": True, "steps": len(losses), "batch_size": batch_size,
                "train_seconds": seconds, "device_name": machine(), "from_ddpm_weights": not args.from_random_weights, "dropout": dropout,
                "only_conditioning": only_conditioning, "from_weights": str(args.from_weights) if args.from_weights else None,
                "every_weight_peak_lr": args.every_weight_lr, "class_peak_lr": class_lr if only_conditioning or every_weight else None,
                "label_layer_peak_lr": label_layer_lr if only_conditioning or every_weight else None, "t_min": t_min,
                "t_max": args.t_max, "peak_lr": peak_lr, "warmup_steps": args.warmup_steps,
                "relative_loss": args.relative_loss,
                "losses": losses[:: max(1, len(losses) // 2000)], "trained_by": "experiments/guided.py train",
                "date": time.strftime("%Y-%m-%d")}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = hf.save_weights(ema.module, args.output_dir / "guided_mnist_ema.pt", WEIGHTS_CONFIG, metadata=run_info)
    print(f"{len(losses)} steps of {batch_size} in {seconds:.0f} s on {machine()}; last 100 steps' mean loss "
          f"{sum(losses[-100:]) / len(losses[-100:]):.4f}; weights: {path}")
    if args.ship:
        hf.save_weights(ema.module, hf.SHIPPED_GUIDED_WEIGHTS_PATH, WEIGHTS_CONFIG, metadata=run_info, replace_shipped=True)
        print(f"replaced the shipped {hf.SHIPPED_GUIDED_WEIGHTS_PATH.relative_to(ROOT)}")


def evaluation_setup(weights: Path, device: torch.device,
                     reference: bool = True) -> tuple[hf.NoiseSchedule, hf.Unet, hf.QualityReference | None]:
    """What scoring a conditional network needs: DDPM's noise schedule and the network of `weights` on `device` (in
    eval mode), and the classifier's reference of real digits from the shipped subset (None with reference=False,
    for a caller that scores nothing)."""
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(DDPM_CONFIG["T"], DDPM_CONFIG["beta_start"], DDPM_CONFIG["beta_end"])).to(device)
    network = hf.load_weights(hf.Unet(DDPM_CONFIG["dim"], tuple(DDPM_CONFIG["dim_mults"]), num_classes=SETTINGS["NUM_CLASSES"]),
                              weights, WEIGHTS_CONFIG).to(device).eval()
    if not reference:
        return schedule, network, None
    images, labels = hf.load_mnist_subset()
    return schedule, network, hf.QualityReference(hf.load_classifier(), images, labels, training_images=images)


def evaluate(args) -> None:
    nb = notebook_classes(NOTEBOOK)
    device = hf.choose_device()
    seed, real_seed, steps, classes = args.seed, SETTINGS["SEED"], args.steps, SETTINGS["NUM_CLASSES"]
    schedule, network, reference = evaluation_setup(args.weights, device)
    n = classes * args.per_digit
    results = {"machine": machine(), "weights": str(args.weights), "metadata": {k: v for k, v in hf.weights_metadata(args.weights).items()
                                                                              if k != "losses"},
               "per_digit": args.per_digit, "sampler": f"DDIM eta = {args.eta:g}, {steps} steps", "seed": seed,
               "date": time.strftime("%Y-%m-%d"),
               "real": hf.conditional_reference_scores(reference, args.per_digit, seed=real_seed),
               "real_unconditional": hf.reference_scores(reference, n, seed=real_seed)["real"], "guided": {}}
    print(hf.format_guided_quality("real digits", results["real"]))
    write(results, args.output_dir)
    asked = torch.arange(classes).repeat_interleave(args.per_digit)
    t_min = results["label_t_min"] = args.label_t_min  # the label is given on t >= t_min

    def timed(sample):
        start = time.perf_counter()
        samples = sample()
        return samples, time.perf_counter() - start

    for w in args.w:
        samples, seconds = timed(lambda: nb["sample_digits"](network, asked, w, schedule, steps, args.eta, args.batch,
                                                             torch.Generator(device).manual_seed(seed), device, classes, t_min))
        results["guided"][str(w)] = hf.conditional_quality(samples, asked, reference) | {"seconds": seconds}
        print(hf.format_guided_quality(f"w = {w:g}", results["guided"][str(w)], results["real"]) + f"   {seconds:.0f} s", flush=True)
        write(results, args.output_dir)
    if args.unconditional:
        no_label = torch.full((n,), classes)
        samples, seconds = timed(lambda: nb["sample_digits"](network, no_label, 0.0, schedule, steps, args.eta, args.batch,
                                                             torch.Generator(device).manual_seed(seed), device, classes))
        results["no_label"] = hf.sample_quality(samples, reference) | {"seconds": seconds}
        print(hf.format_quality("no label", results["no_label"], results["real_unconditional"]), flush=True)
        write(results, args.output_dir)
        ddpm = hf.load_weights(hf.Unet(DDPM_CONFIG["dim"], tuple(DDPM_CONFIG["dim_mults"])), hf.SHIPPED_WEIGHTS_PATH, DDPM_CONFIG).to(device).eval()
        generator = torch.Generator(device).manual_seed(seed)
        samples, seconds = timed(lambda: torch.cat([hf.ddim_sample(ddpm, schedule, (len(chunk), 1, 28, 28), steps, eta=args.eta, device=device,
                                                                   generator=generator, progress=False).clamp(-1, 1).cpu()
                                                    for chunk in no_label.split(args.batch)]))
        results["ddpm"] = hf.sample_quality(samples, reference) | {"seconds": seconds}
        print(hf.format_quality("DDPM.ipynb's network", results["ddpm"], results["real_unconditional"]), flush=True)
        write(results, args.output_dir)
    print(markdown_table(results))


def markdown_table(results: dict) -> str:
    """The results as the table of experiments/RESULTS.md: one row per guidance strength, then the real digits."""
    rows = ["| samples | accuracy | classifier FD | diversity | copies | seconds |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for w, scores in results["guided"].items():
        rows.append(f"| w = {float(w):g} | {scores['accuracy']:.1%} | {scores['classifier_fd']:.2f} | "
                    f"{scores['within_class_distance']:.2f} | {scores['copy_fraction']:.3f} | {scores['seconds']:.0f} |")
    real = results["real"]
    rows.append(f"| real held-out digits (mean of {real['draws']} draws, FD sd {real['classifier_fd_sd']:.2f}) | "
                f"{real['accuracy']:.1%} | {real['classifier_fd']:.2f} | {real['within_class_distance']:.2f} | "
                f"{real['copy_fraction']:.3f} | — |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="fine-tune DDPM.ipynb's shipped weights with labels, or train from random weights")
    train_parser.add_argument("--seconds", type=float, default=3600.0, help="wall-clock training budget")
    train_parser.add_argument("--steps", type=int, default=None,
                              help="train this many steps instead of for --seconds (the cosine decay follows the steps)")
    train_parser.add_argument("--t-min", type=int, default=None,
                              help="draw t from {t_min, ..., T-1} (default: the notebook's T_MIN; 0 with --from-random-weights)")
    train_parser.add_argument("--t-max", type=int, default=DDPM_CONFIG["T"],
                              help="draw t below this only (default: T, every step from --t-min on); below T the loss is "
                                   "not the notebook's, so it cannot be shipped")
    train_parser.add_argument("--from-weights", type=Path, default=None,
                              help="start from these class-conditional weights (e.g. data/guided_mnist_ema.pt) instead of "
                                   "DDPM's with the label parts at zero")
    train_parser.add_argument("--from-random-weights", action="store_true",
                              help="start from random weights and train every weight, as the notebook does with "
                                   "FROM_DDPM_WEIGHTS = False (the GPU route)")
    train_parser.add_argument("--every-weight-lr", type=float, default=None,
                              help="train every weight, DDPM's at this peak learning rate (default: the notebook's choice)")
    train_parser.add_argument("--class-lr", type=float, default=None, help="the class vectors' peak (default: the notebook's)")
    train_parser.add_argument("--label-layer-lr", type=float, default=None, help="the label layers' peak (default: the notebook's)")
    train_parser.add_argument("--warmup-steps", type=int, default=SETTINGS["WARMUP_STEPS"], help="linear warm-up (default: the notebook's)")
    train_parser.add_argument("--relative-loss", action="store_true",
                              help="divide each image's loss by DDPM's own loss at its t, so every t weighs alike (not the "
                                   "notebook's loss, so it cannot be shipped)")
    train_parser.add_argument("--ship", action="store_true", help="also replace the shipped data/guided_mnist_ema.pt")
    evaluate_parser = commands.add_parser("evaluate", help="score guidance strengths on 100 samples per digit")
    evaluate_parser.add_argument("--weights", type=Path, default=hf.SHIPPED_GUIDED_WEIGHTS_PATH)
    evaluate_parser.add_argument("--w", type=float, nargs="+", default=list(SETTINGS["GUIDANCE_SCALES"]))
    evaluate_parser.add_argument("--per-digit", type=int, default=100)
    evaluate_parser.add_argument("--batch", type=int, default=50, help="images per sampling call")
    evaluate_parser.add_argument("--seed", type=int, default=SETTINGS["SEED"],
                                 help="the starting noise's seed (default: the notebook's); the real digits keep the notebook's")
    evaluate_parser.add_argument("--steps", type=int, default=SETTINGS["SAMPLING_STEPS"], help="DDIM steps (the notebook's)")
    evaluate_parser.add_argument("--eta", type=float, default=SETTINGS["SAMPLING_ETA"], help="DDIM's eta (the notebook's)")
    evaluate_parser.add_argument("--label-t-min", type=int, default=SETTINGS["LABEL_T_MIN"],
                                 help="give the label on t >= this only (default: the notebook's LABEL_T_MIN)")
    evaluate_parser.add_argument("--no-unconditional", dest="unconditional", action="store_false",
                                 help="skip the label-free half and DDPM.ipynb's network")
    for sub in (train_parser, evaluate_parser):
        sub.add_argument("--output-dir", type=Path, default=ROOT / "runs" / "guided")
    args = parser.parse_args(argv)
    if args.command == "train" and args.t_min is None:
        args.t_min = 0 if args.from_random_weights else SETTINGS["T_MIN"]
    if args.command == "train" and not (0 <= args.t_min < DDPM_CONFIG["T"]):
        parser.error(f"--t-min must be in 0 ... {DDPM_CONFIG['T'] - 1}, got {args.t_min}")
    if args.command == "train" and not (args.t_min < args.t_max <= DDPM_CONFIG["T"]):
        parser.error(f"--t-max must lie above --t-min ({args.t_min}) and at most {DDPM_CONFIG['T']}, got {args.t_max}")
    if args.command == "train":
        rates = {"--every-weight-lr": args.every_weight_lr, "--class-lr": args.class_lr, "--label-layer-lr": args.label_layer_lr}
        for flag, rate in rates.items():
            if rate is not None and not rate > 0:
                parser.error(f"{flag} is a peak learning rate and must be above 0, got {rate:g}")
        if args.from_random_weights:
            clashing = [flag for flag, value in {"--from-weights": args.from_weights, **rates}.items() if value is not None]
            if clashing:
                parser.error(f"--from-random-weights trains every weight from scratch at the notebook's LEARNING_RATE; "
                             f"it takes no {', '.join(clashing)}")
        separate_peaks = SETTINGS["TRAIN_ONLY_CONDITIONING"] or args.every_weight_lr is not None
        if not separate_peaks and (args.class_lr is not None or args.label_layer_lr is not None):
            parser.error("--class-lr and --label-layer-lr set the label parts' own peaks, which only the label-parts "
                         "training or --every-weight-lr has; the notebook trains every weight at LEARNING_RATE")
        if args.ship and (args.relative_loss or args.t_max < DDPM_CONFIG["T"]):
            parser.error("--ship replaces the notebook's weights, which come from the notebook's own guided_loss; "
                         "--relative-loss and --t-max below T are not that loss")
        if args.relative_loss and args.from_random_weights:
            parser.error("--relative-loss divides by the label-free network's own loss, which random weights do not have yet")
        if args.warmup_steps < 0:
            parser.error(f"--warmup-steps must be 0 or more, got {args.warmup_steps}")
        if args.from_weights is not None and not args.from_weights.is_file():
            parser.error(f"--from-weights: no file {args.from_weights}")
    if args.command == "train" and args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.command == "evaluate" and not (0 <= args.label_t_min < DDPM_CONFIG["T"]):
        parser.error(f"--label-t-min must be in 0 ... {DDPM_CONFIG['T'] - 1} (0: the label on every step), got {args.label_t_min}")
    train(args) if args.command == "train" else evaluate(args)


if __name__ == "__main__":
    main()
