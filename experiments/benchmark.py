"""Speed benchmark of the notebooks' U-Nets, side by side with denoising-diffusion-pytorch's Unet.

Not part of the default test run (pytest collects only test_*.py). Run from the repository root:

    python experiments/benchmark.py                      # CPU, the notebooks' configurations, JSON to benchmark.json
    python experiments/benchmark.py --bf16               # also both U-Nets under bfloat16 autocast
    python experiments/benchmark.py --device cuda --dims 32 64 --batch 128 --sample-images 1000

(experiments/gpu_comparison.py runs the GPU speed table together with the 3-minute training comparison.)

The library is needed only here: `pip install denoising-diffusion-pytorch` (never in requirements.txt); without it
its rows are skipped with a note. Every number printed is measured in this run, on this machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # notebook_code
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import helper_functions as hf  # noqa: E402
from notebook_code import notebook_classes  # noqa: E402


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of fn() over repeats, after warmup calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """Measured matrix-multiply FLOP/s of this device in dtype (float32 with TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, warmup=2, repeats=repeats)
    return 2 * size**3 / seconds


def forward_flops(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor | None) -> int:
    """Forward FLOPs for one image, counted by torch.utils.flop_counter."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x[:1]) if t is None else model(x[:1], t[:1])
    return counter.get_total_flops()


def measure(name: str, model: torch.nn.Module, takes_time: bool, device: torch.device, batch: int, size: int,
            sample_images: int, sample_steps: int, repeats: int, bf16: bool = False, channels_last: bool = False,
            compile_model: bool = False, cuda_graph: bool = False) -> dict:
    """Parameters, FLOPs, training and inference images/s, and a sampling loop's time for one model.

    bf16 runs the network under bfloat16 autocast; channels_last stores activations as NHWC; compile_model runs it
    through torch.compile and reports the seconds the first training step took (the compilation) separately;
    cuda_graph (GPU only) replays the forward, loss and backward of a training step, and the network call of
    inference and sampling, as recorded CUDA graphs (helper_functions.cuda_graphed), as train_ddpm does.
    """
    if cuda_graph and not takes_time:
        raise ValueError("cuda_graph records model(x, t): it needs a model that takes the timestep")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    network = torch.compile(model) if compile_model else model
    x = torch.randn(batch, 1, size, size, device=device).contiguous(memory_format=memory_format)
    t = torch.randint(0, 1000, (batch,), device=device) if takes_time else None
    plain = (lambda inp, tt: network(inp, tt)) if takes_time else (lambda inp, tt: network(inp))

    def call(inp, tt):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return plain(inp, tt).float()

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def loss_and_gradients(inp, tt):
        loss = F.mse_loss(call(inp, tt), inp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach()

    model.train()
    forward_backward = hf.cuda_graphed(loss_and_gradients, x, t) if cuda_graph else loss_and_gradients

    def train_step():
        forward_backward(x, t)
        optimizer.step()

    network_call = hf.graphed_model(call) if cuda_graph else call  # records on its first call, under inference_mode

    def inference():
        with torch.inference_mode():
            network_call(x, t)

    compile_seconds = None
    if compile_model:
        compile_seconds = timed(train_step, device, warmup=0, repeats=1)  # the first call compiles
    train_seconds = timed(train_step, device, warmup=2, repeats=repeats)
    model.eval()
    infer_seconds = timed(inference, device, warmup=2, repeats=repeats)
    flops = forward_flops(model, x, t)
    row = {
        "model": name, "bf16": bf16, "channels_last": channels_last, "compiled": compile_model, "cuda_graph": cuda_graph, "compile_seconds": compile_seconds, "batch": batch, "size": size, "parameters": hf.count_parameters(model), "forward_gflops_per_image": flops / 1e9,
        "train_images_per_s": batch / train_seconds, "inference_images_per_s": batch / infer_seconds,
        "train_tflops": 3 * flops * batch / train_seconds / 1e12,
    }
    if takes_time and sample_steps > 0:
        schedule = hf.NoiseSchedule(hf.linear_beta_schedule(sample_steps)).to(device)
        start = time.perf_counter()
        hf.ddpm_sample(network_call, schedule, (sample_images, 1, size, size), device=device, progress=False)
        synchronize(device)
        row[f"sampling_s_{sample_images}x{sample_steps}"] = time.perf_counter() - start
    return row


def library_unet(dim: int):
    """denoising-diffusion-pytorch's Unet(dim, channels=1, dim_mults=(1, 2, 4)), or None if it is not installed."""
    try:
        from denoising_diffusion_pytorch import Unet as LibraryUnet
    except ImportError:
        return None
    return LibraryUnet(dim=dim, channels=1, dim_mults=(1, 2, 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dims", type=int, nargs="+", default=[32], help="U-Net widths to compare")
    parser.add_argument("--batch", type=int, default=32, help="batch for training and inference")
    parser.add_argument("--sample-images", type=int, default=64)
    parser.add_argument("--sample-steps", type=int, default=1000, help="steps of the sampling loop (0 to skip)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[28, 32, 64], help="image sizes for the scaling table")
    parser.add_argument("--batches", type=int, nargs="*", default=[16, 32, 64, 128, 256], help="batches for the scaling table")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="also measure both U-Nets under bfloat16 autocast (and scale in bf16)")
    parser.add_argument("--compile", action="store_true", help="also measure our DDPM U-Net through torch.compile")
    parser.add_argument("--cuda-graph", action="store_true", help="also measure our DDPM U-Net replayed from CUDA graphs (GPU)")
    parser.add_argument("--channels-last", action="store_true", help="also measure each of our DDPM U-Net's rows in channels_last")
    parser.add_argument("--output", default="benchmark.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    peak = matmul_peak(device)
    peak_bf16 = matmul_peak(device, dtype=torch.bfloat16) if args.bf16 else None
    print(f"{device} | {platform.processor() or platform.machine()} | torch {torch.__version__} | threads {torch.get_num_threads()}"
          f" | measured fp32 matmul peak {peak / 1e12:.3f} TFLOP/s" + (f", bf16 {peak_bf16 / 1e12:.3f}" if args.bf16 else ""))
    toy = notebook_classes("toy_diffusion.ipynb")["BasicUNet"]
    ddpm = notebook_classes("DDPM.ipynb")["Unet"]
    rows = [measure("toy BasicUNet", toy(), False, device, args.batch, 28, 0, 0, args.repeats)]
    for dim in args.dims:
        for bf16 in (False, True) if args.bf16 else (False,):
            suffix = " bf16" if bf16 else ""
            for graph in (False, True) if args.cuda_graph else (False,):
                for channels_last in (False, True) if args.channels_last else (False,):
                    label = f"DDPM Unet dim={dim}{suffix}" + (" CUDA graph" if graph else "") + (" channels_last" if channels_last else "")
                    rows.append(measure(label, ddpm(dim=dim), True, device, args.batch, 28, args.sample_images, args.sample_steps,
                                        args.repeats, bf16=bf16, channels_last=channels_last, cuda_graph=graph))
                    print(f"{label}: train {rows[-1]['train_images_per_s']:.0f} img/s, infer {rows[-1]['inference_images_per_s']:.0f} img/s",
                          flush=True)
            library = library_unet(dim)
            if library is None:
                print("denoising-diffusion-pytorch is not installed: `pip install denoising-diffusion-pytorch` to compare")
                continue
            rows.append(measure(f"library Unet dim={dim}{suffix}", library, True, device, args.batch, 28,
                                args.sample_images, args.sample_steps, args.repeats, bf16=bf16))
    if args.compile:
        rows.append(measure(f"DDPM Unet dim={args.dims[0]} compiled", ddpm(dim=args.dims[0]), True, device, args.batch, 28,
                            0, 0, args.repeats, compile_model=True))
        print(f"torch.compile: first training step (compilation) {rows[-1]['compile_seconds']:.1f} s")
    for row in rows:
        row["fraction_of_matmul_peak"] = row["train_tflops"] * 1e12 / (peak_bf16 if row["bf16"] else peak)
        extra = "  ".join(f"{k} {v:.1f}" for k, v in row.items() if k.startswith("sampling_s"))
        print(f"{row['model']:<24s} {row['parameters']:>10,d} params  {row['forward_gflops_per_image']:.3f} GFLOP/img  "
              f"train {row['train_images_per_s']:8.1f} img/s  infer {row['inference_images_per_s']:8.1f} img/s  "
              f"{100 * row['fraction_of_matmul_peak']:5.1f}% of peak  {extra}")

    by_name = {row["model"]: row for row in rows}
    for dim in args.dims:
        library_fp32 = by_name.get(f"library Unet dim={dim}")
        if library_fp32 is None:
            continue
        for ours in [row for row in rows if row["model"].startswith(f"DDPM Unet dim={dim}")]:
            print(f"{ours['model']}: training {ours['train_images_per_s'] / library_fp32['train_images_per_s']:.2f}x "
                  f"the library's fp32 images/s")

    scaling = []
    for size in args.sizes:
        for batch in args.batches:
            model = ddpm(dim=args.dims[0]).to(device)
            row = measure(f"DDPM Unet dim={args.dims[0]}", model, True, device, batch, size, 0, 0, max(2, args.repeats // 2), bf16=args.bf16)
            scaling.append({"size": size, "batch": batch, "train_ms_per_image": 1000 / row["train_images_per_s"],
                            "inference_ms_per_image": 1000 / row["inference_images_per_s"]})
            print(f"size {size:3d} batch {batch:4d}: train {scaling[-1]['train_ms_per_image']:7.2f} ms/img  "
                  f"one sampling step {scaling[-1]['inference_ms_per_image']:7.3f} ms/img")
    Path(args.output).write_text(json.dumps({"device": str(device), "matmul_peak_flops": peak, "matmul_peak_flops_bf16": peak_bf16, "models": rows,
                                             "scaling": scaling, "arguments": vars(args)}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
