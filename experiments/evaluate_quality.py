"""Score the shipped DDPM weights over several independent draws with the project's sample-quality measure.

    python experiments/evaluate_quality.py --n 1000 --samplers ddim:50 ddim:50:1 ancestral:50           # CPU, ~25 min
    python experiments/evaluate_quality.py --n 1000 --chunk 1000 --draws 9 --samplers ancestral:1000 ddim:50 ddim:50:1  # GPU

Samplers, KIND:STEPS or ddim:STEPS:ETA: ancestral (Algorithm 2, sigma^2 = beta_tilde; on respaced timesteps when
STEPS < T), ancestral_beta (sigma^2 = beta), ddim (evenly spaced timesteps, eta = 0 unless given). Every sampler
starts from the same x_T: draw k from seed + 1000 k, its chunk i from that + i.
--draws K scores K independent draws of --n samples per sampler and prints each sampler's mean FD with its spread,
and the ratio of each mean to the first sampler's: at n = 1,000 one draw's FD moves by about 2, so one draw cannot
tell two good samplers apart. Writes JSON with the settings and every draw (experiments/RESULTS.md reads it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # notebook_code
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import helper_functions as hf  # noqa: E402
from draws import ratio_of_means, summarise_draws  # noqa: E402
from notebook_code import notebook_classes, notebook_weights_config  # noqa: E402

SAMPLER_KINDS = ("ancestral", "ancestral_beta", "ddim")
DRAW_SEED_STRIDE = 1000  # draw k starts from seed + 1000 k; its chunk i from that + i (no two chunks share a seed)
CONFIG = notebook_weights_config("DDPM.ipynb")  # what the shipped weights must have been trained with


def sample(model, schedule, kind: str, steps: int, eta: float, n: int, device: torch.device, seed: int) -> torch.Tensor:
    """n samples in [-1, 1] from the named sampler (see the module docstring)."""
    generator = torch.Generator(device).manual_seed(seed)
    shape = (n, 1, CONFIG["image_size"], CONFIG["image_size"])
    if kind == "ddim":
        return hf.ddim_sample(model, schedule, shape, steps, eta=eta, device=device, generator=generator, progress=False)
    short_model, short_schedule = hf.respaced(model, schedule, steps) if steps < schedule.T else (model, schedule)
    variance = "beta" if kind == "ancestral_beta" else "posterior"
    return hf.ddpm_sample(short_model, short_schedule.to(device), shape, device=device, generator=generator,
                          variance=variance, progress=False)


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
            ratio, error = ratio_of_means(fd, summaries[first]["classifier_fd"])
            line += f"   FD {ratio:.2f} ± {error:.2f} times {first}'s"
        lines.append(line)
    return lines


def parse_sampler(spec: str) -> tuple[str, str, int, float]:
    """KIND:STEPS or ddim:STEPS:ETA -> (spec, kind, steps, eta); ValueError saying what is wrong otherwise."""
    kind, *numbers = spec.split(":")
    try:
        steps, eta = int(numbers[0]), float(numbers[1]) if len(numbers) == 2 else 0.0
    except (IndexError, ValueError):
        steps, eta = 0, 0.0
    if kind not in SAMPLER_KINDS or len(numbers) > 2 or (len(numbers) == 2 and kind != "ddim") \
            or not 1 <= steps <= CONFIG["T"] or eta < 0:
        raise ValueError(f"bad sampler {spec!r}: KIND:STEPS, or ddim:STEPS:ETA, with KIND one of {', '.join(SAMPLER_KINDS)}, "
                         f"1 <= STEPS <= {CONFIG['T']} and ETA >= 0")
    return spec, kind, steps, eta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="samples per sampler (and real digits for the floor)")
    parser.add_argument("--samplers", nargs="+", default=["ddim:50"], help="KIND:STEPS or ddim:STEPS:ETA (see above)")
    parser.add_argument("--weights", default=str(hf.SHIPPED_WEIGHTS_PATH))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=50, help="images per sampling batch (a CPU favours ~50, a GPU 1,000)")
    parser.add_argument("--draws", type=int, default=1, help="independent draws of --n samples per sampler")
    parser.add_argument("--bf16", action="store_true", help="run the network under bfloat16 autocast")
    parser.add_argument("--output", default="quality.json")
    args = parser.parse_args(argv)
    if args.draws < 1 or args.n < 2 or args.chunk < 1:
        parser.error(f"--draws and --chunk must be at least 1 and --n at least 2, got {args.draws}, {args.chunk}, {args.n}")
    if -(-args.n // args.chunk) > DRAW_SEED_STRIDE:
        parser.error(f"at most {DRAW_SEED_STRIDE} chunks per draw (their seeds would reach the next draw's): raise --chunk")
    try:
        samplers = [parse_sampler(spec) for spec in args.samplers]
    except ValueError as error:
        parser.error(str(error))
    device = torch.device(args.device)
    model = notebook_classes("DDPM.ipynb")["Unet"](dim=CONFIG["dim"], dim_mults=tuple(CONFIG["dim_mults"]))
    model = hf.load_weights(model, args.weights, CONFIG).to(device).eval()
    if args.bf16:
        model = hf.autocast_model(model, device.type)
    arithmetic = "bfloat16 autocast" if args.bf16 else "float32"
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(CONFIG["T"], CONFIG["beta_start"], CONFIG["beta_end"])).to(device)
    images, labels = hf.load_mnist_subset()
    reference = hf.QualityReference(hf.load_classifier(), images, labels)
    results = hf.reference_scores(reference, args.n, seed=args.seed)
    print(f"{device} | weights {Path(args.weights).name} | n = {args.n} | {arithmetic}", flush=True)
    print(hf.format_quality("real digits (floor)", results["real"]))
    summaries = {}
    for spec, kind, steps, eta in samplers:
        draws = []
        for draw in range(args.draws):
            draw_seed = args.seed + DRAW_SEED_STRIDE * draw
            start = time.perf_counter()
            chunk_seeds = itertools.count(draw_seed)  # chunk i starts from draw_seed + i, whatever the sampler
            samples = hf.sample_in_batches(lambda size: sample(model, schedule, kind, steps, eta, size, device, next(chunk_seeds)),
                                           args.n, args.chunk).clamp(-1, 1)
            seconds = time.perf_counter() - start  # sample_in_batches' .cpu() waited for the GPU
            draws.append({**hf.sample_quality(samples, reference), "seconds": seconds, "seed": draw_seed})
            label = f"{spec}{f', seed {draw_seed}' if args.draws > 1 else ''}"
            print(hf.format_quality(label, draws[-1]) + f"   {seconds:7.1f} s", flush=True)
        summaries[spec] = {key: summarise_draws([d[key] for d in draws]) for key in ("classifier_fd", "copy_fraction", "seconds")}
        results[spec] = draws[0] if args.draws == 1 else {"draws": draws, "summary": summaries[spec]}
    print(hf.format_quality("uniform noise (ceiling)", results["noise"]))
    if args.draws > 1:
        print(f"over {args.draws} draws (mean ± standard error; sd between draws):")
        print("\n".join(summary_lines(summaries)))
    settings = {"device": str(device), "arithmetic": arithmetic, "n": args.n, "draws": args.draws,
                "weights": Path(args.weights).name, "chunk": args.chunk}
    Path(args.output).write_text(json.dumps({**settings, "results": results}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
