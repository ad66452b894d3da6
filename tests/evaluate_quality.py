"""Score the shipped DDPM weights with the project's sample-quality measure (not part of the default test run).

    python tests/evaluate_quality.py --n 1000 --samplers ddim:50 ddim:20
    python tests/evaluate_quality.py --n 1000 --samplers ancestral:1000 ddim:250 ddim:100 ddim:50 ddim:20   # GPU
    python tests/evaluate_quality.py --n 1000 --chunk 1000 --samplers ancestral:1000 ancestral_beta:1000 --compile  # GPU
    python tests/evaluate_quality.py --n 1000 --bf16 --samplers ddim:20 ddim_trailing:20 ddim_quadratic:20 ddim:50:0.5 ddim:50:1
    python tests/evaluate_quality.py --n 1000 --chunk 1000 --draws 10 --samplers ancestral:1000 ddim:50   # GPU, ~5 min
    python tests/evaluate_quality.py --n 1000 --seed 1000 --draws 4 --cpu-noise --samplers ddim:50   # the CPU draws' x_T, on a GPU
    python tests/evaluate_quality.py --n 1000 --seed 1000 --draws 4 --cpu-noise --strict-float32 --samplers ddim:50   # ... without TF32
    python tests/evaluate_quality.py --n 1000 --seed 1000 --draws 4 --emulate-tf32 --samplers ddim:50   # a GPU's arithmetic, on the CPU

Samplers, KIND:STEPS or ddim...:STEPS:ETA: ancestral (DDPM, sigma^2 = beta_tilde; respaced when STEPS < 1000),
ancestral_beta (sigma^2 = beta), ddim (evenly spaced timesteps, eta = 0 unless given), ddim_trailing (every
T/STEPS-th timestep ending at T-1, the last call at T/STEPS - 1), ddim_quadratic (t_i = (T-1) (i/(STEPS-1))^2, more steps
near t = 0, as Song et al. used for CIFAR-10). Every chunk starts from the same x_T whatever the sampler.
--clip clips the predicted x0 to [-1, 1] at every step.
--draws K scores K independent draws of --n samples per sampler (draw k from seed + 1000 k) and prints each
sampler's mean FD with its spread, and the ratio of each mean to the first sampler's: at n = 1,000 a single draw's
FD moves by about 2, so one draw cannot tell two good samplers apart.
--cpu-noise draws the noise on the CPU, to score a GPU's samples from a CPU run's starting noise (DDIM with eta = 0 is
then the same computation on both, up to the GPU's TF32 arithmetic).
--emulate-tf32 rounds the operands of the network's convolutions and matrix products to TF32, as a GPU does by
default (tests/tf32_emulation.py): on a CPU, with --seed and --chunk as a CPU run's, the same x_T in a GPU's arithmetic.
--eps-scale S multiplies the network's eps prediction by S at every call of every sampler (S < 1 is the "epsilon
scaling" of Ning et al. 2024, eps / lambda with lambda > 1, against exposure bias; S slightly > 1 is the direction in
which bfloat16 autocast moves the norm of eps here, by about 0.1%).
--bf16-weights rounds every weight to bfloat16 (8 significant bits) once and computes in float32: the part of
bfloat16 autocast that is a fixed change of the network rather than rounding at every operation.
--perturb-weights S is a control for --bf16-weights: every weight moved by a random amount of the same size as
bfloat16's rounding (uniform within half a bfloat16 step either side), from generator seed S, in float32.
--bf16-activations is the other part: float32 weights, but the activations that autocast multiplies in bfloat16
(inputs of convolutions and linear layers, factors of matrix products, attention's q, k, v) rounded to bfloat16.
--strict-float32 turns TF32 off on a GPU (cuDNN convolutions and matrix products in full float32).
--compile runs the network through torch.compile(mode="reduce-overhead") (CUDA graphs on a GPU); its first
sampler's time includes the compilation.

Prints one line per sampler next to the real-digit floor and the noise ceiling at the same n, and writes JSON
(the settings and every draw); tests/pool_draws.py pools the draws of several such files, e.g. of a GPU run split
into calls that each fit a time limit.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import helper_functions as hf  # noqa: E402
from notebook_code import notebook_classes  # noqa: E402
from tf32_emulation import bfloat16_activations_model, tf32_model  # noqa: E402

SAMPLER_KINDS = ("ancestral", "ancestral_beta", "ddim", "ddim_trailing", "ddim_quadratic")
DRAW_SEED_STRIDE = 1000  # draw k starts from seed + 1000 k; its chunk i from that + i (no two chunks share a seed)
CONFIG = {"dim": 32, "dim_mults": [1, 2, 4], "T": 1000, "beta_start": 1e-4, "beta_end": 0.02, "image_size": 28}


def ddim_timesteps(kind: str, steps: int, timesteps: int) -> list[int]:
    """The ascending timesteps tau each DDIM variant visits."""
    if kind == "ddim":
        return hf.spaced_timesteps(timesteps, steps).tolist()
    if kind == "ddim_trailing":
        stride = timesteps / steps
        return [round(stride * (i + 1)) - 1 for i in range(steps)]
    if kind == "ddim_quadratic":
        return [round((timesteps - 1) * (i / max(steps - 1, 1)) ** 2) for i in range(steps)]
    raise ValueError(kind)


def sample(model, schedule, kind: str, steps: int, eta: float, n: int, device: torch.device, seed: int,
           clip: bool, noise_device: torch.device) -> torch.Tensor:
    """n samples in [-1, 1] from the named sampler (see the module docstring), its noise drawn on noise_device."""
    generator = torch.Generator(noise_device).manual_seed(seed)
    shape = (n, 1, 28, 28)
    if kind.startswith("ddim"):
        return hf.ddim_sample(model, schedule, shape, ddim_timesteps(kind, steps, schedule.timesteps), eta=eta,
                              device=device, generator=generator, clip_denoised=clip, progress=False)
    if kind in ("ancestral", "ancestral_beta"):
        short_model, short_schedule = hf.respaced(model, schedule, steps) if steps < schedule.timesteps else (model, schedule)
        variance = "beta" if kind == "ancestral_beta" else "posterior"
        return hf.ddpm_sample(short_model, short_schedule.to(device), shape, device=device, generator=generator,
                              variance=variance, clip_denoised=clip, progress=False)
    raise ValueError(f"unknown sampler {kind!r}: see --help")


def arithmetic_label(device: torch.device, bf16: bool, emulate_tf32: bool, bf16_weights: bool = False,
                     bf16_activations: bool = False, perturb_seed: int | None = None) -> str:
    """The network's arithmetic in words, for the printout and the JSON (a GPU's float32 is partly TF32 by default)."""
    if bf16:
        return "bfloat16 autocast"
    if bf16_weights:
        return "float32, weights rounded to bfloat16"
    if bf16_activations:
        return "float32, activations rounded to bfloat16"
    if perturb_seed is not None:
        return f"float32, weights perturbed by bfloat16-sized random errors (seed {perturb_seed})"
    if emulate_tf32:
        return "float32, TF32 operands (emulated)"
    in_tf32 = [name for name, allowed in (("convolutions", torch.backends.cudnn.allow_tf32),
                                          ("matrix products", torch.backends.cuda.matmul.allow_tf32)) if allowed]
    return f"float32, TF32 {' and '.join(in_tf32)}" if device.type == "cuda" and in_tf32 else "float32"


def bfloat16_weights(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model whose weights are rounded to bfloat16 (nearest) and stored again as float32."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in rounded.parameters():
            parameter.copy_(parameter.bfloat16().float())
    return rounded


def perturbed_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of the model with each weight w moved to w + (u - 1/2) * step(w), u uniform in [0, 1) from `seed`, where
    step(w) is bfloat16's spacing at w (2^(floor(log2 |w|) - 7)): errors the size of bfloat16 rounding, but random."""
    perturbed = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in perturbed.parameters():
            step = torch.exp2(torch.floor(torch.log2(parameter.abs().clamp(min=torch.finfo(torch.float32).tiny))) - 7)
            u = torch.rand(parameter.shape, generator=generator).to(parameter.device)
            parameter.add_((u - 0.5) * step)
    return perturbed


def scaled_eps_model(model, scale: float):
    """model(x, t) * scale: every sampler then steps with a slightly longer (scale > 1) or shorter eps."""
    def scaled(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x, t) * scale

    return scaled


def summary_lines(summaries: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """One line per sampler: mean FD over the draws with its standard error and sd, copies, seconds per draw, and
    (after the first) the ratio of its mean FD to the first sampler's. summaries: spec -> figure -> summarise_draws."""
    first = next(iter(summaries))
    lines = []
    for spec, summary in summaries.items():
        fd, copies = summary["classifier_fd"], summary["copy_fraction"]
        line = (f"  {spec:<20s} FD {fd['mean']:6.2f} ± {fd['sem']:.2f} (sd {fd['sd']:.2f})   copies {copies['mean']:.3f} ± {copies['sem']:.3f}"
                f"   {summary['seconds']['mean']:7.1f} s per draw")
        if spec != first:
            ratio, error = hf.ratio_of_means(fd, summaries[first]["classifier_fd"])
            line += f"   FD {ratio:.2f} ± {error:.2f} times {first}'s"
        lines.append(line)
    return lines


def parse_sampler(spec: str) -> tuple[str, str, int, float]:
    """KIND:STEPS or ddim...:STEPS:ETA -> (spec, kind, steps, eta); ValueError saying what is wrong otherwise."""
    kind, *numbers = spec.split(":")
    try:
        steps, eta = int(numbers[0]), float(numbers[1]) if len(numbers) == 2 else 0.0
    except (IndexError, ValueError):
        steps, eta = 0, 0.0
    if kind not in SAMPLER_KINDS or len(numbers) > 2 or (len(numbers) == 2 and not kind.startswith("ddim")) \
            or not 1 <= steps <= CONFIG["T"] or eta < 0:
        raise ValueError(f"bad sampler {spec!r}: KIND:STEPS, or ddim...:STEPS:ETA, with KIND one of {', '.join(SAMPLER_KINDS)}, "
                         f"1 <= STEPS <= {CONFIG['T']} and ETA >= 0")
    return spec, kind, steps, eta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="samples per sampler (and real digits for the floor)")
    parser.add_argument("--samplers", nargs="+", default=["ddim:50"], help="KIND:STEPS or ddim...:STEPS:ETA (see above)")
    parser.add_argument("--weights", default=str(hf.DATA_DIR / "ddpm_mnist_ema.pt"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=200, help="images per sampling batch (CPU caches favour ~200)")
    parser.add_argument("--draws", type=int, default=1, help="independent draws of --n samples per sampler")
    parser.add_argument("--bf16", action="store_true", help="run the network under bfloat16 autocast")
    parser.add_argument("--emulate-tf32", action="store_true",
                        help="round the network's convolution and matrix-product operands to TF32 (a GPU's default arithmetic)")
    parser.add_argument("--eps-scale", type=float, default=1.0, help="multiply the eps prediction by this at every call")
    parser.add_argument("--bf16-weights", action="store_true", help="round the weights to bfloat16, compute in float32")
    parser.add_argument("--perturb-weights", type=int, default=None, metavar="SEED",
                        help="move each weight by a random error of bfloat16's rounding size (a control for --bf16-weights)")
    parser.add_argument("--bf16-activations", action="store_true",
                        help="round the activations autocast would multiply in bfloat16, weights in float32")
    parser.add_argument("--strict-float32", action="store_true", help="no TF32 on a GPU: convolutions and matrix products in full float32")
    parser.add_argument("--compile", action="store_true", help='torch.compile(mode="reduce-overhead") the network')
    parser.add_argument("--clip", action="store_true", help="clip the predicted x0 to [-1, 1] at every step")
    parser.add_argument("--cpu-noise", action="store_true",
                        help="draw all noise on the CPU: a GPU run then starts from the very x_T of a CPU run with the same --seed and --chunk")
    parser.add_argument("--output", default="quality.json")
    args = parser.parse_args()
    if args.draws < 1 or args.n < 2 or args.chunk < 1:
        parser.error(f"--draws and --chunk must be at least 1 and --n at least 2, got {args.draws}, {args.chunk}, {args.n}")
    if -(-args.n // args.chunk) > DRAW_SEED_STRIDE:
        parser.error(f"at most {DRAW_SEED_STRIDE} chunks per draw (their seeds would reach the next draw's): raise --chunk")
    if not 0.5 <= args.eps_scale <= 2:
        parser.error(f"--eps-scale must lie in 0.5 ... 2 (it is a small correction, about 1 +- 0.01), got {args.eps_scale}")
    if args.bf16 + args.emulate_tf32 + args.strict_float32 + args.bf16_weights + args.bf16_activations + (args.perturb_weights is not None) > 1:
        parser.error("--bf16, --bf16-weights, --perturb-weights, --bf16-activations, --emulate-tf32 and --strict-float32 are different arithmetics: choose one")
    try:
        samplers = [parse_sampler(spec) for spec in args.samplers]
    except ValueError as error:
        parser.error(str(error))
    device = torch.device(args.device)
    if args.strict_float32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    noise_device = torch.device("cpu") if args.cpu_noise else device

    model = notebook_classes("DDPM.ipynb")["Unet"](dim=CONFIG["dim"], dim_mults=tuple(CONFIG["dim_mults"]))
    model = hf.load_weights(model, args.weights, CONFIG).to(device).eval()
    if args.bf16_weights:
        model = bfloat16_weights(model)
    if args.perturb_weights is not None:
        model = perturbed_weights(model, args.perturb_weights)
    if args.compile:
        model = torch.compile(model, mode="reduce-overhead")
    if args.bf16:
        model = hf.autocast_model(model, device.type)
    if args.emulate_tf32:
        model = tf32_model(model)
    if args.bf16_activations:
        model = bfloat16_activations_model(model)
    if args.eps_scale != 1:
        model = scaled_eps_model(model, args.eps_scale)
    arithmetic = arithmetic_label(device, args.bf16, args.emulate_tf32, args.bf16_weights, args.bf16_activations,
                                  args.perturb_weights)
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(CONFIG["T"])).to(device)
    images, labels = hf.load_mnist_subset()
    reference = hf.QualityReference(hf.load_classifier(), images, labels)
    results = hf.reference_scores(reference, args.n, seed=args.seed)
    print(f"{device} | weights {Path(args.weights).name} | n = {args.n} | {arithmetic} | compile {args.compile} | clip {args.clip}"
          f"{f' | eps x {args.eps_scale}' if args.eps_scale != 1 else ''}"
          f" | noise drawn on {noise_device}", flush=True)
    print(hf.format_quality("real digits (floor)", results["real"]))
    summaries = {}
    for spec, kind, steps, eta in samplers:
        draws = []
        for draw in range(args.draws):
            draw_seed = args.seed + DRAW_SEED_STRIDE * draw
            start = time.perf_counter()
            chunk_seeds = itertools.count(draw_seed)  # chunk i starts from draw_seed + i, whatever the sampler
            samples = hf.sample_in_batches(lambda size: sample(model, schedule, kind, steps, eta, size, device, next(chunk_seeds), args.clip,
                                                               noise_device),
                                           args.n, args.chunk).clamp(-1, 1)
            seconds = time.perf_counter() - start  # sample_in_batches' .cpu() waited for the GPU
            draws.append({**hf.sample_quality(samples, reference), "seconds": seconds, "seed": draw_seed})
            label = f"{spec}{' clip' if args.clip else ''}{f', seed {draw_seed}' if args.draws > 1 else ''}"
            print(hf.format_quality(label, draws[-1]) + f"   {seconds:7.1f} s", flush=True)
        summaries[spec] = {key: hf.summarise_draws([d[key] for d in draws]) for key in ("classifier_fd", "copy_fraction", "seconds")}
        results[spec] = draws[0] if args.draws == 1 else {"draws": draws, "summary": summaries[spec]}
    print(hf.format_quality("uniform noise (ceiling)", results["noise"]))
    if args.draws > 1:
        print(f"over {args.draws} draws (mean ± standard error; sd between draws):")
        print("\n".join(summary_lines(summaries)))
    settings = {"device": str(device), "arithmetic": arithmetic, "n": args.n, "draws": args.draws, "weights": Path(args.weights).name,
                "chunk": args.chunk, "noise_device": str(noise_device), "clip": args.clip, "compile": args.compile,
                "eps_scale": args.eps_scale}
    Path(args.output).write_text(json.dumps({**settings, "results": results}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
