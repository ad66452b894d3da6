"""Guidance rules other than guided_diffusion.ipynb's plain eq. 6, on the shipped class-conditional weights, scored
like experiments/guided.py: does any of them buy the accuracy for less FD? Not part of the default test run.

    python experiments/guidance_variants.py --per-digit 20 --run cfg:w=0.5 interval:w=1,lo=200,hi=600 \
        clip:w=0.5 apg:w=1,offset=1 rescale:w=1,phi=0.7 --output-dir runs/guidance_variants
    python experiments/guidance_variants.py --per-digit 20 --run auto:w=1 --guiding-weights runs/guided_bad/guided_mnist_ema.pt
    python experiments/guidance_variants.py --per-digit 20 --run handoff:w=0,at=500 --low-t-weights runs/guided_200_500/guided_mnist_ema.pt

Each run is NAME:KEY=VALUE,...; every rule gives the label on t >= LABEL_T_MIN only, as the notebook does:
- cfg: the notebook's `guided_eps`, eps_c + w (eps_c - eps_null) (Ho & Salimans, eq. 6);
- interval: the same with w only for lo <= t <= hi and w = 0 (eps_c alone) elsewhere, the guidance interval of
  Kynkäänniemi et al. 2024 (arXiv 2404.07724), composed of two of the notebook's `guided_eps`;
- clip: eq. 6, its predicted x0 clipped to [-1, 1] (as DDPM implementations' clip_denoised does);
- apg: projected guidance (Sadat et al. 2024, arXiv 2410.02416): in x0 space, the guidance step
  x0_c - x0_null loses the part parallel to x0_c + offset, of which eta (default 0) is kept;
- rescale: eq. 6 in x0 space, its standard deviation per image rescaled to x0_c's, mixed by phi (Lin et al. 2024,
  arXiv 2305.08891, sec. 3.4);
- auto: autoguidance (Karras et al. 2024, arXiv 2406.02507, eq. 1 with their w = 1 + ours): eps_c + w (eps_c -
  eps_c of a weaker network, --guiding-weights), both given the label, so the push comes from where the weaker
  network errs, not from leaving the label out;
- handoff: eq. 6 with the shipped weights (--weights) on t >= at and with other class-conditional weights
  (--low-t-weights, e.g. label parts trained on the steps below `at` only) below it, at strength low_w there
  (default: w), each composed by the notebook's `guided_eps`; so each set of label parts acts only on the steps it
  was trained on.
All runs use one batch size and generator seed, so every rule starts from the same noise; a run's samples are DDIM
on SAMPLING_STEPS steps with SAMPLING_ETA, the notebook's sampler. Results go to --output-dir/guidance_variants.json
after every run.
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
from notebook_code import notebook_classes  # noqa: E402

SETTINGS = guided.SETTINGS
REQUIRED = {"cfg": {"w"}, "interval": {"w", "lo", "hi"}, "clip": {"w"}, "apg": {"w"}, "rescale": {"w", "phi"}, "auto": {"w"},
            "handoff": {"w", "at"}}
OPTIONAL = {"apg": {"offset", "eta"}, "handoff": {"low_w"}}  # apg's default to 0 in guided_x0, handoff's low_w to w
RULES = {name: keys | OPTIONAL.get(name, set()) for name, keys in REQUIRED.items()}


def parse_run(text: str) -> tuple[str, dict[str, float]]:
    """'apg:w=1,offset=1' -> ('apg', {'w': 1.0, 'offset': 1.0}), with a clear error for an unknown rule or key."""
    name, _, rest = text.partition(":")
    if name not in RULES:
        raise ValueError(f"unknown guidance rule {name!r} in {text!r}: choose from {sorted(RULES)}")
    options = {}
    for item in filter(None, rest.split(",")):
        key, equals, value = item.partition("=")
        if not equals or key not in RULES[name]:
            raise ValueError(f"{text!r}: {name} takes {sorted(RULES[name])} as KEY=VALUE, got {item!r}")
        options[key] = float(value)
    missing = REQUIRED[name] - options.keys()
    if missing:
        raise ValueError(f"{text!r}: {name} needs {sorted(missing)}")
    if options["w"] < 0 or options.get("low_w", 0) < 0:
        raise ValueError(f"{text!r}: w must be at least 0")
    return name, options


def per_image(values: torch.Tensor) -> torch.Tensor:
    """A (batch,) tensor shaped to broadcast over (batch, 1, 28, 28) images."""
    return values[:, None, None, None]


def guided_x0(rule: str, options: dict[str, float], x0_c: torch.Tensor, x0_null: torch.Tensor) -> torch.Tensor:
    """The guided prediction of x0 under one of the x0-space rules (clip, apg, rescale)."""
    w, step = options["w"], x0_c - x0_null
    if rule == "clip":
        return (x0_c + w * step).clamp(-1, 1)
    if rule == "apg":
        direction = x0_c + options.get("offset", 0.0)
        parallel = per_image((step * direction).flatten(1).sum(1) / direction.square().flatten(1).sum(1)) * direction
        return x0_c + w * (step - parallel + options.get("eta", 0.0) * parallel)
    if rule == "rescale":
        x0_cfg = x0_c + w * step
        rescaled = x0_cfg * per_image(x0_c.flatten(1).std(1) / x0_cfg.flatten(1).std(1))
        return options["phi"] * rescaled + (1 - options["phi"]) * x0_cfg
    raise ValueError(f"{rule!r} is not an x0-space rule")


def eps_model(rule, options, network, labels, schedule, null_label, t_min, guided_eps, guiding_network=None,
              low_t_network=None):
    """model(x_t, t) for the samplers under one rule, for the images' labels; guided_eps is the notebook's,
    guiding_network the weaker network that autoguidance ("auto") steers away from, and low_t_network the one that
    "handoff" uses below its step `at`."""
    w = options["w"]
    if rule == "cfg":
        return guided_eps(network, labels, w, null_label, t_min)
    if rule == "auto":
        if guiding_network is None:
            raise ValueError("autoguidance needs the weaker guiding network: give --guiding-weights")

        def autoguided(x_t, t):
            given = torch.where(t >= t_min, labels, null_label)  # no label below t_min, for both networks
            eps_c = network(x_t, t, given)
            if w == 0:
                return eps_c
            # eps_c + w (eps_c - eps_c of the weaker network): Karras et al.'s D_1 + (w_K - 1)(D_1 - D_0)
            return eps_c + w * (eps_c - guiding_network(x_t, t, given))

        return autoguided
    if rule in ("interval", "handoff"):
        if rule == "handoff" and low_t_network is None:
            raise ValueError("the handoff rule needs the network for the steps below `at`: give --low-t-weights")
        inside_model = guided_eps(network, labels, w, null_label, t_min)
        outside_model = (guided_eps(network, labels, 0.0, null_label, t_min) if rule == "interval" else
                         guided_eps(low_t_network, labels, options.get("low_w", w), null_label, t_min))

        def windowed(x_t, t):
            inside = (t >= options["lo"]) & (t <= options["hi"]) if rule == "interval" else t >= options["at"]
            if inside.all():
                return inside_model(x_t, t)
            if not inside.any():
                return outside_model(x_t, t)
            return torch.where(per_image(inside), inside_model(x_t, t), outside_model(x_t, t))

        return windowed
    conditional_model = guided_eps(network, labels, 0.0, null_label, t_min)

    def in_x0_space(x_t, t):
        labelled = t >= t_min
        if w == 0 or not labelled.any():
            return conditional_model(x_t, t)
        both = torch.where(torch.cat([labelled, labelled]), torch.cat([labels, torch.full_like(labels, null_label)]), null_label)
        eps_c, eps_null = network(torch.cat([x_t, x_t]), torch.cat([t, t]), both).chunk(2)
        abar = per_image(schedule.alphas_cumprod[t])
        # x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), and back: eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)
        x0_c, x0_null = ((x_t - (1 - abar).sqrt() * eps) / abar.sqrt() for eps in (eps_c, eps_null))
        eps = (x_t - abar.sqrt() * guided_x0(rule, options, x0_c, x0_null)) / (1 - abar).sqrt()
        return torch.where(per_image(labelled), eps, eps_c)

    return in_x0_space


def sample(rule, options, network, asked, schedule, steps, eta, batch_size, generator, device, null_label, t_min, guided_eps,
           guiding_network=None, low_t_network=None):
    """Samples in [-1, 1] on the CPU of the digits `asked` under one rule, in batches, all from one generator."""
    batches = []
    for labels in asked.split(batch_size):
        model = eps_model(rule, options, network, labels.to(device), schedule, null_label, t_min, guided_eps, guiding_network,
                          low_t_network)
        batches.append(hf.ddim_sample(model, schedule, (len(labels), 1, 28, 28), steps, eta=eta, device=device,
                                      generator=generator, progress=False).clamp(-1, 1).cpu())
    return torch.cat(batches)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", nargs="+", required=True, help="NAME:KEY=VALUE,... (see the module's docstring)")
    parser.add_argument("--weights", type=Path, default=hf.SHIPPED_GUIDED_WEIGHTS_PATH)
    parser.add_argument("--per-digit", type=int, default=20)
    parser.add_argument("--batch", type=int, default=250, help="images per sampling call")
    parser.add_argument("--steps", type=int, default=SETTINGS["SAMPLING_STEPS"])
    parser.add_argument("--guiding-weights", type=Path, default=None,
                        help="the weaker class-conditional network that the auto rule guides with")
    parser.add_argument("--low-t-weights", type=Path, default=None,
                        help="the class-conditional network that the handoff rule uses below its step `at`")
    parser.add_argument("--output-dir", type=Path, default=guided.ROOT / "runs" / "guidance_variants")
    args = parser.parse_args(argv)
    try:
        runs = [parse_run(text) for text in args.run]
    except ValueError as error:
        parser.error(str(error))
    second_networks = {"auto": ("--guiding-weights", args.guiding_weights), "handoff": ("--low-t-weights", args.low_t_weights)}
    for rule, (flag, path) in second_networks.items():
        if path is None and any(name == rule for name, _ in runs):
            parser.error(f"the {rule} rule needs a second network: give its weights with {flag}")
    if args.per_digit < 2 or args.batch < 1 or args.steps < 1:
        parser.error("--per-digit must be at least 2 (diversity compares samples of one digit), --batch and --steps at least 1")
    guided_eps = notebook_classes(guided.NOTEBOOK)["guided_eps"]
    device, classes, t_min, seed = hf.choose_device(), SETTINGS["NUM_CLASSES"], SETTINGS["LABEL_T_MIN"], SETTINGS["SEED"]
    schedule, network, reference = guided.evaluation_setup(args.weights, device)
    guiding_network, low_t_network = (None if path is None else guided.evaluation_setup(path, device, reference=False)[1]
                                      for path in (args.guiding_weights, args.low_t_weights))
    asked = torch.arange(classes).repeat_interleave(args.per_digit)
    results = {"machine": guided.machine(), "weights": str(args.weights), "per_digit": args.per_digit, "batch": args.batch,
               "guiding_weights": None if args.guiding_weights is None else str(args.guiding_weights),
               "low_t_weights": None if args.low_t_weights is None else str(args.low_t_weights),
               "sampler": f"DDIM eta = {SETTINGS['SAMPLING_ETA']:g}, {args.steps} steps", "label_t_min": t_min,
               "date": time.strftime("%Y-%m-%d"), "real": hf.conditional_reference_scores(reference, args.per_digit, seed=seed),
               "runs": {}}
    print(hf.format_guided_quality("real digits", results["real"]), flush=True)
    for text, (rule, options) in zip(args.run, runs):
        start = time.perf_counter()
        samples = sample(rule, options, network, asked, schedule, args.steps, SETTINGS["SAMPLING_ETA"], args.batch,
                         torch.Generator(device).manual_seed(seed), device, classes, t_min, guided_eps, guiding_network,
                         low_t_network)
        scores = results["runs"][text] = hf.conditional_quality(samples, asked, reference) | {"seconds": time.perf_counter() - start}
        print(hf.format_guided_quality(text, scores, results["real"]) + f"   {scores['seconds']:.0f} s", flush=True)
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "guidance_variants.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
