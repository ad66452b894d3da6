"""How quickly does fine-tuning from DDPM's weights teach the labels? A short diagnostic behind the training recipe
of guided_diffusion.ipynb (experiments/RESULTS.md, "Why the class vectors and the label layers"). Not part of the
test run.

    python experiments/class_vector_probe.py --steps 200                                  # every weight, Adam 5e-4
    python experiments/class_vector_probe.py --steps 200 --freeze --class-lr 2e-2          # the class vectors alone
    python experiments/class_vector_probe.py --steps 200 --freeze --class-lr 2e-2 --t-min 500   # ... on t >= 500
    python experiments/class_vector_probe.py --steps 300 --probe-every 150 --freeze --class-lr 2e-2 \
        --projections-lr 1e-3 --t-min 500             # ... and each ResNet block's scale-shift layer (DDPM's time_mlp)
    python experiments/class_vector_probe.py --steps 300 --probe-every 150 --freeze --class-lr 2e-2 \
        --label-layers-lr 1e-3 --t-min 500            # ... or, instead, each block's label layer (the recipe)

It starts from data/ddpm_mnist_ema.pt with zero class vectors and label layers (the notebook's
`conditional_from_ddpm`), trains at a constant learning rate on batches of 32 with label dropout 0.2 (no EMA, no
warm-up: the raw weights are probed), and every --probe-every steps draws 20 samples of each digit with DDIM on 10
steps (--probe-steps; eta = 1) at w = 0 and w = 3, the label given on t >= --label-t-min, scored with the project's
classifier: accuracy at both strengths, the classifier FD at w = 0 (n = 200), and the class vectors' lengths.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # notebook_code
sys.path.insert(0, str(ROOT))
import helper_functions as hf  # noqa: E402
from notebook_code import notebook_classes, notebook_weights_config  # noqa: E402


def probe(model, schedule, reference, per_digit: int = 20, t_min: int = 0, steps: int = 10) -> str:
    """Accuracy at w = 0 and 3 and the FD at w = 0 of per_digit samples of each digit (DDIM on `steps` steps, the
    label given on t >= t_min), and the class vectors' lengths."""
    model.eval()
    generator, asked, null = torch.Generator().manual_seed(1), torch.arange(10).repeat_interleave(per_digit), 10
    scores = {}
    with torch.no_grad():
        for w in (0.0, 3.0):
            def eps(x, t):
                c = torch.where(t >= t_min, asked, null)
                if w == 0:
                    return model(x, t, c)
                conditional, unconditional = model(torch.cat([x, x]), torch.cat([t, t]),
                                                   torch.cat([c, torch.full_like(c, null)])).chunk(2)
                return (1 + w) * conditional - w * unconditional
            samples = hf.ddim_sample(eps, schedule, (len(asked), 1, 28, 28), steps, eta=1.0, generator=generator, progress=False)
            scores[w] = hf.conditional_quality(samples.clamp(-1, 1), asked, reference)
    model.train()
    lengths = model.class_embedding.weight.norm(dim=1)
    return (f"accuracy w=0 {scores[0.0]['accuracy']:.2f}, w=3 {scores[3.0]['accuracy']:.2f}; FD w=0 {scores[0.0]['classifier_fd']:.1f}; "
            f"class vector lengths {lengths.min():.2f}-{lengths.max():.2f}")


def main(argv=None) -> torch.nn.Module:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4, help="Adam's step size for DDPM's weights (without --freeze)")
    parser.add_argument("--class-lr", type=float, default=None, help="Adam's step size for the class vectors (default: --lr)")
    parser.add_argument("--freeze", action="store_true", help="keep DDPM's weights frozen: train the class vectors alone")
    parser.add_argument("--projections-lr", type=float, default=None,
                        help="with --freeze, also train each ResNet block's time projection (embedding -> scale, shift) at this step size")
    parser.add_argument("--label-layers-lr", type=float, default=None,
                        help="with --freeze, also train each ResNet block's label layer (label embedding -> scale, shift) at this step size")
    parser.add_argument("--t-min", type=int, default=0, help="draw t from t_min ... T-1")
    parser.add_argument("--label-t-min", type=int, default=0, help="when probing, give the label on t >= this only")
    parser.add_argument("--probe-every", type=int, default=100)
    parser.add_argument("--per-digit", type=int, default=20, help="samples of each digit per probe")
    parser.add_argument("--probe-steps", type=int, default=10, help="DDIM steps of each probe's samples")
    args = parser.parse_args(argv)
    print(vars(args), flush=True)
    torch.manual_seed(0)
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(1000, 1e-4, 0.02))
    conditional_from_ddpm = notebook_classes("guided_diffusion.ipynb")["conditional_from_ddpm"]
    model = conditional_from_ddpm(hf.SHIPPED_WEIGHTS_PATH, notebook_weights_config("DDPM.ipynb"), 10)  # label parts at zero
    images, labels = hf.load_mnist_subset()
    x0 = images * 2 - 1
    class_vectors = [model.class_embedding.weight]
    body = [q for name, q in model.named_parameters() if not name.startswith("class_embedding")]
    if args.freeze:
        for q in body:
            q.requires_grad_(False)
    groups = ([] if args.freeze else [{"params": body, "lr": args.lr}]) + [{"params": class_vectors, "lr": args.class_lr or args.lr}]
    if args.freeze and args.projections_lr:  # the blocks' scale-shift layers learn too
        projections = [q for name, q in model.named_parameters() if ".time_mlp." in name]
        for q in projections:
            q.requires_grad_(True)
        groups.append({"params": projections, "lr": args.projections_lr})
    if args.freeze and args.label_layers_lr:  # the blocks' label layers (zero at the start) learn too
        label_layers = [q for name, q in model.named_parameters() if ".label_mlp." in name]
        for q in label_layers:
            q.requires_grad_(True)
        groups.append({"params": label_layers, "lr": args.label_layers_lr})
    optimizer = torch.optim.Adam(groups)
    reference = hf.QualityReference(hf.load_classifier(), images, labels, training_images=images)
    print("step 0:", probe(model, schedule, reference, args.per_digit, args.label_t_min, args.probe_steps), flush=True)
    start, smoothed = time.perf_counter(), None
    for step in range(1, args.steps + 1):
        index = torch.randint(0, len(x0), (args.batch,))
        x_batch, c_batch = x0[index], labels[index]
        c = torch.where(torch.rand(args.batch) < 0.2, torch.full_like(c_batch, 10), c_batch)
        t = torch.randint(args.t_min, 1000, (args.batch,))
        eps = torch.randn_like(x_batch)
        loss = F.mse_loss(model(hf.q_sample(x_batch, t, schedule, eps=eps), t, c), eps)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], 1.0)
        optimizer.step()
        smoothed = loss.item() if smoothed is None else 0.98 * smoothed + 0.02 * loss.item()
        if step % args.probe_every == 0:
            print(f"step {step}: loss {smoothed:.4f}, {(time.perf_counter() - start) / step:.2f} s/step (probes included);",
                  probe(model, schedule, reference, args.per_digit, args.label_t_min, args.probe_steps), flush=True)
    return model


if __name__ == "__main__":
    main()
