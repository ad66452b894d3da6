"""Statistics over independent draws of samples: what one FD at a given n cannot tell, several can."""

from __future__ import annotations

import math
from typing import Sequence

import torch


def summarise_draws(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation and standard error of the mean of one figure over independent draws.

    With one draw the spread is unknown: sd and sem are NaN.
    """
    if len(values) < 1:
        raise ValueError("need at least one draw")
    x = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"every draw must be a finite number, got {list(values)}")
    sd = x.std().item() if len(x) > 1 else math.nan
    return {"mean": x.mean().item(), "sd": sd, "sem": sd / math.sqrt(len(x)), "draws": len(x)}


def ratio_of_means(numerator: dict[str, float], denominator: dict[str, float]) -> tuple[float, float]:
    """a / b for two summarise_draws results, and its standard error to first order (the delta method):
    se(a / b) = sqrt((sem_a / b)^2 + (a sem_b / b^2)^2). NaN when either side has a single draw."""
    a, b = numerator["mean"], denominator["mean"]
    if b <= 0:
        raise ValueError(f"the denominator's mean must be positive, got {b}")
    return a / b, math.sqrt((numerator["sem"] / b) ** 2 + (a * denominator["sem"] / b**2) ** 2)
