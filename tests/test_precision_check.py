"""tests/precision_check.py at a tiny size: the shipped network treats each image on its own, and TF32 moves it."""

import subprocess
import sys
from pathlib import Path

import torch

import helper_functions as hf
from evaluate_quality import CONFIG
from notebook_code import notebook_classes
from precision_check import NETWORKS, AutocastRegion, network_in

SCRIPT = Path(__file__).resolve().parent / "precision_check.py"


def test_batch_size_does_not_matter_and_tf32_does_a_little():
    completed = subprocess.run([sys.executable, str(SCRIPT), "--n", "3", "--steps", "3", "--networks", "float32", "float32_per_image", "tf32"],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in completed.stdout.splitlines()[2:]}
    assert rows["float32"][:2] == [0.0, 0.0]  # the reference against itself
    assert rows["float32_per_image"][1] < 1e-4  # one image per call: the same images up to float32 rounding
    assert 1e-4 < rows["tf32"][1] < 0.5  # TF32's rounding moves them, but not far


def test_every_network_gives_float32_eps_and_the_partial_bfloat16_ones_are_partial():
    model = notebook_classes("DDPM.ipynb")["Unet"](dim=CONFIG["dim"], dim_mults=tuple(CONFIG["dim_mults"]))
    model = hf.load_weights(model, hf.DATA_DIR / "ddpm_mnist_ema.pt", CONFIG).eval()
    x, t = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 900])
    with torch.inference_mode():
        eps = {name: network_in(model, name)(x, t) for name in NETWORKS}
    for name, value in eps.items():
        assert value.shape == x.shape and value.dtype == torch.float32, name
    for name in NETWORKS[1:]:
        if name not in ("float32", "float32_per_image"):
            assert not torch.equal(eps[name], eps["float32"]), name  # each rounding moves eps a little ...
            assert (eps[name] - eps["float32"]).abs().max() < 0.2, name  # ... and only a little
    # the time embedding's layers alone: the shared MLP and one per ResNet block
    wrapped = network_in(model, "bfloat16_time_only")
    blocks = sum(1 for m in model.modules() if type(m).__name__ == "ResnetBlock")
    assert sum(isinstance(m, AutocastRegion) for m in wrapped.modules()) == blocks + 1
    assert not any(isinstance(m, AutocastRegion) for m in model.modules())  # the shipped model is left alone
