"""Unit tests of helper_functions.py: setup, data, noising, plotting and the toy sampler."""

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import helper_functions as hf  # noqa: E402


# ----------------------------------------------------------------------------- setup


def test_smoke_flag_reads_the_environment():
    assert hf.is_smoke_test({"SMOKE_TEST": "1"})
    assert hf.is_smoke_test({"CI": "true"})
    assert not hf.is_smoke_test({})
    assert not hf.is_smoke_test({"SMOKE_TEST": "0"})


def test_choose_device_prints_its_choice(capsys):
    device = hf.choose_device()
    assert isinstance(device, torch.device)
    assert capsys.readouterr().out.strip() == f"Using device: {device}"


def test_seed_everything_repeats_draws():
    hf.seed_everything(3)
    first = torch.rand(5)
    hf.seed_everything(3)
    assert torch.equal(first, torch.rand(5))


# ----------------------------------------------------------------------------- data


def test_forced_subset_is_the_shipped_digits(capsys):
    images, labels = hf.load_dataset("mnist", force_subset=True)
    assert images.shape == (5000, 1, 28, 28) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() == 1.0
    assert torch.equal(torch.bincount(labels), torch.full((10,), 500))
    assert "shipped 5,000-digit MNIST subset" in capsys.readouterr().out


def test_environment_variable_forces_the_subset(monkeypatch, capsys):
    monkeypatch.setenv(hf.OFFLINE_DATA_ENV, "1")
    monkeypatch.setattr(hf, "_host_reachable", lambda *a, **k: pytest.fail("network touched"))
    images, _ = hf.load_dataset("mnist")
    assert len(images) == 5000
    assert hf.OFFLINE_DATA_ENV in capsys.readouterr().out


def test_offline_fallback_is_quick_and_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(hf.OFFLINE_DATA_ENV, raising=False)
    monkeypatch.setattr(hf, "_host_reachable", lambda url, timeout: False)
    start = time.perf_counter()
    images, _ = hf.load_dataset("mnist", root=tmp_path)
    assert time.perf_counter() - start < 5
    assert len(images) == 5000
    assert "no network" in capsys.readouterr().out


def test_unreachable_host_answers_within_the_timeout():
    start = time.perf_counter()
    assert not hf._host_reachable("http://127.0.0.1:9/", timeout=1.0)  # port 9 (discard) is closed here
    assert time.perf_counter() - start < 2


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown data set 'cifar10'.*fashion_mnist.*mnist"):
        hf.load_dataset("cifar10", force_subset=True)


def test_fashion_mnist_has_no_offline_copy():
    with pytest.raises(RuntimeError, match="not shipped"):
        hf.load_dataset("fashion_mnist", force_subset=True)


def test_take_subset_is_seeded_and_bounded():
    images, labels = torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10)
    a, la = hf.take_subset(images, labels, 4, seed=1)
    b, _ = hf.take_subset(images, labels, 4, seed=1)
    assert a.shape == (4, 1, 1, 1) and torch.equal(a, b)
    assert torch.equal(a.flatten().long(), la)  # images and labels stay paired
    assert len(hf.take_subset(images, labels, 50)[0]) == 10
    with pytest.raises(ValueError):
        hf.take_subset(images, labels, 0)


# ----------------------------------------------------------------------------- noising


def test_corrupt_endpoints_are_exact():
    x, noise = torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8)
    assert torch.equal(hf.corrupt(x, torch.zeros(3), noise), x)
    assert torch.equal(hf.corrupt(x, torch.ones(3), noise), noise)


def test_corrupt_uses_one_amount_per_image():
    x, noise = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    out = hf.corrupt(x, torch.tensor([0.25, 0.75]), noise)
    assert torch.allclose(out[0], torch.full((1, 4, 4), 0.25))
    assert torch.allclose(out[1], torch.full((1, 4, 4), 0.75))


def test_corrupt_default_noise_is_uniform_on_unit_interval():
    torch.manual_seed(0)
    pure_noise = hf.corrupt(torch.zeros(64, 1, 28, 28), 1.0)
    assert pure_noise.min() >= 0 and pure_noise.max() <= 1
    assert abs(pure_noise.mean().item() - 0.5) < 0.01
    assert abs(pure_noise.var().item() - 1 / 12) < 0.005


@pytest.mark.parametrize("bad_amount", [torch.tensor([-0.1, 0.5]), torch.tensor([0.5, 1.2])])
def test_corrupt_rejects_amounts_outside_unit_interval(bad_amount):
    with pytest.raises(ValueError, match=r"amount must lie in \[0, 1\]"):
        hf.corrupt(torch.rand(2, 1, 4, 4), bad_amount)


def test_corrupt_rejects_shape_mismatches():
    with pytest.raises(ValueError, match="one value per image"):
        hf.corrupt(torch.rand(2, 1, 4, 4), torch.rand(3))
    with pytest.raises(ValueError, match="noise shape"):
        hf.corrupt(torch.rand(2, 1, 4, 4), torch.rand(2), noise=torch.rand(2, 1, 5, 5))


# ----------------------------------------------------------------------------- plotting


def test_save_figure_in_smoke_mode_leaves_data_untouched():
    before = {p.name: p.stat().st_mtime_ns for p in hf.DATA_DIR.iterdir()}
    fig, ax = plt.subplots()
    hf.show_images(torch.rand(4, 1, 28, 28), ax=ax, nrow=4)
    path = hf.save_figure(fig, "unit_test_figure", smoke=True)
    plt.close(fig)
    assert path.exists() and path.parent != hf.DATA_DIR
    assert {p.name: p.stat().st_mtime_ns for p in hf.DATA_DIR.iterdir()} == before


def test_save_figure_full_mode_targets_data_folder():
    assert hf.figure_folder(smoke=False) == hf.DATA_DIR


@pytest.mark.parametrize("name", ["", "data/x", "x.png"])
def test_save_figure_rejects_paths_and_extensions(name):
    fig = plt.figure()
    with pytest.raises(ValueError, match="bare file stem"):
        hf.save_figure(fig, name, smoke=True)
    plt.close(fig)


def test_show_images_needs_a_batch():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        hf.show_images(torch.rand(28, 28))


# ----------------------------------------------------------------------------- toy sampler


class HalfModel(torch.nn.Module):
    """A stand-in denoiser whose prediction is always 0.5 everywhere."""

    def forward(self, x):
        return torch.full_like(x, 0.5)


def test_toy_sampler_keeps_one_history_entry_per_step():
    final, history = hf.toy_sample(HalfModel(), 5, (3, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    assert final.shape == (3, 1, 8, 8)
    assert len(history["inputs"]) == len(history["predictions"]) == 5


def test_toy_sampler_last_step_returns_the_prediction():
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    final, history = hf.toy_sample(model, 4, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(final, history["predictions"][-1])


def test_toy_sampler_first_step_moves_one_nth_of_the_way():
    final, history = hf.toy_sample(HalfModel(), 4, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    z0 = history["inputs"][0]
    assert torch.allclose(history["inputs"][1], z0 * 0.75 + 0.5 * 0.25)
    assert torch.allclose(final, torch.full_like(final, 0.5))


def test_toy_sampler_rejects_zero_steps():
    with pytest.raises(ValueError, match="steps must be at least 1"):
        hf.toy_sample(HalfModel(), 0, (1, 1, 8, 8))
