"""Classifier-free guidance (guided_diffusion.ipynb): the class-conditional U-Net, label dropout, the guided noise
prediction against its definition, the errors for bad labels, the conditional measure and the shipped weights."""

import math

import pytest
import torch

import helper_functions as hf
from notebook_code import notebook_classes, notebook_settings, notebook_weights_config

SETTINGS = notebook_settings("guided_diffusion.ipynb")
NULL = SETTINGS["NUM_CLASSES"]  # the "no label" label
WEIGHTS = hf.SHIPPED_GUIDED_WEIGHTS_PATH
CONFIG = notebook_weights_config("DDPM.ipynb") | {"num_classes": SETTINGS["NUM_CLASSES"], "p_uncond": SETTINGS["P_UNCOND"]}


@pytest.fixture(scope="module")
def nb():
    return notebook_classes("guided_diffusion.ipynb")


def small_conditional_unet(seed=0):
    """A tiny class-conditional U-Net whose class vectors and label layers are random (not the zeros they start with)."""
    torch.manual_seed(seed)
    model = hf.Unet(dim=8, dim_mults=(1, 2), num_classes=10).eval()
    for name, parameter in model.named_parameters():
        if name.startswith("class_embedding") or ".label_mlp." in name:
            torch.nn.init.normal_(parameter, std=0.5)
    return model


def known_network(x, t, labels):
    """eps(c) = x + c for a label c and eps(no label) = -x: outputs known in closed form."""
    return torch.where((labels == NULL)[:, None, None, None], -x, x + labels[:, None, None, None].float())


@pytest.mark.parametrize("p_uncond", [0.0, 0.1, 0.2, 1.0])
def test_label_dropout_happens_at_the_configured_rate(nb, p_uncond):
    labels = torch.arange(10).repeat(20_000)
    dropped = nb["drop_labels"](labels, p_uncond, NULL, torch.Generator().manual_seed(1))
    share = (dropped == NULL).float().mean().item()
    assert abs(share - p_uncond) < 0.005  # 200,000 draws: the standard error is below 0.001
    kept = dropped != NULL
    assert torch.equal(dropped[kept], labels[kept])  # a label is dropped or left as it was, never changed


def test_label_dropout_refuses_a_rate_outside_zero_to_one(nb):
    with pytest.raises(ValueError, match=r"p_uncond is a probability"):
        nb["drop_labels"](torch.zeros(4, dtype=torch.long), 1.5, NULL)


class RecordingNetwork(torch.nn.Module):
    """Predicts zero noise and records the (t, labels) of every call."""
    null_label = NULL

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, labels):
        self.calls.append((t, labels))
        return torch.zeros_like(x)


def test_the_training_loss_shows_the_network_dropped_labels(nb, schedule):
    network = RecordingNetwork()
    torch.manual_seed(0)
    x0 = torch.zeros(10_000, 1, 4, 4)
    loss = nb["guided_loss"](network, x0, torch.full((10_000,), 3), schedule, 0.2)
    _, seen = network.calls[0]
    assert abs((seen == NULL).float().mean().item() - 0.2) < 0.02 and set(seen.tolist()) == {3, NULL}
    assert loss.item() == pytest.approx(1.0, abs=0.02)  # predicting zero noise scores E[eps^2] = 1


def test_the_training_loss_draws_t_from_t_min_on(nb, schedule):
    network = RecordingNetwork()
    torch.manual_seed(0)
    nb["guided_loss"](network, torch.zeros(20_000, 1, 2, 2), torch.full((20_000,), 3), schedule, 0.2, t_min=500)
    seen, _ = network.calls[0]
    assert seen.min() == 500 and seen.max() == schedule.T - 1  # all of T_MIN ... T-1, nothing below
    assert abs(seen.float().mean().item() - (500 + schedule.T - 1) / 2) < 5
    for bad in (-1, schedule.T):
        with pytest.raises(ValueError, match=r"t_min must lie in 0 \.\.\. 999"):
            nb["guided_loss"](network, torch.zeros(4, 1, 2, 2), torch.full((4,), 3), schedule, 0.2, t_min=bad)


def label_layer_names(model):
    """The names of every ResNet block's label layer (label embedding -> a scale and a shift added to the time's)."""
    return [name for name, _ in model.named_parameters() if ".label_mlp." in name]


def test_only_conditioning_freezes_the_rest_so_a_step_moves_only_the_label_path(nb):
    model = hf.Unet(dim=8, dim_mults=(1, 2), num_classes=10)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    groups = nb["only_conditioning"](model, 1e-2, 1e-3)
    assert [group["peak_lr"] for group in groups] == [1e-2, 1e-3] and groups[0]["params"] == [model.class_embedding.weight]
    label_layers = label_layer_names(model)
    assert len(label_layers) == sum(1 for m in model.modules() if isinstance(m, hf.ResnetBlock))  # one weight each, no bias
    assert [name for name, q in model.named_parameters() if q.requires_grad] == ["class_embedding.weight"] + label_layers
    assert sum(q.numel() for q in groups[1]["params"]) == sum(dict(model.named_parameters())[n].numel() for n in label_layers)
    optimizer = torch.optim.Adam(groups, lr=1e-2)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 100, 500, 900])
    for _ in range(2):  # the label layers start at zero, so the class vectors get a gradient from the second step on
        optimizer.zero_grad()
        model(x, t, torch.tensor([1, 2, 3, 10])).pow(2).mean().backward()
        optimizer.step()
    changed = [name for name, value in model.state_dict().items() if not torch.equal(value, before[name])]
    assert set(changed) == {"class_embedding.weight", *label_layers}  # all of DDPM's weights stay as they were
    rows = (model.class_embedding.weight != 0).any(dim=1).nonzero().flatten().tolist()
    assert rows == [1, 2, 3]  # only the labels in the batch moved; "no label" stays at zero


def test_each_parameter_group_follows_the_schedule_to_its_own_peak():
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam([{"params": [model.weight], "peak_lr": 1e-2}, {"params": [model.bias]}], lr=1.0)
    seen = []
    original_step = optimizer.step

    def recording_step():
        seen.append([group["lr"] for group in optimizer.param_groups])
        original_step()

    optimizer.step = recording_step
    data = torch.randn(8, 2)
    hf.train_ddpm(model, [], optimizer, lambda x: model(x).pow(2).mean(), data, 4, max_steps=4, peak_lr=1e-3,
                  warmup_steps=2, grad_clip=1.0)
    assert len(seen) == 4
    for own, shared in seen:  # the same warm-up and cosine factor, two peaks
        assert own == pytest.approx(10 * shared)
    assert seen[1][1] == pytest.approx(hf.learning_rate(1, 1 / 4, 1e-3, 2))


def test_with_w_zero_the_guided_eps_is_the_conditional_eps(nb):
    model = small_conditional_unet()
    x, t, labels = torch.randn(6, 1, 8, 8), torch.tensor([0, 10, 200, 500, 800, 999]), torch.tensor([0, 3, 5, 7, 9, 2])
    with torch.no_grad():
        conditional = model(x, t, labels)
        assert torch.equal(nb["guided_eps"](model, labels, 0.0, NULL)(x, t), conditional)
        # w = 0 given per image takes the batched path, whose unconditional half then weighs nothing
        assert torch.allclose(nb["guided_eps"](model, labels, torch.zeros(6), NULL)(x, t), conditional, atol=1e-5)
        assert not torch.allclose(model(x, t, torch.full((6,), NULL)), conditional, atol=1e-3)  # the labels matter


def test_below_t_min_the_guided_eps_gives_no_label(nb):
    model = small_conditional_unet()
    x, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 5, 7])
    null = torch.full((4,), NULL)
    with torch.no_grad():
        for w in (0.0, 3.0):
            eps_tilde = nb["guided_eps"](model, labels, w, NULL, t_min=500)
            low, high = torch.full((4,), 499), torch.full((4,), 500)
            assert torch.allclose(eps_tilde(x, low), model(x, low, null), atol=1e-5)  # below t_min: eps(no label)
            assert torch.allclose(eps_tilde(x, high), nb["guided_eps"](model, labels, w, NULL)(x, high), atol=1e-5)
            mixed = torch.tensor([499, 500, 10, 900])  # one timestep per image: each image on its own side
            expected = torch.where((mixed >= 500)[:, None, None, None], nb["guided_eps"](model, labels, w, NULL)(x, mixed),
                                   model(x, mixed, null))
            assert torch.allclose(eps_tilde(x, mixed), expected, atol=1e-5)


@pytest.mark.parametrize("w", [0.5, 1.0, 3.0, 7.0])
def test_the_guided_eps_against_eq_6_and_the_guidance_scale_form(nb, w):
    x, t, labels = torch.randn(5, 1, 4, 4), torch.zeros(5, dtype=torch.long), torch.tensor([0, 1, 4, 8, 9])
    eps_c, eps_null = x + labels[:, None, None, None], -x
    guided = nb["guided_eps"](known_network, labels, w, NULL)(x, t)
    assert torch.allclose(guided, (1 + w) * eps_c - w * eps_null)   # eq. 6
    s = 1 + w
    assert torch.allclose(guided, eps_null + s * (eps_c - eps_null))  # the guidance-scale form


def test_the_guided_eps_takes_one_strength_per_image_in_one_network_call(nb):
    calls = []

    def counting(x, t, labels):
        calls.append(len(x))
        return known_network(x, t, labels)

    x, t, labels, w = torch.randn(3, 1, 4, 4), torch.zeros(3, dtype=torch.long), torch.tensor([2, 5, 7]), torch.tensor([0.0, 1.0, 4.0])
    guided = nb["guided_eps"](counting, labels, w, NULL)(x, t)
    expected = torch.stack([(1 + wi) * (xi + ci) + wi * xi for xi, ci, wi in zip(x, labels, w)])
    assert torch.allclose(guided, expected) and calls == [6]  # conditional and unconditional halves in one batch


@pytest.mark.parametrize("w, message", [(-1.0, r"w must be at least 0"), (torch.ones(2), r"one number or one per image \(3\)")])
def test_bad_guidance_strengths_are_refused(nb, w, message):
    with pytest.raises(ValueError, match=message):
        nb["guided_eps"](known_network, torch.tensor([1, 2, 3]), w, NULL)


def test_labels_of_the_wrong_count_for_the_batch_are_refused(nb):
    eps_tilde = nb["guided_eps"](known_network, torch.tensor([1, 2, 3]), 1.0, NULL)
    with pytest.raises(ValueError, match=r"3 labels for a batch of 4 images"):
        eps_tilde(torch.zeros(4, 1, 4, 4), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("labels, message", [
    (torch.tensor([0, 11, 2, 3]), r"labels must lie in 0 \.\.\. 9, or 10 for no label; got values from 0 to 11"),
    (torch.tensor([-1, 0, 2, 3]), r"labels must lie in 0 \.\.\. 9"),
    (torch.tensor([1, 2]), r"one integer per image, shape \(4,\); got \(2,\)"),
    (torch.tensor([1.0, 2.0, 3.0, 4.0]), r"one integer per image"),
])
def test_the_conditional_unet_refuses_bad_labels(labels, message):
    model = hf.Unet(dim=8, dim_mults=(1, 2), num_classes=10)
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), labels)


def test_an_unconditional_unet_refuses_labels_and_a_bad_class_count():
    with pytest.raises(ValueError, match=r"built without num_classes"):
        hf.Unet(dim=8, dim_mults=(1, 2))(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"num_classes is the number of class labels"):
        hf.Unet(dim=8, dim_mults=(1, 2), num_classes=0)


def test_a_fresh_conditional_unet_computes_what_its_weights_compute_without_labels():
    torch.manual_seed(0)
    plain = hf.Unet(dim=8, dim_mults=(1, 2)).eval()
    conditional = hf.Unet(dim=8, dim_mults=(1, 2), num_classes=10).eval()
    missing, unexpected = conditional.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["class_embedding.weight", *label_layer_names(conditional)] and not unexpected
    x, t = torch.randn(11, 1, 8, 8), torch.arange(11) * 90
    with torch.no_grad():
        assert torch.allclose(conditional(x, t, torch.arange(11)), plain(x, t), atol=1e-6)
        assert torch.allclose(conditional(x, t), plain(x, t), atol=1e-6)  # no labels given: "no label" for all


def test_no_label_stays_the_unconditional_network_however_the_label_parts_are_trained():
    plain, conditional = hf.Unet(dim=8, dim_mults=(1, 2)).eval(), small_conditional_unet()
    conditional.load_state_dict(plain.state_dict(), strict=False)  # the shared weights; label parts random
    torch.nn.init.normal_(conditional.class_embedding.weight)  # even a non-zero "no label" row is skipped
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 250, 500, 999])
    with torch.no_grad():
        assert torch.equal(conditional(x, t, torch.full((4,), NULL)), plain(x, t))
        assert not torch.allclose(conditional(x, t, torch.full((4,), 3)), plain(x, t), atol=1e-3)  # a label does change it


def test_random_batches_keep_images_and_labels_paired():
    images, labels = torch.arange(12.0)[:, None] * 10, torch.arange(12)
    x, c = next(hf.random_batches((images, labels), 5))
    assert len(x) == len(c) == 5 and torch.equal(x[:, 0], c.float() * 10)
    with pytest.raises(ValueError, match=r"the same number of rows"):
        next(hf.random_batches((images, labels[:5]), 2))


def test_train_ddpm_hands_the_loss_each_batch_of_images_and_labels():
    model = hf.Unet(dim=8, dim_mults=(1, 2), num_classes=10)
    seen = []

    def loss_fn(x0, labels):
        seen.append((x0[:, 0, 0, 0].clone(), labels.clone()))
        return model(x0, torch.zeros(len(x0), dtype=torch.long), labels).pow(2).mean()

    images = torch.arange(16.0)[:, None, None, None].expand(16, 1, 8, 8).contiguous()
    losses = hf.train_ddpm(model, [], torch.optim.Adam(model.parameters(), 1e-3), loss_fn, (images, torch.arange(16) % 10),
                           batch_size=4, max_steps=3, peak_lr=1e-3, warmup_steps=1, grad_clip=1.0)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert all(torch.equal(x.long() % 10, c) for x, c in seen)  # each image came with its own label


def test_within_class_distance_by_hand():
    images = torch.zeros(4, 1, 2, 2)
    images[1, 0, 0, 0] = 3.0  # class 0: distance 3
    images[3, 0, 0, 0], images[3, 0, 1, 1] = 1.0, 1.0  # class 1: distance sqrt(2)
    assert hf.within_class_distance(images, torch.tensor([0, 0, 1, 1])) == pytest.approx((3 + math.sqrt(2)) / 2)
    with pytest.raises(ValueError, match=r"label 1 has 1 image"):
        hf.within_class_distance(images[:3], torch.tensor([0, 0, 1]))


def test_conditional_quality_counts_the_digits_the_classifier_reads(reference):
    real = hf.conditional_reference_scores(reference, 20, seed=0, draws=2)
    assert real["n"] == 200 and real["accuracy"] > 0.95 and real["classifier_fd_sd"] >= 0
    images, labels = reference.holdout_images[:200], reference.holdout_labels[:200]
    wrong = hf.conditional_quality(images, (labels + 1) % 10, reference, value_range=(0, 1), real_digits=True)
    assert wrong["accuracy"] < 0.1  # asked for the next digit: the classifier reads the true one
    with pytest.raises(ValueError, match=r"200 samples but 199 labels"):
        hf.conditional_quality(images, labels[:199], reference, value_range=(0, 1))
    with pytest.raises(ValueError, match=r"ask for per_class <= that"):
        hf.conditional_reference_scores(reference, 10_000)


def test_conditional_reference_scores_draw_only_from_the_pool(reference):
    read = reference.holdout_class_probabilities().argmax(1)
    correctly_read = read == reference.holdout_labels
    assert not correctly_read.all()  # some real digits are misread, or this test could not fail
    assert hf.conditional_reference_scores(reference, 20, seed=0, draws=2, pool=correctly_read)["accuracy"] == 1.0
    with pytest.raises(ValueError, match=r"only 0 held-out real digits of class 3 in the pool"):
        hf.conditional_reference_scores(reference, 1, pool=reference.holdout_labels != 3)
    with pytest.raises(ValueError, match=r"pool must be a boolean mask of shape \(2500,\)"):
        hf.conditional_reference_scores(reference, 20, pool=correctly_read[:10])


def test_shipped_guided_weights_are_small_load_and_follow_the_label():
    assert WEIGHTS.stat().st_size < 10 * 2**20
    model = hf.load_weights(hf.Unet(dim=32, dim_mults=(1, 2, 4), num_classes=10), WEIGHTS, CONFIG).eval()
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(1000))
    images, labels = hf.load_mnist_subset()
    x0, c = images[::100] * 2 - 1, labels[::100]
    generator = torch.Generator().manual_seed(0)
    t = torch.full((len(x0),), 500)
    eps = torch.randn(x0.shape, generator=generator)
    x_t = hf.q_sample(x0, t, schedule, eps=eps)
    with torch.inference_mode():
        right, wrong = model(x_t, t, c), model(x_t, t, (c + 5) % 10)
    loss_right, loss_wrong = (torch.nn.functional.mse_loss(p, eps).item() for p in (right, wrong))
    assert loss_right < 0.3 and loss_right < loss_wrong  # the true label helps predict the noise


def test_shipped_guided_weights_say_how_they_were_made():
    run = hf.weights_metadata(WEIGHTS)
    assert run["from_ddpm_weights"] and run["steps"] > 1000 and 0 < run["train_seconds"] <= 3700
    assert run["only_conditioning"] == SETTINGS["TRAIN_ONLY_CONDITIONING"] and run["t_min"] == SETTINGS["T_MIN"]
    assert run["peak_lr"] == SETTINGS["CLASS_LEARNING_RATE"] and run["label_layer_peak_lr"] == SETTINGS["LABEL_LAYER_LEARNING_RATE"]
    assert run["ema_decay"] == SETTINGS["EMA_DECAY"] and run["batch_size"] in (SETTINGS["CPU_BATCH_SIZE"], SETTINGS["GPU_BATCH_SIZE"])
    with pytest.raises(ValueError, match=r"p_uncond: weights have 0.2, notebook has 0.5"):
        hf.load_weights(hf.Unet(dim=32, dim_mults=(1, 2, 4), num_classes=10), WEIGHTS, CONFIG | {"p_uncond": 0.5})


def test_shipped_guided_weights_kept_every_ddpm_weight_when_only_the_conditioning_trained():
    if not hf.weights_metadata(WEIGHTS)["only_conditioning"]:
        pytest.skip("these weights were trained whole")
    model = hf.load_weights(hf.Unet(dim=32, dim_mults=(1, 2, 4), num_classes=10), WEIGHTS, CONFIG)
    guided, label_layers = model.state_dict(), label_layer_names(model)
    ddpm = hf.load_weights(hf.Unet(dim=32, dim_mults=(1, 2, 4)), hf.SHIPPED_WEIGHTS_PATH, notebook_weights_config()).state_dict()
    assert set(guided) - set(ddpm) == {"class_embedding.weight", *label_layers}
    assert all(torch.equal(guided[name], ddpm[name]) for name in ddpm)
    assert all(guided[name].abs().sum() > 0 for name in label_layers) and not guided["class_embedding.weight"][NULL].any()


def test_the_notebooks_save_path_never_touches_the_shipped_file(nb, tmp_path, monkeypatch):
    before = WEIGHTS.read_bytes()
    monkeypatch.setattr(hf, "RUNS_DIR", tmp_path / "runs")
    path = nb["save_run_weights"](hf.Unet(dim=8, dim_mults=(1, 2), num_classes=10), {"dim": 8}, {"steps": 1}, smoke=False)
    assert path == tmp_path / "runs" / WEIGHTS.name and hf.weights_metadata(path) == {"steps": 1}
    assert WEIGHTS.read_bytes() == before


def test_sample_digits_gives_one_image_per_label_in_range(nb, schedule):
    model = small_conditional_unet()
    samples = nb["sample_digits"](model, torch.tensor([0, 1, 2, 3, 4]), 2.0, schedule, 3, 1.0, 2, torch.Generator().manual_seed(0),
                                  "cpu", NULL)
    assert samples.shape == (5, 1, 28, 28) and samples.abs().max() <= 1


def test_the_notebook_settings_read_the_full_mode_value_of_a_smoke_switch():
    # `SAMPLING_STEPS = 5 if SMOKE_TEST else 50`: scripts must get what a full run uses; other expressions are left out
    assert SETTINGS["SAMPLING_STEPS"] == 50 and SETTINGS["TRAIN_IMAGES"] == 5000
    assert "FULL_TRAIN_SECONDS" not in SETTINGS and "FULL_TRAINING" not in SETTINGS
