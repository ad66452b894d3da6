"""The benchmark at a tiny size: it measures both notebooks' U-Nets, counts their parameters right, and says
what to install when the library is missing."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "benchmark.py"


def test_a_tiny_cpu_run_measures_both_notebooks_models(tmp_path):
    output = tmp_path / "benchmark.json"
    completed = subprocess.run([sys.executable, str(SCRIPT), "--dims", "8", "--batch", "2", "--sample-images", "2",
                                "--sample-steps", "2", "--sizes", "--batches", "--repeats", "1", "--output", str(output)],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(output.read_text())
    models = {row["model"]: row for row in result["models"]}
    assert models["toy BasicUNet"]["parameters"] == 203_777  # the toy notebook's printed count
    ddpm = models["DDPM Unet dim=8"]
    assert ddpm["train_images_per_s"] > 0 and ddpm["inference_images_per_s"] > ddpm["train_images_per_s"]
    assert ddpm["sampling_s_2x2"] > 0 and result["arguments"]["dims"] == [8]
    if not any(name.startswith("library") for name in models):
        assert "pip install denoising-diffusion-pytorch" in completed.stdout
