"""Where the classifier FD of guided samples comes from: its two parts, the distance between the feature means and
the difference of the covariances, beside the ink of the digits and the classifier's confidence, for each guidance
strength and for real held-out digits at the same n (experiments/RESULTS.md, "Where guidance's FD goes"). Not part
of the test run.

    python experiments/fd_parts.py --w 0 0.25 0.5 1 --per-digit 100 --output-dir runs/fd_parts

The samples are `guided.py evaluate`'s, from the same seed, batches and sampler (the notebook's `sample_digits`),
so the FD column equals its table's. The FD is ||mu_s - mu_r||^2 + Tr(S_s + S_r - 2 (S_s S_r)^(1/2)); "mean part"
is the first term, "covariance part" the second. "Ink" is the mean pixel value in [0, 1] over the image, relative to
the FD's real reference digits (1.00: as much ink as real digits). The real rows are the mean of 10 draws of
--per-digit held-out digits of each class, as `conditional_reference_scores` draws them.
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


def fd_parts(features: torch.Tensor, reference_features: torch.Tensor) -> dict[str, float]:
    """The classifier FD between two feature sets and its mean part ||mu_a - mu_b||^2 (the rest is the covariances')."""
    fd = hf.frechet_distance(features, reference_features)
    mean_part = (features.double().mean(0) - reference_features.double().mean(0)).pow(2).sum().item()
    return {"classifier_fd": fd, "mean_part": mean_part, "covariance_part": fd - mean_part}


@torch.inference_mode()
def describe(images: torch.Tensor, reference: hf.QualityReference) -> dict[str, float]:
    """fd_parts, the ink relative to the reference digits' and the classifier's mean confidence, for images in [0, 1]."""
    features = reference.features(images)
    confidence = reference.class_probabilities(features).max(1).values.mean().item()
    ink = images.mean().item() / reference.reference_images.float().mean().item()
    return fd_parts(features, reference.reference_features) | {"ink": ink, "confidence": confidence, "n": len(images)}


def real_rows(reference: hf.QualityReference, per_digit: int, seed: int, draws: int = 10) -> dict[str, float]:
    """describe() of real held-out digits, per_digit of each class, averaged over draws drawn as
    conditional_reference_scores draws them."""
    generator = torch.Generator().manual_seed(seed)
    per_draw = []
    for _ in range(draws):
        picked = []
        for c in reference.holdout_labels.unique():
            members = (reference.holdout_labels == c).nonzero().flatten()
            picked.append(members[torch.randperm(len(members), generator=generator)[:per_digit]])
        per_draw.append(describe(reference.holdout_images[torch.cat(picked)].float(), reference))
    return hf.mean_over_draws(per_draw)


def markdown_table(results: dict) -> str:
    rows = ["| samples | classifier FD | mean part | covariance part | ink | confidence |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    named = [(f"w = {float(w):g}", scores) for w, scores in results["guided"].items()]
    named.append((f"real held-out digits (mean of {results['real']['draws']} draws)", results["real"]))
    for name, s in named:
        rows.append(f"| {name} | {s['classifier_fd']:.2f} | {s['mean_part']:.2f} | {s['covariance_part']:.2f} | "
                    f"{s['ink']:.2f} | {s['confidence']:.3f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=hf.SHIPPED_GUIDED_WEIGHTS_PATH)
    parser.add_argument("--w", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    parser.add_argument("--per-digit", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50, help="images per sampling call (guided.py evaluate's)")
    parser.add_argument("--steps", type=int, default=SETTINGS["SAMPLING_STEPS"])
    parser.add_argument("--label-t-min", type=int, default=SETTINGS["LABEL_T_MIN"])
    parser.add_argument("--output-dir", type=Path, default=guided.ROOT / "runs" / "fd_parts")
    args = parser.parse_args(argv)
    if args.per_digit < 2:
        parser.error(f"--per-digit must be at least 2 (a covariance needs two samples), got {args.per_digit}")
    nb = guided.notebook_classes(guided.NOTEBOOK)
    device = hf.choose_device(verbose=False)
    seed, classes = SETTINGS["SEED"], SETTINGS["NUM_CLASSES"]
    schedule, network, reference = guided.evaluation_setup(args.weights, device)
    results = {"machine": guided.machine(), "weights": str(args.weights), "per_digit": args.per_digit,
               "date": time.strftime("%Y-%m-%d"), "real": real_rows(reference, args.per_digit, seed), "guided": {}}
    asked = torch.arange(classes).repeat_interleave(args.per_digit)
    for w in args.w:
        samples = nb["sample_digits"](network, asked, w, schedule, args.steps, SETTINGS["SAMPLING_ETA"], args.batch,
                                      torch.Generator(device).manual_seed(seed), device, classes, args.label_t_min)
        results["guided"][str(w)] = describe(hf.to_unit_range(samples, (-1.0, 1.0)), reference)
        print(f"w = {w:g}: {results['guided'][str(w)]}", flush=True)
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "fd_parts.json").write_text(json.dumps(results, indent=1))
    print(markdown_table(results))
    return results


if __name__ == "__main__":
    main()
