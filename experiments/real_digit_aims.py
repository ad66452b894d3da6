"""What issue 22's aims ask of a sampler, measured on real digits: held-out real digits drawn like samples (100 of
each digit), from every held-out digit (the floor), from only those the project's classifier reads as their label
(a sampler that never draws a digit the classifier misreads), and from only the most confidently read (a sampler
that draws typical digits only, as guidance does). Each is scored like guided samples against the same reference
(experiments/RESULTS.md, "What the aims ask of real digits"). Not part of the test run.

    python experiments/real_digit_aims.py --per-digit 100 --output-dir runs/real_digit_aims

Each row is the mean of 10 draws, as `conditional_reference_scores` draws the floor. The held-out pool holds 250
digits of each class, so --per-digit must leave room in the smallest pool; "most confident" keeps the
--confident-share of each class that the classifier reads with the highest probability of its label.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import guided  # noqa: E402  (puts the repository and tests/ on the path)
import helper_functions as hf  # noqa: E402


@torch.inference_mode()
def pools(reference: hf.QualityReference, confident_share: float) -> dict[str, torch.Tensor]:
    """Boolean masks over the held-out digits: every digit, those the classifier reads as their label, and the
    confident_share of each class with the highest probability of their label."""
    if not 0 < confident_share <= 1:
        raise ValueError(f"confident_share is the share of each class kept and must lie in (0, 1], got {confident_share}")
    labels = reference.holdout_labels
    probabilities = reference.holdout_class_probabilities()
    correctly_read = probabilities.argmax(1) == labels
    own = probabilities.gather(1, labels[:, None]).squeeze(1)  # the probability of each digit's own label
    confident = torch.zeros_like(correctly_read)
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        keep = max(1, round(confident_share * len(members)))
        confident[members[own[members].argsort(descending=True)[:keep]]] = True
    return {"every held-out digit": torch.ones_like(correctly_read), "read correctly": correctly_read,
            f"the most confident {confident_share:.0%}": confident}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-digit", type=int, default=100)
    parser.add_argument("--confident-share", type=float, default=0.5, help="share of each class kept as 'most confident'")
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--output-dir", type=Path, default=guided.ROOT / "runs" / "real_digit_aims")
    args = parser.parse_args(argv)
    if args.per_digit < 2 or args.draws < 1:
        parser.error("--per-digit must be at least 2 (diversity compares digits of one class) and --draws at least 1")
    if not 0 < args.confident_share <= 1:
        parser.error(f"--confident-share must lie in (0, 1], got {args.confident_share}")
    images, labels = hf.load_mnist_subset()
    reference = hf.QualityReference(hf.load_classifier(), images, labels, training_images=images)
    results = {"machine": guided.machine(), "per_digit": args.per_digit, "draws": args.draws, "date": time.strftime("%Y-%m-%d"),
               "pools": {}}
    for name, pool in pools(reference, args.confident_share).items():
        try:
            scores = hf.conditional_reference_scores(reference, args.per_digit, seed=guided.SETTINGS["SEED"], draws=args.draws, pool=pool)
        except ValueError as error:
            parser.error(f"{name}: {error}")
        results["pools"][name] = scores | {"pool_size": int(pool.sum())}
        print(hf.format_guided_quality(name, scores) + f"   FD sd {scores['classifier_fd_sd']:.2f}, pool {int(pool.sum())}", flush=True)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "real_digit_aims.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
