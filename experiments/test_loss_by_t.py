"""experiments/loss_by_t.py and guided.py's --relative-loss, on a stand-in network whose error is known exactly: one that
predicts the noise as x_t / sqrt(1 - abar_t), wrong by sqrt(abar_t / (1 - abar_t)) x0."""

import pytest
import torch

import guided
import loss_by_t
from guided import hf
from notebook_code import notebook_classes


class KnownError(torch.nn.Module):
    """A stand-in conditional network: label `helped` halves its error, every other label (no label too) leaves it."""
    null_label = 10

    def __init__(self, schedule, helped=None):
        super().__init__()
        self.schedule, self.helped = schedule, helped

    def forward(self, x_t, t, c):
        sigma = self.schedule.sqrt_one_minus_alphas_cumprod[t].float().view(-1, 1, 1, 1)
        eps = x_t / sigma
        if self.helped is None:
            return eps
        # a better guess where the label is `helped`: halfway to the true noise, (x_t - sqrt(abar) x0) / sigma, with x0 = 1
        truth = (x_t - self.schedule.sqrt_alphas_cumprod[t].float().view(-1, 1, 1, 1)) / sigma
        return torch.where((c == self.helped).view(-1, 1, 1, 1), (eps + truth) / 2, eps)


def snr(schedule, t):
    abar = schedule.alphas_cumprod[t]
    return (abar / (1 - abar)).item()


@pytest.fixture
def schedule():
    return hf.NoiseSchedule(hf.linear_beta_schedule(1000, 1e-4, 0.02))


def test_the_label_free_loss_is_exact_on_the_grid_and_log_linear_between(schedule):
    x0 = torch.ones(4, 1, 6, 6)  # the error is then sqrt(abar / (1 - abar)) at every pixel
    by_t = guided.label_free_loss_by_t(KnownError(schedule), x0, schedule, every=100)
    assert by_t.shape == (1000,)
    for t in (0, 100, 500, 900, 999):
        assert by_t[t].item() == pytest.approx(snr(schedule, t), rel=1e-3)
    assert by_t[150].item() == pytest.approx((snr(schedule, 100) * snr(schedule, 200)) ** 0.5, rel=1e-3)  # the geometric mean
    assert (by_t[1:] < by_t[:-1]).all()  # falls with t, as DDPM's loss does


def test_the_relative_loss_is_one_where_the_label_adds_nothing_and_a_quarter_where_it_halves_the_error(schedule):
    x0, labels = torch.ones(64, 1, 6, 6), torch.full((64,), 3)
    by_t = torch.tensor([snr(schedule, t) for t in range(1000)])
    keep = lambda labels, p, null: labels  # noqa: E731  no label dropped
    relative = guided.windowed_guided_loss(KnownError(schedule), x0, labels, schedule, 0.0, 200, 1000, keep, by_t)
    assert relative.item() == pytest.approx(1.0, rel=1e-4)
    relative = guided.windowed_guided_loss(KnownError(schedule, helped=3), x0, labels, schedule, 0.0, 200, 1000, keep, by_t)
    assert relative.item() == pytest.approx(0.25, rel=1e-4)
    with pytest.raises(ValueError, match="need 0 <= t_min < t_max <= 1000, got t_min 1000"):
        guided.windowed_guided_loss(KnownError(schedule), x0, labels, schedule, 0.0, 1000, 1000, keep, by_t)


def test_the_windowed_loss_is_the_notebooks_loss_from_t_min_on_and_draws_t_only_inside_its_window(schedule):
    nb = notebook_classes("guided_diffusion.ipynb")
    model = KnownError(schedule, helped=3)
    x0, labels = torch.ones(64, 1, 6, 6), torch.arange(64) % 10
    torch.manual_seed(0)
    notebooks = nb["guided_loss"](model, x0, labels, schedule, 0.2, 200)
    torch.manual_seed(0)
    windowed = guided.windowed_guided_loss(model, x0, labels, schedule, 0.2, 200, 1000, nb["drop_labels"])
    assert windowed.item() == pytest.approx(notebooks.item(), rel=1e-6)
    drawn = []
    recording = lambda x_t, t, c: drawn.append(t) or model(x_t, t, c)  # noqa: E731
    recording.null_label = 10
    for _ in range(20):
        guided.windowed_guided_loss(recording, x0, labels, schedule, 0.2, 200, 500, nb["drop_labels"])
    drawn = torch.cat(drawn)
    assert drawn.min() >= 200 and drawn.max() <= 499 and drawn.min() < 210 and drawn.max() > 490
    with pytest.raises(ValueError, match="need 0 <= t_min < t_max <= 1000, got t_min 500 and t_max 500"):
        guided.windowed_guided_loss(model, x0, labels, schedule, 0.2, 500, 500, nb["drop_labels"])


def test_loss_with_and_without_label_compares_on_the_same_noise(schedule):
    x0, labels = torch.ones(8, 1, 6, 6), torch.tensor([3] * 4 + [5] * 4)
    results = loss_by_t.loss_with_and_without_label(KnownError(schedule, helped=3), x0, labels, schedule, (0, 500, 999))
    for t, row in results.items():
        assert row["without_label"] == pytest.approx(snr(schedule, t), rel=1e-3)
        assert row["ratio"] == pytest.approx((4 * 0.25 + 4) / 8, rel=1e-3)  # half the digits helped: their error a quarter
    table = loss_by_t.markdown_table(results).splitlines()
    assert table[0] == "| t | 0 | 500 | 999 |" and table[2].startswith("| L with label / L without | 0.6")
    with pytest.raises(ValueError, match="8 images but 3 labels"):
        loss_by_t.loss_with_and_without_label(KnownError(schedule), x0, labels[:3], schedule, (0,))
    with pytest.raises(ValueError, match="t must lie in 0 ... 999"):
        loss_by_t.loss_with_and_without_label(KnownError(schedule), x0, labels, schedule, (1000,))


@pytest.mark.parametrize("arguments, message", [(["--images", "0"], "--images must be at least 1"),
                                                (["--t", "1000"], "--t must lie in 0 ... 999"),
                                                (["--weights", "nowhere.pt"], "--weights: no file nowhere.pt")])
def test_bad_arguments_are_refused_before_any_work(tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        loss_by_t.main([*arguments, "--output-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err and not (tmp_path / "run").exists()
