"""Unit tests of the DDPM maths in helper_functions.py: schedules, q_sample, p_sample, ddpm_sample, weights."""

import math
import sys

import pytest
import torch

import helper_functions as hf

T = 1000  # the paper's number of timesteps, as in the schedule fixture (conftest.py)


# ----------------------------------------------------------------------------- schedules


def test_linear_schedule_endpoints_and_dtype():
    betas = hf.linear_beta_schedule(T)
    assert betas.dtype == torch.float32 and betas.shape == (T,)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-6)
    assert torch.all(betas[1:] > betas[:-1])


def test_cosine_schedule_follows_its_definition():
    betas = hf.cosine_beta_schedule(T).double()
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    s = 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (1, 250, 500, 750):
        assert alphas_cumprod[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-5)
    assert betas.max().item() == pytest.approx(0.999)  # the clip at the last step


@pytest.mark.parametrize("bad", [dict(T=0), dict(T=10, beta_start=0.0), dict(T=10, beta_start=0.1, beta_end=0.01)])
def test_linear_schedule_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        hf.linear_beta_schedule(**bad)


def test_alphas_cumprod_is_the_running_product(schedule):
    running = 1.0
    for t in (0, 1, 2):
        running *= 1 - schedule.betas[t].double().item()
        assert schedule.alphas_cumprod[t].item() == pytest.approx(running, rel=1e-6)
    assert torch.allclose(schedule.alphas_cumprod, torch.cumprod(schedule.alphas.double(), 0).float(), rtol=1e-5)
    assert schedule.alphas_cumprod_prev[0] == 1.0
    assert torch.equal(schedule.alphas_cumprod_prev[1:], schedule.alphas_cumprod[:-1])


def test_posterior_variance_matches_its_definition(schedule):
    # the definition, in float64 from the paper's numbers (1 - alphas_cumprod_prev is tiny early on: float32 would not do)
    b = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    a = torch.cumprod(1 - b, 0)
    a_prev = torch.cat([torch.ones(1, dtype=torch.float64), a[:-1]])
    expected = b * (1 - a_prev) / (1 - a)
    assert torch.allclose(schedule.posterior_variance.double(), expected, rtol=1e-5)
    assert schedule.posterior_variance[0] == 0.0  # beta_tilde_1 = 0: alphas_cumprod_0 = 1
    assert torch.all(schedule.posterior_variance[1:] < schedule.betas[1:])


def test_schedule_stores_float32_and_moves(schedule):
    for name in schedule.names:
        assert getattr(schedule, name).dtype == torch.float32
    moved = hf.NoiseSchedule(hf.linear_beta_schedule(10)).to("cpu")
    assert moved.betas.device.type == "cpu" and moved.T == 10


def test_schedule_rejects_bad_betas():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        hf.NoiseSchedule(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        hf.NoiseSchedule(torch.ones(2, 2) * 0.1)


# ----------------------------------------------------------------------------- forward process


def test_sample_timesteps_cover_all_of_0_to_T_minus_1():
    t = hf.sample_timesteps(200_000, T, generator=torch.Generator().manual_seed(0))
    assert t.min() == 0 and t.max() == T - 1
    assert len(torch.unique(t)) == T


def test_q_sample_moments_match_the_closed_form(schedule):
    x0 = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)
    for t_value in (0, 100, 500, 999):
        n = 20_000
        t = torch.full((n,), t_value)
        torch.manual_seed(t_value)
        x_t = hf.q_sample(x0.expand(n, -1, -1, -1), t, schedule)
        mean, var = x_t.mean(0), x_t.var(0)
        abar = schedule.alphas_cumprod[t_value]
        assert torch.allclose(mean, abar.sqrt() * x0[0], atol=4 * math.sqrt((1 - abar) / n) + 1e-6)
        assert torch.allclose(var, torch.full_like(var, (1 - abar).item()), rtol=0.05, atol=1e-6)


def test_q_sample_with_given_noise_is_exact(schedule):
    x0, eps = torch.rand(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 10, 999])
    x_t = hf.q_sample(x0, t, schedule, eps=eps)
    for i in range(3):
        expected = schedule.sqrt_alphas_cumprod[t[i]] * x0[i] + schedule.sqrt_one_minus_alphas_cumprod[t[i]] * eps[i]
        assert torch.allclose(x_t[i], expected)


def test_q_sample_errors(schedule):
    x0 = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="0-based"):
        hf.q_sample(x0, torch.tensor([0, T]), schedule)
    with pytest.raises(ValueError, match="one timestep per image"):
        hf.q_sample(x0, torch.tensor([0]), schedule)
    with pytest.raises(ValueError, match="integer"):
        hf.q_sample(x0, torch.tensor([0.0, 1.0]), schedule)
    with pytest.raises(ValueError, match="eps shape"):
        hf.q_sample(x0, torch.tensor([0, 1]), schedule, eps=torch.randn(2, 1, 5, 5))


# ----------------------------------------------------------------------------- reverse process


def test_p_sample_at_t0_adds_no_noise(schedule):
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x = torch.randn(4, 1, 4, 4)
    first = hf.p_sample(model, x, 0, schedule)
    second = hf.p_sample(model, x, 0, schedule, variance="beta")
    assert torch.equal(first, second)
    assert torch.allclose(first, x / schedule.alphas[0].sqrt())


def test_p_sample_mean_is_the_posterior_mean_with_the_true_noise(schedule, true_noise_model):
    x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    t = 300
    eps = torch.randn_like(x0)
    x_t = hf.q_sample(x0, torch.full((2,), t), schedule, eps=eps)
    mean = hf.p_sample(true_noise_model(x0, schedule), x_t, t, schedule, z=torch.zeros_like(x0))
    posterior_mean = schedule.posterior_mean_coef1[t] * x0 + schedule.posterior_mean_coef2[t] * x_t
    assert torch.allclose(mean, posterior_mean, atol=1e-5)


def test_p_sample_with_the_true_noise_moves_toward_x0(schedule, true_noise_model):
    torch.manual_seed(0)
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    t = 50
    x_t = hf.q_sample(x0, torch.full((8,), t), schedule)
    x_prev = hf.p_sample(true_noise_model(x0, schedule), x_t, t, schedule)
    assert (x_prev - x0).pow(2).mean() < (x_t - x0).pow(2).mean()


def test_p_sample_noise_has_the_chosen_variance(schedule):
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x = torch.zeros(20_000, 1, 2, 2)
    t = 1
    for variance, expected in (("posterior", schedule.posterior_variance[t]), ("beta", schedule.betas[t])):
        torch.manual_seed(1)
        out = hf.p_sample(model, x, t, schedule, variance=variance)
        assert out.var().item() == pytest.approx(expected.item(), rel=0.03)
    torch.manual_seed(1)
    doubled = hf.p_sample(model, x, t, schedule, noise_scale=torch.full((20_000,), 2.0))
    assert doubled.var().item() == pytest.approx(4 * schedule.posterior_variance[t].item(), rel=0.03)


def test_p_sample_errors(schedule):
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match="variance must be one of"):
        hf.p_sample(model, torch.zeros(1, 1, 2, 2), 5, schedule, variance="learned")
    with pytest.raises(ValueError, match="0-based"):
        hf.p_sample(model, torch.zeros(1, 1, 2, 2), T, schedule)


def test_ddpm_sample_recovers_x0_with_the_true_noise(schedule, true_noise_model):
    x0 = (torch.rand(2, 1, 4, 4) > 0.5).float() * 2 - 1
    out, frames = hf.ddpm_sample(true_noise_model(x0, schedule), schedule, (2, 1, 4, 4),
                                 generator=torch.Generator().manual_seed(0), frames_at=[999, 0], progress=False)
    assert out.shape == (2, 1, 4, 4)
    assert sorted(frames) == [0, 999]
    assert torch.allclose(out, x0, atol=0.05)


def test_ddpm_sample_is_seeded_and_checks_frames(schedule):
    short = hf.NoiseSchedule(hf.linear_beta_schedule(10))
    model = lambda x, t: 0.1 * x  # noqa: E731
    a = hf.ddpm_sample(model, short, (2, 1, 3, 3), generator=torch.Generator().manual_seed(5), progress=False)
    b = hf.ddpm_sample(model, short, (2, 1, 3, 3), generator=torch.Generator().manual_seed(5), progress=False)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="frames_at"):
        hf.ddpm_sample(model, short, (1, 1, 3, 3), frames_at=[10], progress=False)


# ----------------------------------------------------------------------------- weights and GIFs


def test_weights_round_trip_and_config_check(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.GroupNorm(2, 4))
    config = {"dim": 4, "T": 1000}
    path = hf.save_weights(model, tmp_path / "tiny.pt", config)
    assert path == tmp_path / "tiny.pt"
    fresh = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.GroupNorm(2, 4))
    hf.load_weights(fresh, path, config)
    for key, value in model.state_dict().items():
        assert fresh.state_dict()[key].dtype == torch.float32
        assert torch.allclose(fresh.state_dict()[key], value, atol=1e-3, rtol=1e-3)  # stored in float16
    with pytest.raises(ValueError, match=r"dim: weights have 4, notebook has 8"):
        hf.load_weights(fresh, path, {"dim": 8, "T": 1000})
    with pytest.raises(FileNotFoundError, match="train the model first"):
        hf.load_weights(fresh, tmp_path / "missing.pt", config)


def test_shipped_files_are_written_only_by_a_maintainer_step(tmp_path):
    model = torch.nn.Linear(2, 2)
    before = hf.SHIPPED_WEIGHTS_PATH.read_bytes()
    with pytest.raises(PermissionError, match="shipped file"):
        hf.save_weights(model, hf.SHIPPED_WEIGHTS_PATH, {"dim": 2})
    with pytest.raises(PermissionError, match="shipped file"):
        hf.save_weights(model, hf.DATA_DIR / "a_new_file.pt", {"dim": 2})
    assert hf.SHIPPED_WEIGHTS_PATH.read_bytes() == before and not (hf.DATA_DIR / "a_new_file.pt").exists()
    assert hf.is_shipped_file(hf.SHIPPED_WEIGHTS_PATH) and not hf.is_shipped_file(tmp_path / "ddpm_mnist_ema.pt")


def test_run_folder_is_git_ignored_or_temporary():
    assert hf.run_folder(smoke=False) == hf.RUNS_DIR
    assert "runs/" in (hf.PROJECT_DIR / ".gitignore").read_text().split()
    assert not hf.is_shipped_file(hf.run_folder(smoke=True) / "x.pt") and hf.run_folder(smoke=True) != hf.RUNS_DIR


def test_show_source_displays_the_function_itself():
    code = hf.show_source(hf.q_sample)
    assert code.data.startswith("def q_sample(") and "sqrt_alphas_cumprod" in code.data
    assert "highlight" in code._repr_html_()
    both = hf.show_source(hf.Unet.forward, hf.EMA)
    assert "def forward(self, x, t, labels=None):" in both.data and "class EMA:" in both.data
    with pytest.raises(ValueError, match=r"at least one function or class"):
        hf.show_source()


def test_show_source_is_plain_text_without_ipython(monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython.display", None)  # as on a machine without Jupyter: the import fails
    text = hf.show_source(hf.q_sample)
    assert isinstance(text, str) and text.startswith("def q_sample(")


def test_save_gif_writes_all_frames(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(hf, "figure_folder", lambda smoke=None: tmp_path)
    frames = [torch.full((4, 1, 8, 8), v) for v in (-1.0, 0.0, 1.0)]
    path = hf.save_gif(frames, "tiny", nrow=2)
    with Image.open(path) as gif:
        assert gif.n_frames == 3
    with pytest.raises(ValueError):
        hf.save_gif([], "empty")
