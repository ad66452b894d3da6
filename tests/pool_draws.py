"""Pool the draws of several tests/evaluate_quality.py runs (not part of the default test run).

    python tests/pool_draws.py draws.json draws2.json --baseline ancestral:1000

A GPU's time comes in calls of limited length, so twenty draws may arrive as two runs of ten (each run's --seed set
so that no seed repeats). This prints what one run of all the draws would have: each sampler's mean FD with its
standard error and sd, its near-copies, its seconds per draw, and the ratio of each mean to the baseline's (the first
sampler in the files, or --baseline). Where another sampler started from the same seeds as the baseline (the same
x_T), it also prints their paired difference and a bootstrap 95% interval for the ratio of the means that resamples seeds, each pair kept together.

The files must agree on n, the weights, the arithmetic, clipping and --eps-scale (otherwise they measure different things); a
seed that appears twice for one sampler would count one draw twice and is refused.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import helper_functions as hf  # noqa: E402
from evaluate_quality import summary_lines  # noqa: E402

MUST_AGREE = ("n", "weights", "arithmetic", "clip", "eps_scale")  # settings that change what a draw measures
REFERENCE_ROWS = ("real", "noise")


def draw_key(draw: dict, settings: dict) -> tuple:
    """What fixes a draw's starting noise: its seed, and (where the file records them) the chunk size and noise device."""
    return draw["seed"], settings.get("chunk"), settings.get("noise_device")


def same_start(key: tuple, other: tuple) -> bool:
    """Whether two draw keys may be the same x_T: equal seeds, and chunk and noise device equal or unrecorded."""
    return key[0] == other[0] and all(a is None or b is None or a == b for a, b in zip(key[1:], other[1:]))


def load_runs(paths: list[Path]) -> tuple[dict, list[dict], dict[str, list[tuple[tuple, dict]]]]:
    """Read evaluate_quality JSON files -> (the settings they share, each file's real-digit floor, and for each
    sampler in first-seen order its draws as (key, draw)). ValueError naming the file when they cannot be pooled."""
    if not paths:
        raise ValueError("name at least one evaluate_quality.py JSON file")
    shared: dict = {}
    floors: list[dict] = []
    draws: dict[str, list[tuple[tuple, dict]]] = {}
    for path in paths:
        run = json.loads(Path(path).read_text())
        if "results" not in run or "n" not in run:
            raise ValueError(f"{path} is not an evaluate_quality.py output (no 'results' or 'n')")
        for name in MUST_AGREE:
            if name not in run:
                continue  # older files lack some settings; what they do record must still agree
            if name in shared and shared[name] != run[name]:
                raise ValueError(f"{path} has {name} = {run[name]!r}, an earlier file {shared[name]!r}: "
                                 "draws made differently cannot be pooled")
            shared[name] = run[name]
        floors.append(run["results"]["real"])
        for spec, entry in run["results"].items():
            if spec in REFERENCE_ROWS:
                continue
            for draw in entry["draws"] if "draws" in entry else [entry]:
                if "seed" not in draw:
                    raise ValueError(f"{path}: a draw of {spec} records no seed, so repeats cannot be ruled out")
                key = draw_key(draw, run)
                if any(same_start(key, seen) for seen, _ in draws.get(spec, [])):
                    raise ValueError(f"{path}: {spec} seed {draw['seed']} appears twice among the files "
                                     "(the same starting noise would count as two draws)")
                draws.setdefault(spec, []).append((key, draw))
    return shared, floors, draws


def paired_ratio_interval(numerator: list[float], denominator: list[float], resamples: int = 10_000,
                          seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% interval of mean(numerator) / mean(denominator), resampling the pairs (numerator[i], denominator[i])."""
    if len(numerator) != len(denominator) or len(numerator) < 2:
        raise ValueError(f"need two or more pairs, got {len(numerator)} and {len(denominator)} values")
    a = torch.tensor(numerator, dtype=torch.float64)
    b = torch.tensor(denominator, dtype=torch.float64)
    picks = torch.randint(len(a), (resamples, len(a)), generator=torch.Generator().manual_seed(seed))
    ratios = a[picks].mean(dim=1) / b[picks].mean(dim=1)
    low, high = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return low, high


def paired_lines(draws: dict[str, list[tuple[tuple, dict]]], resamples: int) -> list[str]:
    """For each sampler drawn from exactly the first sampler's seeds: paired FD difference and the ratio's interval."""
    first, *others = draws
    first_by_key = {key: draw["classifier_fd"] for key, draw in draws[first]}
    lines = []
    for spec in others:
        by_key = {key: draw["classifier_fd"] for key, draw in draws[spec]}
        if by_key.keys() != first_by_key.keys() or len(by_key) < 2:
            continue
        keys = sorted(by_key, key=str)
        ours, theirs = [by_key[k] for k in keys], [first_by_key[k] for k in keys]
        difference = hf.summarise_draws([a - b for a, b in zip(ours, theirs)])
        low, high = paired_ratio_interval(ours, theirs, resamples)
        t = difference["mean"] / difference["sem"] if difference["sem"] > 0 else math.inf
        lines.append(f"  {spec} against {first}, paired over {len(keys)} seeds: FD difference {difference['mean']:+.2f} ± "
                     f"{difference['sem']:.2f} (t = {t:.1f}); ratio of means, bootstrap 95%: {low:.2f} to {high:.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="evaluate_quality.py --output files")
    parser.add_argument("--baseline", help="the sampler the others are compared with (default: the first in the files)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples for the paired ratio's interval")
    args = parser.parse_args()
    if args.resamples < 100:
        parser.error(f"--resamples must be at least 100 for a 95% interval, got {args.resamples}")
    try:
        shared, floors, draws = load_runs(args.files)
    except (ValueError, OSError, json.JSONDecodeError) as error:
        parser.error(str(error))
    if not draws:
        parser.error("the files hold no sampler's draws")
    if args.baseline is not None:
        if args.baseline not in draws:
            parser.error(f"--baseline {args.baseline} is not among the files' samplers: {', '.join(draws)}")
        draws = {args.baseline: draws[args.baseline], **{spec: items for spec, items in draws.items() if spec != args.baseline}}
    print(" | ".join(f"{name} {value}" for name, value in shared.items()))
    for path, floor in zip(args.files, floors):
        print(hf.format_quality(f"real digits (floor), {path.name}", floor))
    counts = {spec: len(items) for spec, items in draws.items()}
    summaries = {spec: {figure: hf.summarise_draws([draw[figure] for _, draw in items])
                        for figure in ("classifier_fd", "copy_fraction", "seconds")}
                 for spec, items in draws.items()}
    print(f"pooled over {len(args.files)} files ({', '.join(f'{spec}: {count} draws' for spec, count in counts.items())}; "
          "mean ± standard error; sd between draws):")
    print("\n".join(summary_lines(summaries)))
    print("\n".join(paired_lines(draws, args.resamples)))


if __name__ == "__main__":
    main()
