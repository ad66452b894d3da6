"""Shared set-up of the unit tests: the paper's schedule, and an oracle eps-model that knows x0."""

import pytest
import torch

import helper_functions as hf

T = 1000


class TrueNoiseModel(torch.nn.Module):
    """An oracle eps_theta that knows x0 and so returns exactly the noise in x_t."""

    def __init__(self, x0, schedule):
        super().__init__()
        self.x0, self.schedule = x0, schedule

    def forward(self, x_t, t):
        a = hf.extract(self.schedule.sqrt_alphas_cumprod, t, x_t.shape)
        s = hf.extract(self.schedule.sqrt_one_minus_alphas_cumprod, t, x_t.shape)
        return (x_t - a * self.x0) / s


@pytest.fixture(scope="session")
def schedule():
    """DDPM's linear schedule over T = 1000 steps, as the notebook builds it."""
    return hf.NoiseSchedule(hf.linear_beta_schedule(T))


@pytest.fixture(scope="session")
def true_noise_model():
    """TrueNoiseModel(x0, schedule): a factory, so each test picks its own x0."""
    return TrueNoiseModel
