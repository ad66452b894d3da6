"""The DDPM notebook's training pieces (EMA, learning rate, batches, train_ddpm) and the fast paths: each fast path
computes what the plain path computes, within a tolerance."""

import math

import pytest
import torch

import helper_functions as hf
from notebook_code import notebook_classes


@pytest.fixture(scope="module")
def nb():
    return notebook_classes("DDPM.ipynb")


@pytest.fixture(scope="module")
def small_unet(nb):
    torch.manual_seed(0)
    return nb["Unet"](dim=8, dim_mults=(1, 2)).eval()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_bf16_autocast_model_matches_float32(small_unet):
    x, t = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)), torch.arange(0, 1000, 125)
    with torch.inference_mode():
        plain = small_unet(x, t)
        fast = hf.autocast_model(small_unet, "cpu")(x, t)
    assert fast.dtype == torch.float32 and fast.shape == plain.shape
    assert 0 < relative_error(fast, plain) < 3e-2  # bf16 keeps ~3 significant digits; it did change something


def test_channels_last_matches_the_default_layout(nb):
    torch.manual_seed(0)
    model = nb["Unet"](dim=8, dim_mults=(1, 2)).eval()
    x, t = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 10, 500, 999])
    with torch.inference_mode():
        plain = model(x, t)
        model.to(memory_format=torch.channels_last)
        fast = model(x.contiguous(memory_format=torch.channels_last), t)
    assert relative_error(fast, plain) < 1e-5


def test_sampling_with_the_bf16_model_stays_close_to_float32(small_unet):
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(1000))
    plain = hf.ddim_sample(small_unet, schedule, (4, 1, 28, 28), 10, generator=torch.Generator().manual_seed(0), progress=False)
    fast = hf.ddim_sample(hf.autocast_model(small_unet, "cpu"), schedule, (4, 1, 28, 28), 10,
                          generator=torch.Generator().manual_seed(0), progress=False)
    assert relative_error(fast, plain) < 5e-2


def test_q_sample_checks_values_on_the_cpu_only_and_without_reading_gpu_tensors(monkeypatch):
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(10))
    with pytest.raises(ValueError, match="0-based"):
        hf.q_sample(torch.zeros(2, 1, 4, 4), torch.tensor([0, 10]), schedule)
    # a tensor on another device is never asked for its values (that would be a host-device sync per step)
    t = torch.tensor([0, 9]).to("meta")
    hf.check_timesteps(t, 2, 10)


def test_ema_follows_its_formula(nb):
    model = torch.nn.Linear(3, 2)
    ema = nb["EMA"](model, decay=0.9, warmup=False)
    start = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for averaged, old, new in zip(ema.module.parameters(), start, model.parameters()):
        torch.testing.assert_close(averaged, 0.9 * old + 0.1 * new)  # theta_bar <- d theta_bar + (1 - d) theta
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="between 0 and 1"):
        nb["EMA"](model, decay=1.0)


def test_ema_warm_up_follows_min_of_decay_and_its_ramp(nb):
    model = torch.nn.Linear(1, 1, bias=False)
    ema = nb["EMA"](model, decay=0.999)
    decays = []
    for n in range(3000):
        decays.append(ema.current_decay())
        before = ema.module.weight.detach().clone()
        with torch.no_grad():
            model.weight.fill_(float(n))
        ema.update(model)
        if n in (0, 5, 2999):  # each update uses d_n = min(d, (1 + n) / (10 + n))
            d = min(0.999, (1 + n) / (10 + n))
            torch.testing.assert_close(ema.module.weight, d * before + (1 - d) * model.weight)
    assert decays[0] == pytest.approx(0.1) and decays[90] == pytest.approx(91 / 100) and decays[-1] == pytest.approx(3000 / 3009)
    ema.updates = 10_000  # past n = 8,991 the ramp exceeds d, and d itself is used
    assert ema.current_decay() == 0.999
    assert all(a <= b for a, b in zip(decays, decays[1:]))  # the average looks further back as the run grows


def test_ema_warm_up_forgets_the_initial_weights_of_a_short_run(nb):
    """After 150 updates towards 1 from 0, the plain average keeps 0.999^150 = 86% of the start, the warm-up one little."""
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    warm, plain = nb["EMA"](model, 0.999), nb["EMA"](model, 0.999, warmup=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(150):
        warm.update(model)
        plain.update(model)
    assert plain.module.weight.item() == pytest.approx(1 - 0.999**150, rel=1e-4)
    assert warm.module.weight.item() > 0.9


def test_learning_rate_warms_up_then_decays_to_zero(nb):
    lr = nb["learning_rate"]
    assert lr(0, 0.0, 1e-3, 200) == pytest.approx(1e-3 / 200)
    assert lr(199, 0.0, 1e-3, 200) == pytest.approx(1e-3)
    assert lr(1000, 0.5, 1e-3, 200) == pytest.approx(0.5e-3)
    assert lr(5000, 1.0, 1e-3, 200) == pytest.approx(0.0, abs=1e-12)
    assert lr(5000, 1.7, 1e-3, 200) == pytest.approx(0.0, abs=1e-12)  # past the end: stays at zero
    assert lr(0, 0.0, 1e-3, 0) == pytest.approx(1e-3)  # no warm-up: the peak at once
    assert lr(1000, 0.5, 1e-3, 0) == pytest.approx(0.5e-3)
    with pytest.raises(ValueError, match="warmup_steps"):
        lr(0, 0.0, 1e-3, -1)


def test_random_batches_cover_every_image_once_per_epoch(nb):
    data = torch.arange(10).float()[:, None]
    batches = nb["random_batches"](data, 3)
    epoch = torch.cat([next(batches) for _ in range(3)])  # 3 full batches; the 10th image waits for a later epoch
    assert len(set(epoch[:, 0].tolist())) == 9
    with pytest.raises(ValueError, match="batch_size"):
        next(nb["random_batches"](data, 11))


def test_train_ddpm_lowers_the_loss_and_updates_every_average(nb):
    torch.manual_seed(0)
    model = nb["Unet"](dim=8, dim_mults=(1, 2))
    emas = [nb["EMA"](model, d) for d in (0.9, 0.99)]
    before = [next(e.module.parameters()).detach().clone() for e in emas]
    images, _ = hf.load_mnist_subset()
    x0 = images[:64] * 2 - 1
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(1000))
    losses = nb["train_ddpm"](model, emas, optimizer, lambda x0: nb["ddpm_loss"](model, x0, schedule),
                              x0, batch_size=8, max_steps=30, peak_lr=2e-3,
                              warmup_steps=5, grad_clip=1.0)
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) / 10 < sum(losses[:5]) / 5
    assert optimizer.param_groups[0]["lr"] < 2e-3 * 0.01  # the cosine decay reached (almost) zero
    for ema, old in zip(emas, before):
        assert not torch.equal(next(ema.module.parameters()), old)


def test_dropout_acts_in_training_only_and_leaves_the_weights_alone(nb):
    torch.manual_seed(0)
    plain = nb["Unet"](dim=8, dim_mults=(1, 2))
    dropped = nb["Unet"](dim=8, dim_mults=(1, 2), dropout=0.3)
    # the same state dict (nn.Dropout has no weights): weights trained either way load into either model
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in dropped.state_dict().items()}
    dropped.load_state_dict(plain.state_dict())
    rates = [m.p for m in dropped.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(rates) == sum(isinstance(m, nb["ResnetBlock"]) for m in dropped.modules()) and set(rates) == {0.3}
    x, t = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 10, 500, 999])
    with torch.no_grad():
        assert torch.equal(dropped.eval()(x, t), plain.eval()(x, t))  # sampling (eval mode) never sees dropout
        dropped.train()
        first, second = dropped(x, t), dropped(x, t)
    assert relative_error(first, second) > 1e-3  # in training mode each call drops other activations
    assert relative_error(first, plain(x, t)) > 1e-3


def test_train_ddpm_learns_with_dropout(nb):
    torch.manual_seed(0)
    model = nb["Unet"](dim=8, dim_mults=(1, 2), dropout=0.1)
    images, _ = hf.load_mnist_subset()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(1000))
    losses = nb["train_ddpm"](model, [], optimizer, lambda x0: nb["ddpm_loss"](model, x0, schedule),
                              images[:32] * 2 - 1, batch_size=8, max_steps=40,
                              peak_lr=2e-3, warmup_steps=5, grad_clip=1.0)
    assert all(math.isfinite(v) for v in losses) and sum(losses[-10:]) / 10 < sum(losses[:5]) / 5


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_unet_refuses_a_dropout_outside_zero_to_one(nb, rate):
    with pytest.raises(ValueError, match=r"dropout .* must lie in \[0, 1\)"):
        nb["Unet"](dim=8, dim_mults=(1, 2), dropout=rate)


def test_train_ddpm_stops_at_its_time_budget(nb):
    model = nb["Unet"](dim=8, dim_mults=(1, 2))
    x0 = torch.randn(32, 1, 28, 28)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(1000))
    losses = nb["train_ddpm"](model, [], optimizer, lambda x0: nb["ddpm_loss"](model, x0, schedule),
                              x0, batch_size=8, max_steps=10**6, peak_lr=1e-3,
                              warmup_steps=1, grad_clip=1.0, max_seconds=0.0)
    assert losses == []


def test_train_ddpm_stops_with_a_message_when_the_loss_diverges(nb):
    model = nb["Unet"](dim=8, dim_mults=(1, 2))
    x0 = torch.full((16, 1, 28, 28), float("nan"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(1000))
    with pytest.raises(FloatingPointError, match="diverged"):
        nb["train_ddpm"](model, [], optimizer, lambda x0: nb["ddpm_loss"](model, x0, schedule),
                         x0, batch_size=8, max_steps=4, peak_lr=1e-3,
                         warmup_steps=1, grad_clip=1.0)


def test_weights_carry_their_metadata(tmp_path, small_unet):
    path = hf.save_weights(small_unet, tmp_path / "tiny_meta.pt", {"dim": 8}, metadata={"steps": 3, "losses": [0.5, 0.25]})
    assert hf.weights_metadata(path) == {"steps": 3, "losses": [0.5, 0.25]}


def test_sample_in_batches_concatenates_and_checks_its_arguments():
    sizes = []

    def sampler(size):
        sizes.append(size)
        return torch.full((size, 1, 2, 2), float(len(sizes)))

    out = hf.sample_in_batches(sampler, 5, 2)
    assert sizes == [2, 2, 1] and out.shape == (5, 1, 2, 2) and out[:, 0, 0, 0].tolist() == [1, 1, 2, 2, 3]
    with pytest.raises(ValueError, match="positive"):
        hf.sample_in_batches(sampler, 0, 2)


def test_batched_sampling_with_one_generator_is_reproducible(small_unet):
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(1000))

    def draw():
        generator = torch.Generator().manual_seed(0)
        return hf.sample_in_batches(lambda size: hf.ddim_sample(small_unet, schedule, (size, 1, 28, 28), 5, generator=generator,
                                                                progress=False), 5, 2)

    first, second = draw(), draw()
    assert torch.equal(first, second) and not torch.equal(first[0], first[2])  # same run twice; batches differ


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


def test_cuda_graphed_refuses_what_it_cannot_record():
    with pytest.raises(ValueError, match="CUDA device"):
        hf.cuda_graphed(lambda x: x * 2, torch.zeros(3))
    with pytest.raises(ValueError, match="CUDA device"):
        hf.graphed_model(lambda x, t: x)(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))


@needs_cuda
def test_graphed_model_gives_the_eager_outputs(nb):
    torch.manual_seed(0)
    model = nb["Unet"](dim=8, dim_mults=(1, 2)).cuda().eval()
    graphed = hf.graphed_model(model)
    with torch.inference_mode():
        for seed in range(3):  # the first call records, the next ones replay with new inputs
            x = torch.randn(6, 1, 28, 28, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
            t = torch.randint(0, 1000, (6,), device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
            assert relative_error(graphed(x, t), model(x, t)) < 1e-5
        other = graphed(torch.randn(3, 1, 28, 28, device="cuda"), torch.zeros(3, dtype=torch.long, device="cuda"))
        assert other.shape == (3, 1, 28, 28)  # a new batch shape gets its own recording


@needs_cuda
def test_cuda_graphed_draws_fresh_noise_and_checks_shapes():
    noisy = hf.cuda_graphed(lambda x: x + torch.randn_like(x), torch.zeros(1000, device="cuda"))
    first, second = noisy(torch.zeros(1000, device="cuda")), noisy(torch.zeros(1000, device="cuda"))
    assert not torch.equal(first, second) and 0.9 < first.std().item() < 1.1
    with pytest.raises(ValueError, match="recorded for"):
        noisy(torch.zeros(10, device="cuda"))


@needs_cuda
def test_graphed_gradient_steps_match_eager_ones(nb):
    """The same five Adam steps on the same batches, once eagerly and once through a recorded loss-and-gradient step."""
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(1000)).to("cuda")
    generator = torch.Generator("cuda").manual_seed(0)
    batches = [(torch.randn(8, 1, 28, 28, device="cuda", generator=generator), torch.randint(0, 1000, (8,), device="cuda", generator=generator),
                torch.randn(8, 1, 28, 28, device="cuda", generator=generator)) for _ in range(5)]
    final = []
    for graphed in (False, True):
        torch.manual_seed(0)
        model = nb["Unet"](dim=8, dim_mults=(1, 2)).cuda()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def loss_and_gradients(x0, t, eps):
            loss = torch.nn.functional.mse_loss(model(hf.q_sample(x0, t, schedule, eps=eps), t), eps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            return loss.detach()

        step = hf.cuda_graphed(loss_and_gradients, *batches[0]) if graphed else loss_and_gradients
        losses = []
        for batch in batches:
            losses.append(step(*batch).item())
            optimizer.step()
        final.append((losses, torch.cat([p.detach().flatten() for p in model.parameters()])))
    assert final[0][0] == pytest.approx(final[1][0], rel=1e-4)
    assert relative_error(final[1][1], final[0][1]) < 1e-4


@needs_cuda
@pytest.mark.parametrize("dropout", [0.0, 0.1])  # dropout draws its masks inside the recorded graph too
def test_train_ddpm_with_a_cuda_graph_learns_like_the_eager_loop(nb, dropout):
    images, _ = hf.load_mnist_subset()
    x0 = (images[:512] * 2 - 1).cuda()
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(1000)).to("cuda")
    curves = {}
    for graphed in (False, True):
        hf.seed_everything(0)
        model = nb["Unet"](dim=16, dim_mults=(1, 2), dropout=dropout).cuda()
        emas = [nb["EMA"](model, 0.99)]
        before = next(emas[0].module.parameters()).detach().clone()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        curves[graphed] = nb["train_ddpm"](model, emas, optimizer, lambda x0: nb["ddpm_loss"](model, x0, schedule),
                                           x0, batch_size=64, max_steps=300, peak_lr=1e-3,
                                           warmup_steps=20, grad_clip=1.0, cuda_graph=graphed)
        assert not torch.equal(next(emas[0].module.parameters()), before)
    for graphed, losses in curves.items():
        assert len(losses) == 300 and all(math.isfinite(v) for v in losses)
    eager_tail, graphed_tail = (sum(curves[g][-100:]) / 100 for g in (False, True))
    assert sum(curves[True][:20]) / 20 > 2 * graphed_tail  # it learns
    assert graphed_tail == pytest.approx(eager_tail, rel=0.15)  # and as well as the eager loop (other random draws)
