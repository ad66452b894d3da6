"""Where the classifier FD of guided samples comes from: its two parts, the distance between the feature means and
the difference of the covariances, beside the ink of the digits and the classifier's confidence, for each guidance
strength and for real held-out digits at the same n (experiments/RESULTS.md, "Where guidance's FD goes"). Not part
of the test run.

    python experiments/fd_parts.py --w 0 0.25 0.5 1 --per-digit 100 --output-dir runs/fd_parts
    python experiments/fd_parts.py --w 0 0.25 0.5 --per-digit 100 --read-as-asked 1.4 --output-dir runs/fd_read_as_asked

The samples are `guided.py evaluate`'s, from the same seed, batches and sampler (the notebook's `sample_digits`),
so the FD column equals its table's. The FD is ||mu_s - mu_r||^2 + Tr(S_s + S_r - 2 (S_s S_r)^(1/2)); "mean part"
is the first term, "covariance part" the second. "Ink" is the mean pixel value in [0, 1] over the image, relative to
the FD's real reference digits (1.00: as much ink as real digits). The real rows are the mean of 10 draws of
--per-digit held-out digits of each class, as `conditional_reference_scores` draws them.

--read-as-asked F asks how much of the FD the wrong digits make: it draws F times --per-digit samples of each digit
(so the noise differs from `evaluate`'s) and scores two subsets of them, the first --per-digit of each digit, and
the first --per-digit of each digit that the classifier reads as the one asked for. Beside them, real held-out digits
of every kind and those the classifier reads as their label. A diagnostic, not a sampler: the measuring classifier
picks the samples.

--label-free N asks the same of DDPM's own network: it draws N samples with no label (the notebook's label-free
half, which is DDPM.ipynb's network), and scores the first --per-digit of each digit as the classifier reads them.
This is what a conditional model would score if it drew DDPM's digits and always the one asked for; again the
measuring classifier does the picking.

    python experiments/fd_parts.py --w --per-digit 100 --label-free 2500 --output-dir runs/fd_label_free
"""

from __future__ import annotations

import argparse
import math
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


def first_of_each(asked: torch.Tensor, per_digit: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the first per_digit samples asked for each digit, in the order drawn, among those where `keep` is
    True (every sample by default). ValueError if a digit has fewer than per_digit of them."""
    keep = torch.ones_like(asked, dtype=torch.bool) if keep is None else keep
    if keep.shape != asked.shape or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a boolean mask of shape {tuple(asked.shape)}, got {keep.dtype} of shape {tuple(keep.shape)}")
    picked = []
    for c in asked.unique():
        members = ((asked == c) & keep).nonzero().flatten()
        if len(members) < per_digit:
            raise ValueError(f"digit {c.item()}: only {len(members)} of the samples qualify, {per_digit} asked for; "
                             "draw more of each digit")
        picked.append(members[:per_digit])
    return torch.cat(picked)


def real_rows(reference: hf.QualityReference, per_digit: int, seed: int, draws: int = 10,
              pool: torch.Tensor | None = None) -> dict[str, float]:
    """describe() of real held-out digits, per_digit of each class, averaged over draws drawn as
    conditional_reference_scores draws them; pool: a boolean mask over the held-out digits to draw from only those."""
    per_draw = [describe(reference.holdout_images[picked].float(), reference)
                for picked in hf.held_out_draws(reference, per_digit, seed, draws, pool)]
    return hf.mean_over_draws(per_draw)


def score_label_free_by_reading(sample_digits, network, schedule, reference, args, device, seed, classes) -> dict:
    """describe() of the first args.per_digit of each digit, as the classifier reads them, among args.label_free
    samples drawn with no label (label `classes`, the notebook's null label). ValueError if a digit is read fewer
    than args.per_digit times."""
    no_label = torch.full((args.label_free,), classes)
    samples = sample_digits(network, no_label, 0.0, schedule, args.steps, SETTINGS["SAMPLING_ETA"], args.batch,
                            torch.Generator(device).manual_seed(seed), device, classes, args.label_t_min)
    images = hf.to_unit_range(samples, (-1.0, 1.0))
    read = reference.class_probabilities(reference.features(images)).argmax(1).cpu()
    counts = torch.bincount(read, minlength=classes)
    if counts.min() < args.per_digit:
        raise ValueError(f"digit {counts.argmin().item()} is read only {counts.min().item()} times in "
                         f"{args.label_free} label-free samples, {args.per_digit} needed; draw more")
    return describe(images[first_of_each(read, args.per_digit)], reference) | {
        "drawn": args.label_free, "share_of_each_digit": (counts / args.label_free).tolist()}


def markdown_table(results: dict) -> str:
    rows = ["| samples | classifier FD | mean part | covariance part | ink | confidence |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    named = []
    for w, scores in results["guided"].items():
        named.append((f"w = {float(w):g}", scores))
        if w in results.get("read_as_asked", {}):
            read = results["read_as_asked"][w]
            named.append((f"w = {float(w):g}, read as asked ({read['share_read_as_asked']:.1%} of {read['drawn']})", read))
    if "label_free_by_reading" in results:
        free = results["label_free_by_reading"]
        named.append((f"no label (DDPM's network), sorted by the classifier's reading (of {free['drawn']})", free))
    named.append((f"real held-out digits (mean of {results['real']['draws']} draws)", results["real"]))
    if "real_read_as_labelled" in results:
        named.append(("real held-out digits read as their label", results["real_read_as_labelled"]))
    for name, s in named:
        rows.append(f"| {name} | {s['classifier_fd']:.2f} | {s['mean_part']:.2f} | {s['covariance_part']:.2f} | "
                    f"{s['ink']:.2f} | {s['confidence']:.3f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=hf.SHIPPED_GUIDED_WEIGHTS_PATH)
    parser.add_argument("--w", type=float, nargs="*", default=[0.0, 0.25, 0.5, 1.0], help="strengths (none: no guided rows)")
    parser.add_argument("--per-digit", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50, help="images per sampling call (guided.py evaluate's)")
    parser.add_argument("--steps", type=int, default=SETTINGS["SAMPLING_STEPS"])
    parser.add_argument("--label-t-min", type=int, default=SETTINGS["LABEL_T_MIN"])
    parser.add_argument("--read-as-asked", type=float, default=None, metavar="F",
                        help="also score the samples the classifier reads as asked, from F times --per-digit of each digit")
    parser.add_argument("--label-free", type=int, default=None, metavar="N",
                        help="also draw N label-free samples and score the first --per-digit of each digit as the classifier reads them")
    parser.add_argument("--output-dir", type=Path, default=guided.ROOT / "runs" / "fd_parts")
    args = parser.parse_args(argv)
    if args.per_digit < 2:
        parser.error(f"--per-digit must be at least 2 (a covariance needs two samples), got {args.per_digit}")
    if args.read_as_asked is not None and args.read_as_asked < 1:
        parser.error(f"--read-as-asked must be at least 1 (it draws F times --per-digit of each digit), got {args.read_as_asked:g}")
    classes = SETTINGS["NUM_CLASSES"]
    if args.label_free is not None and args.label_free < classes * args.per_digit:
        parser.error(f"--label-free must be at least {classes} times --per-digit ({classes * args.per_digit}), got {args.label_free}")
    nb = guided.notebook_classes(guided.NOTEBOOK)
    device = hf.choose_device(verbose=False)
    seed = SETTINGS["SEED"]
    schedule, network, reference = guided.evaluation_setup(args.weights, device)
    results = {"machine": guided.machine(), "weights": str(args.weights), "per_digit": args.per_digit,
               "date": time.strftime("%Y-%m-%d"), "real": real_rows(reference, args.per_digit, seed), "guided": {}}
    drawn_per_digit = args.per_digit if args.read_as_asked is None else math.ceil(args.read_as_asked * args.per_digit)
    asked = torch.arange(classes).repeat_interleave(drawn_per_digit)
    if args.read_as_asked is not None:
        read_correctly = reference.holdout_class_probabilities().argmax(1) == reference.holdout_labels
        results |= {"drawn_per_digit": drawn_per_digit, "read_as_asked": {},
                    "real_read_as_labelled": real_rows(reference, args.per_digit, seed, pool=read_correctly)}
    for w in args.w:
        samples = nb["sample_digits"](network, asked, w, schedule, args.steps, SETTINGS["SAMPLING_ETA"], args.batch,
                                      torch.Generator(device).manual_seed(seed), device, classes, args.label_t_min)
        images = hf.to_unit_range(samples, (-1.0, 1.0))
        results["guided"][str(w)] = describe(images[first_of_each(asked, args.per_digit)], reference)
        print(f"w = {w:g}: {results['guided'][str(w)]}", flush=True)
        if args.read_as_asked is not None:
            as_asked = reference.class_probabilities(reference.features(images)).argmax(1).cpu() == asked
            results["read_as_asked"][str(w)] = describe(images[first_of_each(asked, args.per_digit, as_asked)], reference) | {
                "drawn": len(images), "share_read_as_asked": as_asked.float().mean().item()}
            print(f"w = {w:g}, read as asked: {results['read_as_asked'][str(w)]}", flush=True)
        guided.write(results, args.output_dir, "fd_parts.json")
    if args.label_free is not None:
        results["label_free_by_reading"] = score_label_free_by_reading(nb["sample_digits"], network, schedule, reference,
                                                                      args, device, seed, classes)
        print(f"no label, by reading: {results['label_free_by_reading']}", flush=True)
        guided.write(results, args.output_dir, "fd_parts.json")
    print(markdown_table(results))
    return results


if __name__ == "__main__":
    main()
