"""The same minutes of training for the project's DDPM and for denoising-diffusion-pytorch, scored by the project's
sample-quality measure; then the speed table on the same machine. Not part of the default test run.

    pip install denoising-diffusion-pytorch        # only for this script, never in requirements.txt
    python experiments/gpu_comparison.py --output-dir gpu_results            # one GPU: 3 + 3 minutes of training, ~10 min
    python experiments/gpu_comparison.py --train-seconds 20 --n 200 --sample-steps 100 --output-dir cpu_results   # a CPU
    python experiments/gpu_comparison.py --ship --output-dir gpu_results    # the maintainer's step that replaces the
                                                                            # shipped data/ddpm_mnist_ema.pt

Checked with denoising-diffusion-pytorch 2.3.4 and ema-pytorch 0.8.3 (2026-11-26, on a CPU). On a machine with no
network whose Python already has accelerate, einops, scipy and torchvision, three wheels are all it needs:
`pip download --no-deps -d wheels denoising-diffusion-pytorch==2.3.4 ema-pytorch==0.8.3 pytorch-fid==0.3.0`
where there is a network, then `pip install --no-index --no-deps wheels/*.whl` there.

Both models train on the 5,000 shipped digits, for the same wall-clock time, on the same device:
- ours: the DDPM notebook's `Unet`, `EMA`, `random_batches`, `train_ddpm` and `ddpm_loss` (as DDPM.ipynb uses them), at the
  notebook's GPU settings, read from its configuration cell (batch 128, Adam 1e-3 with 200 warm-up steps and a cosine
  decay, dropout 0.1, the notebook's warm-up EMA at its decay 0.999 with 0.995 and 0.9995 beside it), on the fastest
  path the speed table of the same run
  measured: the training step replayed from a CUDA graph (as the notebook does on a GPU), in float32 or bfloat16
  autocast;
- the library: `Unet(dim=64, channels=1, dim_mults=(1, 2, 4))` in `GaussianDiffusion(timesteps=1000,
  objective="pred_noise", beta_schedule="linear")`, batch 128, tuned as well as we know how: Adam 1e-3 with 200
  linear warm-up steps, gradient clipping at 1 and the betas of its own Trainer, ema-pytorch's EMA with decay 0.999
  updated every step, float32 (its Trainer's default; TF32 matrix products are allowed for both models).
Each then samples `--n` images with `--sample-steps` ancestral steps (the library with its own sampler; ours on the
sampling path measured fastest here, with or without a CUDA graph and bfloat16), and the
project's measure scores them against the real-digit floor. Everything is written to --output-dir as it is measured
(results.json, the EMA weights, a figure of both models' samples), so a run cut short keeps what it had.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # notebook_code
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import helper_functions as hf  # noqa: E402
from benchmark import matmul_peak, measure, synchronize  # noqa: E402
from notebook_code import notebook_classes, notebook_settings, notebook_weights_config  # noqa: E402

# The DDPM notebook's settings, read from its configuration cell: the weights this script writes carry them.
WEIGHTS_CONFIG = notebook_weights_config("DDPM.ipynb")
SETTINGS = notebook_settings("DDPM.ipynb")
OURS = {"batch_size": SETTINGS["GPU_BATCH_SIZE"], "peak_lr": SETTINGS["LEARNING_RATE"], "warmup_steps": SETTINGS["WARMUP_STEPS"],
        "grad_clip": SETTINGS["GRAD_CLIP"], "dropout": SETTINGS["GPU_DROPOUT"],
        "ema_decays": tuple(sorted({0.995, SETTINGS["EMA_DECAY"], 0.9995}))}  # the notebook's decay, and one either side
LIBRARY = {"dim": 64, "batch_size": 128, "lr": 1e-3, "warmup_steps": 200, "grad_clip": 1.0, "ema_decay": 0.999}


def installed_version(package: str) -> str | None:
    """The installed version of a package, or None where it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


class Run:
    """Results, a log and the output folder of one run; results.json is rewritten after every measurement."""

    def __init__(self, output_dir: Path, deadline_s: float):
        self.output_dir, self.deadline_s, self.start = output_dir, deadline_s, time.perf_counter()
        output_dir.mkdir(parents=True, exist_ok=True)
        self.results: dict = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def time_left(self) -> float:
        return self.deadline_s - self.elapsed()

    def log(self, message: str) -> None:
        line = f"[{self.elapsed():6.1f} s] {message}"
        print(line, flush=True)
        with open(self.output_dir / "log.txt", "a") as log_file:
            log_file.write(line + "\n")

    def record(self, key: str, value) -> None:
        self.results[key] = value
        (self.output_dir / "results.json").write_text(json.dumps(self.results, indent=2))


def score(run: Run, name: str, samples: torch.Tensor, reference: hf.QualityReference, seconds: float | None,
          value_range=(-1.0, 1.0)) -> dict:
    """The project's measure of samples, logged and recorded under name (with the sampling time)."""
    scores = hf.sample_quality(samples.float().cpu(), reference, value_range=value_range)
    scores["sampling_seconds"] = seconds
    run.log(hf.format_quality(name, scores) + (f"   {seconds:6.1f} s" if seconds is not None else ""))
    run.record(f"quality/{name}", scores)
    return scores


def timed_sampling(fn) -> tuple[torch.Tensor, float]:
    """fn()'s samples and the seconds it took, GPU work included."""
    start = time.perf_counter()
    samples = fn()
    if samples.is_cuda:
        torch.cuda.synchronize()
    return samples, time.perf_counter() - start


def train_ours(run: Run, nb: dict, x0: torch.Tensor, device: torch.device, seconds: float, bf16: bool, cuda_graph: bool,
               dropout: float = 0.0):
    """The notebook's train_ddpm for `seconds`; returns the raw model, the EMA models and the losses."""
    hf.seed_everything(0)
    model = nb["Unet"](dim=WEIGHTS_CONFIG["dim"], dim_mults=tuple(WEIGHTS_CONFIG["dim_mults"]), dropout=dropout).to(device)
    emas = {decay: nb["EMA"](model, decay) for decay in OURS["ema_decays"]}
    optimizer = torch.optim.Adam(model.parameters(), lr=OURS["peak_lr"], fused=device.type == "cuda")
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(WEIGHTS_CONFIG["T"])).to(device)
    synchronize(device)
    start = time.perf_counter()
    losses = nb["train_ddpm"](model, list(emas.values()), optimizer, lambda x0: nb["ddpm_loss"](model, x0, schedule),
                              x0, OURS["batch_size"], max_steps=10**9,
                              peak_lr=OURS["peak_lr"], warmup_steps=OURS["warmup_steps"], grad_clip=OURS["grad_clip"],
                              max_seconds=seconds, bf16=bf16, cuda_graph=cuda_graph)
    synchronize(device)
    train_seconds = time.perf_counter() - start
    run.log(f"ours: {len(losses)} steps of {OURS['batch_size']} in {train_seconds:.1f} s "
            f"({len(losses) * OURS['batch_size'] / train_seconds:.0f} images/s), last-100 loss {sum(losses[-100:]) / len(losses[-100:]):.4f}")
    run.record("train/ours", {"steps": len(losses), "seconds": train_seconds, "batch_size": OURS["batch_size"],
                              "bf16": bf16, "cuda_graph": cuda_graph, "dropout": dropout, "final_loss": sum(losses[-100:]) / len(losses[-100:]),
                              "losses": losses[:: max(1, len(losses) // 2000)]})
    return model, emas, losses, train_seconds


def train_library(run: Run, x01: torch.Tensor, device: torch.device, seconds: float, random_batches):
    """denoising-diffusion-pytorch, trained like its Trainer does (plus the warm-up) for `seconds`; returns its EMA."""
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    from ema_pytorch import EMA

    torch.manual_seed(0)
    unet = Unet(dim=LIBRARY["dim"], channels=1, dim_mults=(1, 2, 4))
    diffusion = GaussianDiffusion(unet, image_size=28, timesteps=1000, objective="pred_noise", beta_schedule="linear").to(device)
    ema = EMA(diffusion, beta=LIBRARY["ema_decay"], update_every=1).to(device)
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=LIBRARY["lr"], betas=(0.9, 0.99))
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / LIBRARY["warmup_steps"]))
    batches = random_batches(x01, LIBRARY["batch_size"])
    losses = []
    synchronize(device)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        loss = diffusion(next(batches))  # the library takes images in [0, 1] and normalises them itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), LIBRARY["grad_clip"])
        optimizer.step()
        optimizer.zero_grad()
        warmup.step()
        ema.update()
        losses.append(loss.detach())
    synchronize(device)
    train_seconds = time.perf_counter() - start
    losses = torch.stack(losses).cpu().tolist()
    run.log(f"library: {len(losses)} steps of {LIBRARY['batch_size']} in {train_seconds:.1f} s "
            f"({len(losses) * LIBRARY['batch_size'] / train_seconds:.0f} images/s), last-100 loss {sum(losses[-100:]) / len(losses[-100:]):.4f}")
    run.record("train/library", {"steps": len(losses), "seconds": train_seconds, "batch_size": LIBRARY["batch_size"],
                                 "parameters": hf.count_parameters(unet), "final_loss": sum(losses[-100:]) / len(losses[-100:]),
                                 "losses": losses[:: max(1, len(losses) // 2000)]})
    return ema.ema_model


def sampling_path(network, device: torch.device, bf16: bool, cuda_graph: bool):
    """network(x, t) as a sampler runs it on one path: optionally under bfloat16 autocast, optionally from a CUDA graph."""
    network = hf.autocast_model(network, device.type) if bf16 else network
    return hf.graphed_model(network) if cuda_graph else network


def sample_grid_figure(path: Path, panels: dict[str, torch.Tensor]) -> None:
    """Side-by-side grids of 64 samples each, titled; images in [0, 1]."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5.4), squeeze=False)
    for ax, (title, images) in zip(axes[0], panels.items()):
        hf.show_images(images[:64], ax=ax, nrow=8, value_range=(0, 1), title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=hf.FIGURE_DPI)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train-seconds", type=float, default=180.0, help="wall-clock training budget of each model")
    parser.add_argument("--n", type=int, default=1000, help="samples per model and sampler")
    parser.add_argument("--sample-steps", type=int, default=1000, help="ancestral steps for the head-to-head samples")
    parser.add_argument("--ddim-steps", type=int, nargs="*", default=[250, 100, 50, 20], help="DDIM step counts to score")
    parser.add_argument("--compare-steps", type=int, default=50, help="DDIM steps for comparing raw and EMA weights")
    parser.add_argument("--respaced-steps", type=int, nargs="*", default=[50, 20], help="respaced ancestral step counts")
    parser.add_argument("--speed-batch", type=int, default=128, help="batch of the speed table")
    parser.add_argument("--speed-dims", type=int, nargs="+", default=[32, 64],
                        help="U-Net widths of the speed table (32 is needed: its rows pick our training path)")
    parser.add_argument("--loss-check-steps", type=int, default=0, help="steps of a float32 vs bfloat16 loss check (0: none)")
    parser.add_argument("--extra-seeds", type=int, nargs="*", default=[1, 2], help="more draws of DDIM and ancestral, if time allows")
    parser.add_argument("--deadline", type=float, default=560.0, help="seconds after which optional parts are skipped")
    parser.add_argument("--skip-library", action="store_true", help="train and score only the project's model")
    parser.add_argument("--dropout", type=float, default=OURS["dropout"],
                        help="dropout in our U-Net's ResNet blocks while training (default: the notebook's GPU_DROPOUT)")
    parser.add_argument("--ship", action="store_true",
                        help=f"replace data/{hf.SHIPPED_WEIGHTS_PATH.name} with the EMA {SETTINGS['EMA_DECAY']} weights (maintainers only)")
    parser.add_argument("--output-dir", default="gpu_results")
    args = parser.parse_args()
    if 32 not in args.speed_dims:
        parser.error(f"--speed-dims must include 32, the width whose rows pick our training path, got {args.speed_dims}")
    if not 0.0 <= args.dropout < 1.0:
        parser.error(f"--dropout must lie in [0, 1), got {args.dropout}")
    library_versions = {package: installed_version(package) for package in ("denoising-diffusion-pytorch", "ema-pytorch")}
    missing = [package for package, version in library_versions.items() if version is None]
    if missing and not args.skip_library:
        parser.error(f"{' and '.join(missing)} not installed: pip install denoising-diffusion-pytorch (it brings ema-pytorch), "
                     "or pass --skip-library to train and score only the project's model")
    device = torch.device(args.device)
    run = Run(Path(args.output_dir), args.deadline)
    torch.backends.cuda.matmul.allow_tf32 = True  # both models: TF32 matrix products (cuDNN convolutions use it by default)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    library_line = "" if args.skip_library else f" | denoising-diffusion-pytorch {library_versions['denoising-diffusion-pytorch']}"
    run.log(f"{device} ({name}) | torch {torch.__version__}{library_line} | train {args.train_seconds:.0f} s each | n = {args.n}")
    run.record("setup", {"device": str(device), "device_name": name, "torch": torch.__version__, "versions": library_versions, **vars(args),
                         "ours": {k: list(v) if isinstance(v, tuple) else v for k, v in OURS.items()}, "library": LIBRARY})

    nb = notebook_classes("DDPM.ipynb")
    images, labels = hf.load_mnist_subset()
    reference = hf.QualityReference(hf.load_classifier(), images, labels)  # both models train on all 5,000 digits
    floors = hf.reference_scores(reference, args.n)
    run.log(hf.format_quality("real digits (floor)", floors["real"]))
    run.log(hf.format_quality("uniform noise (ceiling)", floors["noise"]))
    run.record("quality/real digits (floor)", floors["real"])
    run.record("quality/uniform noise (ceiling)", floors["noise"])
    x01 = images.to(device)

    shape = (args.n, 1, 28, 28)
    on_gpu = device.type == "cuda"

    # ---- speed (issue 5): training and inference images/s of both U-Nets at batch --speed-batch
    rows = []
    peak = matmul_peak(device)
    torch.backends.cuda.matmul.allow_tf32 = True  # matmul_peak measured plain float32; training allows TF32 again
    run.record("matmul_peak_fp32_flops", peak)
    run.log(f"measured fp32 matmul peak {peak / 1e12:.1f} TFLOP/s")
    variants = [("ours fp32", nb["Unet"], False, False)]
    if on_gpu:
        variants += [("ours fp32 CUDA graph", nb["Unet"], False, True), ("ours bf16 CUDA graph", nb["Unet"], True, True)]
    if not args.skip_library:
        from denoising_diffusion_pytorch import Unet as LibraryUnet
        variants += [("library fp32", lambda dim: LibraryUnet(dim=dim, channels=1, dim_mults=(1, 2, 4)), False, False)]
    for dim in args.speed_dims:
        for label, build, bf16_on, graph_on in variants:
            try:
                row = {"name": f"{label} dim={dim}", **measure(label, build(dim=dim), True, device, args.speed_batch, 28, 0, 0, 20,
                                                               bf16=bf16_on, cuda_graph=graph_on)}
            except Exception as error:  # a fast path that fails is reported, and the comparison goes on without it
                run.log(f"{label} dim={dim} failed: {error!r}")
                continue
            row["fraction_of_matmul_peak"] = row["train_tflops"] * 1e12 / peak
            rows.append(row)
            run.log(f"{row['name']:<28s} train {row['train_images_per_s']:9.0f} img/s   infer {row['inference_images_per_s']:9.0f} img/s")
            run.record("speed", rows)
    fastest_training = max((row for row in rows if row["name"].startswith("ours") and row["name"].endswith("dim=32")),
                           key=lambda row: row["train_images_per_s"])
    train_bf16, train_graph = fastest_training["bf16"], fastest_training["cuda_graph"]
    run.log(f"training path: {'bf16' if train_bf16 else 'fp32'}{', CUDA graph' if train_graph else ''}")

    # ---- which sampling path is fastest: 25 ancestral steps on n images with each (graph recording included)
    probe_model = nb["Unet"](dim=WEIGHTS_CONFIG["dim"]).to(device).eval()
    probe_schedule = hf.NoiseSchedule(hf.linear_beta_schedule(25)).to(device)
    sampling_speed = {}
    for bf16_on in (False, True):
        for graph_on in (False, True) if on_gpu else (False,):
            label = f"{'bf16' if bf16_on else 'fp32'}{' CUDA graph' if graph_on else ''}"
            try:
                network = sampling_path(probe_model, device, bf16_on, graph_on)
                _, seconds = timed_sampling(lambda: hf.ddpm_sample(network, probe_schedule, shape, device=device, progress=False))
            except Exception as error:
                run.log(f"sampling {label} failed: {error!r}")
                continue
            sampling_speed[label] = {"bf16": bf16_on, "cuda_graph": graph_on, "seconds_per_step": seconds / 25}
            run.log(f"sampling {args.n} images, {label}: {1000 * seconds / 25:.1f} ms per step")
    run.record("sampling_speed", sampling_speed)
    fastest = min(sampling_speed.values(), key=lambda v: v["seconds_per_step"])

    def sampling_network(network):
        """The network as the fastest sampling path runs it."""
        return sampling_path(network, device, fastest["bf16"], fastest["cuda_graph"])

    # ---- does bfloat16 change the loss curve? The same seeded run of `--loss-check-steps` steps in float32 and bf16
    if args.loss_check_steps > 0 and run.time_left() > 400:
        curves = {}
        check_schedule = hf.NoiseSchedule(hf.linear_beta_schedule(WEIGHTS_CONFIG["T"])).to(device)
        for label, bf16_on in (("fp32", False), ("bf16", True)):
            hf.seed_everything(1)
            check_model = nb["Unet"](dim=32).to(device)
            check_optimizer = torch.optim.Adam(check_model.parameters(), lr=OURS["peak_lr"], fused=on_gpu)
            curves[label] = nb["train_ddpm"](check_model, [], check_optimizer, lambda x0: nb["ddpm_loss"](check_model, x0, check_schedule),
                                             x01 * 2 - 1, OURS["batch_size"],
                                             max_steps=args.loss_check_steps, peak_lr=OURS["peak_lr"], warmup_steps=OURS["warmup_steps"],
                                             grad_clip=OURS["grad_clip"], bf16=bf16_on, cuda_graph=train_graph)
        windows = {label: [sum(c[i:i + 100]) / len(c[i:i + 100]) for i in range(0, len(c), 100)] for label, c in curves.items()}
        run.log("loss per 100 steps, fp32: " + " ".join(f"{v:.4f}" for v in windows["fp32"]))
        run.log("loss per 100 steps, bf16: " + " ".join(f"{v:.4f}" for v in windows["bf16"]))
        run.record("bf16_loss_check", windows)

    # ---- ours: train, sample, score
    try:
        model, emas, _, train_seconds = train_ours(run, nb, x01 * 2 - 1, device, args.train_seconds, train_bf16, train_graph, args.dropout)
    except RuntimeError as error:  # a graph that cannot be recorded fails at once: train the eager loop instead
        if not train_graph:
            raise
        run.log(f"training with a CUDA graph failed ({error!r}); training without one")
        train_graph = False
        model, emas, _, train_seconds = train_ours(run, nb, x01 * 2 - 1, device, args.train_seconds, train_bf16, train_graph, args.dropout)
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(WEIGHTS_CONFIG["T"])).to(device)
    candidates = {"ours raw weights": model.eval()} | {f"ours EMA {d}": ema.module for d, ema in emas.items()}
    ema_scores = {}
    for label, network in candidates.items():
        network = sampling_network(network)
        samples, seconds = timed_sampling(lambda: hf.ddim_sample(network, schedule, shape, args.compare_steps, device=device,
                                                                 generator=torch.Generator(device).manual_seed(0), progress=False))
        ema_scores[label] = score(run, f"{label}, DDIM {args.compare_steps}", samples.clamp(-1, 1), reference, seconds)["classifier_fd"]
    best_decay = min(OURS["ema_decays"], key=lambda d: ema_scores[f"ours EMA {d}"])
    run.log(f"best EMA decay by DDIM-{args.compare_steps} FD: {best_decay}")
    for decay, ema in emas.items():
        metadata = {"ema_decay": decay, "steps": run.results["train/ours"]["steps"], "batch_size": OURS["batch_size"],
                    "train_seconds": train_seconds, "device_name": name, "dropout": args.dropout, "losses": run.results["train/ours"]["losses"],
                    "trained_by": "experiments/gpu_comparison.py (the DDPM notebook's train_ddpm)"}
        metadata["ema_warmup"] = True  # the notebook's EMA warms its decay up
        hf.save_weights(ema.module, run.output_dir / (f"ddpm_mnist_ema_{decay}".replace(".", "_") + ".pt"), WEIGHTS_CONFIG, metadata=metadata)
        if args.ship and decay == SETTINGS["EMA_DECAY"]:  # the maintainer's step: replace the shipped weights
            hf.save_weights(ema.module, hf.SHIPPED_WEIGHTS_PATH, WEIGHTS_CONFIG, metadata=metadata, replace_shipped=True)
            run.log(f"replaced the shipped data/{hf.SHIPPED_WEIGHTS_PATH.name} with the EMA {decay} weights")
    eps_model = sampling_network(emas[best_decay].module)
    head_model, head_schedule = (eps_model, schedule) if args.sample_steps >= schedule.T else hf.respaced(eps_model, schedule, args.sample_steps)
    head_schedule = head_schedule.to(device)
    ours_samples, seconds = timed_sampling(lambda: hf.ddpm_sample(head_model, head_schedule, shape, device=device,
                                                                  generator=torch.Generator(device).manual_seed(0), progress=False))
    ours_samples = ours_samples.clamp(-1, 1)
    head_fd = score(run, f"ours EMA {best_decay}, ancestral {args.sample_steps}", ours_samples, reference, seconds)["classifier_fd"]
    for steps in args.ddim_steps:
        samples, seconds = timed_sampling(lambda: hf.ddim_sample(eps_model, schedule, shape, steps, device=device,
                                                                 generator=torch.Generator(device).manual_seed(0), progress=False))
        score(run, f"ours EMA {best_decay}, DDIM {steps}", samples.clamp(-1, 1), reference, seconds)
    for steps in args.respaced_steps:
        short_model, short_schedule = hf.respaced(eps_model, schedule, steps)
        for variance in ("posterior", "beta"):
            samples, seconds = timed_sampling(lambda: hf.ddpm_sample(short_model, short_schedule.to(device), shape, device=device, variance=variance,
                                                                     generator=torch.Generator(device).manual_seed(0), progress=False))
            score(run, f"ours EMA {best_decay}, ancestral {steps} respaced, {variance}", samples.clamp(-1, 1), reference, seconds)

    # ---- the library: train, sample with its own sampler, score
    library_samples = None
    if not args.skip_library:
        library_model = train_library(run, x01, device, args.train_seconds, nb["random_batches"])
        library_model.eval()
        if args.sample_steps != library_model.num_timesteps:
            library_model.sampling_timesteps, library_model.is_ddim_sampling = args.sample_steps, args.sample_steps < library_model.num_timesteps
        with torch.inference_mode():
            library_samples, seconds = timed_sampling(lambda: library_model.sample(batch_size=args.n))
        score(run, f"library EMA {LIBRARY['ema_decay']}, its sampler {args.sample_steps}", library_samples, reference, seconds, value_range=(0, 1))
    panels = {f"ours (dim 32), {args.train_seconds:.0f} s": hf.to_unit_range(ours_samples, (-1, 1))}
    if library_samples is not None:
        panels[f"denoising-diffusion-pytorch (dim 64), {args.train_seconds:.0f} s"] = library_samples.float().cpu()
    sample_grid_figure(run.output_dir / "comparison_samples.png", panels)

    # ---- more draws of ours, if time allows: FD at n = 1,000 moves by ~2 between draws, so one draw decides little
    ddim_label, ancestral_label = f"DDIM {args.compare_steps}, eta 0", f"ancestral {args.sample_steps}"
    extra_samplers = {
        ddim_label: lambda g: hf.ddim_sample(eps_model, schedule, shape, args.compare_steps, device=device, generator=g,
                                             progress=False),
        f"DDIM {args.compare_steps}, eta 1": lambda g: hf.ddim_sample(eps_model, schedule, shape, args.compare_steps, eta=1.0,
                                                                      device=device, generator=g, progress=False),
        ancestral_label: lambda g: hf.ddpm_sample(head_model, head_schedule, shape, device=device, generator=g, progress=False),
    }
    # seed 0 of two of them is already scored: DDIM eta 0 in the EMA comparison, the ancestral sampler head to head
    draw_fds = {label: [] for label in extra_samplers}
    draw_fds[ddim_label].append(ema_scores[f"ours EMA {best_decay}"])
    draw_fds[ancestral_label].append(head_fd)
    for seed in args.extra_seeds:
        for label, sampler in extra_samplers.items():
            if run.time_left() < 40:
                break
            samples, seconds = timed_sampling(lambda: sampler(torch.Generator(device).manual_seed(seed)))
            draw_fds[label].append(score(run, f"ours EMA {best_decay}, {label}, seed {seed}", samples.clamp(-1, 1), reference, seconds)["classifier_fd"])
    summaries = {label: hf.summarise_draws(fds) for label, fds in draw_fds.items() if fds}
    run.record("draws/ours", {label: {"fds": draw_fds[label], **summary} for label, summary in summaries.items()})
    baseline = summaries[ancestral_label]
    for label, summary in summaries.items():
        line = f"ours over {summary['draws']} draws, {label}: FD {summary['mean']:.2f} ± {summary['sem']:.2f} (sd {summary['sd']:.2f})"
        if label != ancestral_label:
            ratio, error = hf.ratio_of_means(summary, baseline)
            line += f", {ratio:.2f} ± {error:.2f} times {ancestral_label}'s"
        run.log(line)

    scaling = []
    for size in (28, 32, 64):
        for batch in (16, 64, 256):
            if run.time_left() < 15:
                break
            row = measure("scaling", nb["Unet"](dim=32), True, device, batch, size, 0, 0, 5, bf16=train_bf16, cuda_graph=train_graph)
            scaling.append({"size": size, "batch": batch, "train_ms_per_image": 1000 / row["train_images_per_s"],
                            "inference_ms_per_image": 1000 / row["inference_images_per_s"]})
            run.log(f"scaling: size {size} batch {batch}: train {scaling[-1]['train_ms_per_image']:.4f} ms/img, "
                    f"sampling step {scaling[-1]['inference_ms_per_image']:.5f} ms/img")
            run.record("scaling", scaling)
    # ---- where a sampling step's GPU time goes: the kernels of three eager float32 network calls. Last, because the
    # profiler's CUDA tracing can stay attached after it stops and slow every later kernel launch (pytorch#144455)
    if on_gpu:
        with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as profile:
            x_probe, t_probe = torch.randn(shape, device=device), torch.full((args.n,), 500, device=device)
            for _ in range(3):
                probe_model(x_probe, t_probe)
            synchronize(device)
        for key in ("self_device_time_total", "self_cuda_time_total"):
            try:
                (run.output_dir / "profile.txt").write_text(profile.key_averages().table(sort_by=key, row_limit=25))
                break
            except Exception as error:  # the key's name differs between PyTorch versions
                run.log(f"profile table by {key}: {error!r}")
    run.log(f"done; results in {run.output_dir}")


if __name__ == "__main__":
    main()
