"""The tuning script's own pieces: its fixed-noise fit and the names and learning rates of what it sweeps."""

import pytest
import torch

import helper_functions as hf
from notebook_code import notebook_classes
from tune import fixed_noise_loss, peak_learning_rate, setting_name


@pytest.fixture(scope="module")
def nb():
    return notebook_classes("DDPM.ipynb")


def test_tune_scores_the_fit_in_eval_mode_with_fixed_noise(nb):
    torch.manual_seed(0)
    model = nb["Unet"](dim=8, dim_mults=(1, 2), dropout=0.5)  # training mode, heavy dropout
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(1000))
    x0 = torch.rand(10, 1, 28, 28) * 2 - 1
    first = fixed_noise_loss(model, x0, schedule, seed=4, batch=3)
    assert model.training  # the mode it came in
    assert fixed_noise_loss(model, x0, schedule, seed=4, batch=10) == pytest.approx(first, rel=1e-5)  # no dropout noise
    generator = torch.Generator().manual_seed(4)
    t = torch.randint(0, 1000, (10,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    with torch.no_grad():
        by_hand = torch.nn.functional.mse_loss(model.eval()(hf.q_sample(x0, t, schedule, eps=eps), t), eps).item()
    assert first == pytest.approx(by_hand, rel=1e-5)
    assert fixed_noise_loss(model, x0, schedule, seed=5) != pytest.approx(first, rel=1e-3)  # the seed picks t and eps


def test_tune_scales_the_learning_rate_with_the_batch_and_names_what_it_sweeps():
    assert peak_learning_rate(1e-3, 32, None) == 1e-3  # as given
    assert peak_learning_rate(1e-3, 32, 128) == pytest.approx(5e-4)  # the notebook's sqrt(batch / 128)
    assert peak_learning_rate(1e-3, 128, 128) == pytest.approx(1e-3)
    assert setting_name(32, 5e-4, 0.0, 32, 200, set()) == "dim 32, lr 0.0005"
    assert setting_name(32, 5e-4, 0.1, 64, 0, {"batch", "warmup"}) == "dim 32, lr 0.0005, dropout 0.1, batch 64, warm-up 0"
