"""eps_norms: the norms it reports along DDIM's path, checked with a stand-in network, and the script at a tiny size."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import helper_functions as hf
from eps_norms import eps_norms_along_ddim, mean_norm


def test_norms_along_the_path_with_a_stand_in_network():
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(1000))
    real_x0 = torch.linspace(-1, 1, 2 * 784).reshape(2, 1, 28, 28)
    rows = eps_norms_along_ddim(lambda x, t: 2 * x, schedule, real_x0, steps=3, seed=7)  # eps_theta(x_t) = 2 x_t
    assert [row["t"] for row in rows] == [999, 500, 0]
    generator = torch.Generator().manual_seed(7)
    x_T, noise = torch.randn(2, 1, 28, 28, generator=generator), torch.randn(2, 1, 28, 28, generator=generator)
    abar = schedule.alphas_cumprod[999]
    assert rows[0]["path"] == pytest.approx(2 * mean_norm(x_T), rel=1e-5)
    assert rows[0]["real"] == pytest.approx(2 * mean_norm(abar.sqrt() * real_x0 + (1 - abar).sqrt() * noise), rel=1e-5)
    assert rows[0]["noise"] == pytest.approx(mean_norm(noise), rel=1e-6)
    assert all(row["bf16_over_fp32"] == pytest.approx(1.0) for row in rows)  # no matrix product to round
    assert mean_norm(torch.full((3, 4), 2.0)) == pytest.approx(2.0)


def test_script_prints_one_row_per_step():
    completed = subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "eps_norms.py"), "--n", "4", "--steps", "3"],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows = [line.split() for line in completed.stdout.splitlines()[2:]]
    assert [int(row[0]) for row in rows] == [999, 500, 0]
    for _, path, real, ratio, noise, bf16 in (map(float, row) for row in rows):
        assert ratio == pytest.approx(path / real, abs=1e-3) and 0.9 < noise < 1.1 and 0.95 < bf16 < 1.05
