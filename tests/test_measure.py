"""Unit tests of DDIM and the sample-quality measure in helper_functions.py."""

import math

import pytest
import torch

import helper_functions as hf



# ----------------------------------------------------------------------------- DDIM


def test_ddim_with_the_true_noise_recovers_x0_in_few_steps(schedule, true_noise_model):
    x0 = (torch.rand(2, 1, 4, 4) > 0.5).float() * 2 - 1
    for steps in (1000, 50, 10):
        out = hf.ddim_sample(true_noise_model(x0, schedule), schedule, (2, 1, 4, 4), steps,
                             generator=torch.Generator().manual_seed(0), progress=False)
        assert torch.allclose(out, x0, atol=1e-3), steps


def test_ddim_eta_zero_is_deterministic_and_eta_adds_noise(schedule):
    model = lambda x, t: 0.5 * x  # noqa: E731
    runs = [hf.ddim_sample(model, schedule, (2, 1, 3, 3), 20, eta=eta, generator=torch.Generator().manual_seed(seed), progress=False)
            for eta, seed in ((0.0, 1), (0.0, 1), (1.0, 1), (1.0, 2))]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[2], runs[3])


@pytest.mark.parametrize("steps", [1000, 50, 20])
def test_ddim_eta_one_is_ancestral_ddpm_on_the_same_steps(schedule, steps):
    """eta = 1 gives sigma^2 = beta_tilde of the (respaced) steps and the posterior mean: DDIM becomes Algorithm 2.

    Both samplers draw x_T and then one z per step except the last from the generator, so the same seed gives the
    same images, up to float32 rounding.
    """
    def model(x, t):  # any eps-model will do: a smooth function of x and t
        return 0.3 * x + 0.01 * t.view(-1, 1, 1, 1).float().sqrt()

    shape = (3, 1, 4, 4)
    ddim = hf.ddim_sample(model, schedule, shape, steps, eta=1.0, generator=torch.Generator().manual_seed(5), progress=False)
    short_model, short_schedule = hf.respaced(model, schedule, steps) if steps < schedule.T else (model, schedule)
    ancestral = hf.ddpm_sample(short_model, short_schedule, shape, generator=torch.Generator().manual_seed(5), progress=False)
    assert torch.allclose(ddim, ancestral, rtol=1e-4, atol=1e-4)
    half_way = hf.ddim_sample(model, schedule, shape, steps, eta=0.5, generator=torch.Generator().manual_seed(5), progress=False)
    assert not torch.allclose(half_way, ancestral, rtol=1e-2, atol=1e-2)


def test_ddim_errors(schedule):
    model = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="steps must lie in 1 ... 1000"):
        hf.ddim_sample(model, schedule, (1, 1, 2, 2), 0)
    with pytest.raises(ValueError, match="eta must be non-negative"):
        hf.ddim_sample(model, schedule, (1, 1, 2, 2), 10, eta=-1)


# ----------------------------------------------------------------------------- Frechet distance


def test_frechet_distance_of_gaussians_matches_the_formula():
    torch.manual_seed(0)
    n, d = 200_000, 3
    a = torch.randn(n, d, dtype=torch.float64)
    b = torch.randn(n, d, dtype=torch.float64) * 2 + torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    # N(0, I) vs N(m, 4I): |m|^2 + d (1 + 4 - 2 * 2) = 1 + 3
    assert hf.frechet_distance(a, b) == pytest.approx(4.0, abs=0.05)
    assert hf.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_rejects_mismatched_features():
    with pytest.raises(ValueError, match="same size"):
        hf.frechet_distance(torch.randn(10, 3), torch.randn(10, 4))


def test_nearest_distances_can_exclude_self():
    points = torch.tensor([[0.0], [1.0], [3.0]]).view(3, 1, 1, 1)
    assert torch.allclose(hf.nearest_distances(points, points), torch.zeros(3))
    assert torch.allclose(hf.nearest_distances(points, points, exclude_self=True), torch.tensor([1.0, 1.0, 2.0]))


# ----------------------------------------------------------------------------- the shipped classifier and the measure


def test_split_held_out_is_class_balanced_and_disjoint():
    labels = torch.arange(10).repeat_interleave(20)
    train, held = hf.split_held_out(labels, per_class=5)
    assert len(held) == 50 and len(train) == 150
    assert torch.equal(torch.bincount(labels[held]), torch.full((10,), 5))
    assert not set(train.tolist()) & set(held.tolist())
    with pytest.raises(ValueError, match="fewer than"):
        hf.split_held_out(labels, per_class=20)


def test_real_digits_score_far_better_than_noise(reference):
    scores = hf.reference_scores(reference, 1000)
    real, noise = scores["real"], scores["noise"]
    assert real["classifier_fd"] < 0.1 * noise["classifier_fd"]
    assert real["confidence"] > 0.95 and real["class_spread"] > 0.99 and noise["class_spread"] < 0.2
    assert 0.01 < real["copy_fraction"] < 0.1 and noise["copy_fraction"] == 0.0  # about copy_quantile = 0.05


def test_the_floor_is_the_mean_of_several_draws_with_their_spread(reference):
    one = [hf.reference_scores(reference, 300, seed=seed, draws=1)["real"] for seed in (0, 1)]
    assert one[0]["classifier_fd"] != one[1]["classifier_fd"] and one[0]["classifier_fd_sd"] == 0.0
    floor = hf.reference_scores(reference, 300, seed=0, draws=4)["real"]
    generator = torch.Generator().manual_seed(0)
    draws = [reference.holdout_images[torch.randperm(len(reference.holdout_images), generator=generator)[:300]] for _ in range(4)]
    fds = torch.tensor([hf.sample_quality(d, reference, value_range=(0, 1), real_digits=True)["classifier_fd"] for d in draws])
    assert fds[0].item() == pytest.approx(one[0]["classifier_fd"])
    assert floor["classifier_fd"] == pytest.approx(fds.mean().item()) and floor["classifier_fd_sd"] == pytest.approx(fds.std().item())
    assert floor["draws"] == 4 and floor["n"] == 300 and floor["classifier_fd_sd"] > 0
    assert hf.reference_scores(reference, 300, seed=0, draws=4)["real"] == floor  # seeded
    assert "mean of 4 draws, FD sd" in hf.format_quality("floor", floor)
    assert "draws" not in hf.format_quality("one draw", one[0])
    beside = hf.format_quality("one draw", one[0], floor)  # a sampler's line ends with the floor at the same n
    assert beside.endswith(f"floor {floor['classifier_fd']:.2f} ± {floor['classifier_fd_sd']:.2f}")
    with pytest.raises(ValueError, match="an FD depends on n"):
        hf.format_quality("other n", {**one[0], "n": 200}, floor)
    with pytest.raises(ValueError, match="draws must be at least 1"):
        hf.reference_scores(reference, 300, draws=0)


def test_copying_the_training_set_is_detected(reference):
    copies = reference.training_images[:200]
    scores = hf.sample_quality(copies, reference, value_range=(0, 1))
    assert scores["copy_fraction"] == 1.0


def test_sample_quality_checks_its_input(reference):
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        hf.sample_quality(torch.zeros(20, 1, 32, 32), reference)
    with pytest.raises(ValueError, match="at least 2"):
        hf.sample_quality(torch.zeros(1, 1, 28, 28), reference)


def test_score_sampler_draws_n_in_batches_from_one_seeded_generator(reference):
    sizes = []

    def sampler(size, generator):  # real digits picked by the generator, stretched to [-2, 2]
        sizes.append(size)
        picks = torch.randint(len(reference.holdout_images), (size,), generator=generator)
        return reference.holdout_images[picks] * 4 - 2

    scores, seconds = hf.score_sampler(sampler, reference, n=250, batch_size=100, seed=3)
    assert sizes == [100, 100, 50] and seconds >= 0 and scores["n"] == 250
    generator = torch.Generator().manual_seed(3)
    expected = torch.cat([reference.holdout_images[torch.randint(len(reference.holdout_images), (size,), generator=generator)]
                          for size in (100, 100, 50)])
    assert scores == hf.sample_quality((expected * 4 - 2).clamp(-1, 1), reference)  # clamped to [-1, 1] first
    assert hf.score_sampler(sampler, reference, 250, 100, seed=3)[0] == scores       # seeded
    assert hf.score_sampler(sampler, reference, 250, 100, seed=4)[0] != scores
