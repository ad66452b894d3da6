"""How much the network's arithmetic moves a deterministic DDIM sample (not part of the default test run).

    python tests/precision_check.py --n 200 --seed 1000 --steps 50
    python tests/precision_check.py --n 200 --seed 1000 --steps 50 --networks float32 float32_per_image

DDIM with eta = 0 maps x_T to x_0 without drawing anything else, so two runs from the same x_T differ only by
their arithmetic. This samples the same x_T (the first chunk of `evaluate_quality.py --seed S` on the CPU) with the
shipped network in float64 (the reference), float32, TF32 (float32 with the operands of its convolutions and matrix
products rounded to 10 mantissa bits, as a GPU computes convolutions by default: tests/tf32_emulation.py) and under
bfloat16 autocast (8 mantissa bits), the sampler's own update in float32 throughout, and prints for each: how
far its images lie from the reference's (the first of --networks; mean and largest pixel difference, on the
[-1, 1] scale), how many images move visibly (a pixel by more than 0.1), how many change their predicted class, and the time.
Small differences mean the precision of a machine cannot explain a difference between its FDs and another's.
`float32_per_image` calls the float32 network on one image at a time: it should give the batch's images up to
float32's rounding (GroupNorm and attention work within each image), so the batch size cannot move a score either.
Taking bfloat16 autocast apart (with --networks bfloat16 ... to measure each part's distance from bfloat16's images):
`bfloat16_weights` rounds the weights alone (float32 arithmetic), `bfloat16_activations` the activations alone
(float32 weights), `bfloat16_input` only x_t on its way in, `bfloat16_time_only` runs only the time embedding's
layers under autocast and `bfloat16_but_time` everything else.
--networks picks which to run; the first is the reference the others are compared with.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import helper_functions as hf  # noqa: E402
from evaluate_quality import CONFIG, bfloat16_weights  # noqa: E402
from notebook_code import notebook_classes  # noqa: E402
from tf32_emulation import bfloat16_activations_model, tf32_model  # noqa: E402

NETWORKS = ("float64", "float32", "float32_per_image", "tf32", "bfloat16", "bfloat16_weights", "bfloat16_activations", "bfloat16_input",
            "bfloat16_time_only", "bfloat16_but_time")
VISIBLE = 0.1  # a pixel difference a reader could see in a grid (the [-1, 1] scale spans 2)


class AutocastRegion(torch.nn.Module):
    """`inner` run with bfloat16 autocast switched on (or off) whatever the surrounding region says; output in float32."""

    def __init__(self, inner: torch.nn.Module, enabled: bool):
        super().__init__()
        self.inner, self.enabled = inner, enabled

    def forward(self, *args):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.enabled):
            return self.inner(*args).float()


def time_mlps_in(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """A copy of the U-Net whose time-embedding MLPs (the shared one and each ResNet block's scale/shift layer) run
    with bfloat16 autocast `enabled`."""
    model = copy.deepcopy(model)
    owners = [model] + [m for m in model.modules() if m is not model and isinstance(getattr(m, "time_mlp", None), torch.nn.Module)]
    for owner in owners:
        owner.time_mlp = AutocastRegion(owner.time_mlp, enabled)
    return model


def network_in(model: torch.nn.Module, name: str):
    """model(x, t) computed the way `name` (one of NETWORKS) says, output in float32."""
    if name == "float64":
        model64 = copy.deepcopy(model).double()
        return lambda x, t: model64(x.double(), t).float()
    if name == "bfloat16":
        return hf.autocast_model(model, "cpu")
    if name == "tf32":
        return tf32_model(model)
    if name == "float32":
        return model
    if name == "bfloat16_weights":  # bfloat16's rounding of the weights alone, arithmetic in float32
        return bfloat16_weights(model)
    if name == "bfloat16_activations":  # bfloat16's rounding of the activations alone, weights in float32
        return bfloat16_activations_model(model)
    if name == "bfloat16_input":  # x_t rounded to bfloat16 on its way in, the network in float32
        return lambda x, t: model(x.bfloat16().float(), t)
    if name == "bfloat16_time_only":  # only the time embedding's layers under autocast
        return time_mlps_in(model, enabled=True)
    if name == "bfloat16_but_time":  # autocast everywhere except the time embedding's layers
        return hf.autocast_model(time_mlps_in(model, enabled=False), "cpu")
    if name == "float32_per_image":
        return lambda x, t: torch.cat([model(x[i:i + 1], t[i:i + 1]) for i in range(len(x))])
    raise ValueError(f"network must be one of {NETWORKS}, got {name!r}")


@torch.inference_mode()
def predicted_classes(samples: torch.Tensor, classifier: hf.MnistClassifier) -> torch.Tensor:
    """The classifier's digit for each sample in [-1, 1]."""
    return classifier(hf.to_unit_range(samples, (-1, 1))).argmax(1)


def compare(samples: torch.Tensor, classes: torch.Tensor, reference: torch.Tensor, reference_classes: torch.Tensor
            ) -> dict[str, float]:
    """Pixel and class differences of samples from the reference samples (same x_T, same order)."""
    difference = (samples - reference).abs().flatten(1)
    return {
        "mean_pixel_difference": difference.mean().item(),
        "largest_pixel_difference": difference.max().item(),
        "visibly_moved": (difference.max(1).values > VISIBLE).float().mean().item(),
        "class_changed": (classes != reference_classes).float().mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="images, all from one x_T batch")
    parser.add_argument("--seed", type=int, default=1000, help="the CPU generator's seed for x_T")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (eta = 0)")
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS),
                        help="the arithmetics to compare; the first is the reference")
    parser.add_argument("--weights", default=str(hf.DATA_DIR / "ddpm_mnist_ema.pt"))
    args = parser.parse_args()
    if args.n < 1 or not 1 <= args.steps <= CONFIG["T"]:
        parser.error(f"--n must be positive and --steps within 1 ... {CONFIG['T']}, got {args.n} and {args.steps}")

    model = notebook_classes("DDPM.ipynb")["Unet"](dim=CONFIG["dim"], dim_mults=tuple(CONFIG["dim_mults"]))
    model = hf.load_weights(model, args.weights, CONFIG).eval()
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(CONFIG["T"]))
    classifier = hf.load_classifier()
    samples, classes, seconds = {}, {}, {}
    for name in args.networks:
        generator = torch.Generator().manual_seed(args.seed)  # the same x_T for every network
        start = time.perf_counter()
        samples[name] = hf.ddim_sample(network_in(model, name), schedule, (args.n, 1, 28, 28), args.steps,
                                       generator=generator, progress=False)
        seconds[name] = time.perf_counter() - start
        classes[name] = predicted_classes(samples[name], classifier)
    reference = args.networks[0]
    print(f"DDIM eta = 0, {args.steps} steps, {args.n} images from x_T of CPU seed {args.seed}; differences from the {reference} network:")
    print(f"{'network':<22s} {'mean |dx|':>10s} {'largest |dx|':>13s} {'moved > ' + str(VISIBLE):>12s} {'class changed':>14s} {'seconds':>8s}")
    for name in args.networks:
        figures = compare(samples[name], classes[name], samples[reference], classes[reference])
        print(f"{name:<22s} {figures['mean_pixel_difference']:10.2e} {figures['largest_pixel_difference']:13.2e}"
              f" {figures['visibly_moved']:12.3f} {figures['class_changed']:14.3f} {seconds[name]:8.1f}")


if __name__ == "__main__":
    main()
