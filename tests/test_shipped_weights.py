"""The DDPM weights shipped in data/ load into the notebook's own U-Net and predict noise far better than chance."""

import pytest
import torch

import helper_functions as hf
from notebook_code import notebook_classes, notebook_settings, notebook_weights_config

WEIGHTS = hf.SHIPPED_WEIGHTS_PATH
CONFIG = notebook_weights_config()  # what DDPM.ipynb saves with its weights and checks on loading


@pytest.fixture(scope="module")
def unet_class():
    return notebook_classes("DDPM.ipynb")["Unet"]


def test_shipped_weights_are_small():
    assert WEIGHTS.stat().st_size < 10 * 2**20


def test_shipped_weights_load_and_predict_the_noise(unet_class):
    model = hf.load_weights(unet_class(dim=32, dim_mults=(1, 2, 4)), WEIGHTS, CONFIG).eval()
    schedule = hf.NoiseSchedule(hf.linear_beta_schedule(1000))
    images, _ = hf.load_mnist_subset()
    x0 = images[::100] * 2 - 1  # 50 digits, 5 of each class
    generator = torch.Generator().manual_seed(0)
    for t_value in (100, 500, 900):
        t = torch.full((len(x0),), t_value)
        eps = torch.randn(x0.shape, generator=generator)
        with torch.inference_mode():
            predicted = model(hf.q_sample(x0, t, schedule, eps=eps), t)
        # predicting zero scores 1.0; a trained eps-model scores far lower
        assert torch.nn.functional.mse_loss(predicted, eps).item() < 0.3, t_value


def test_loading_with_another_configuration_says_what_differs(unet_class):
    model = unet_class(dim=32, dim_mults=(1, 2, 4))
    with pytest.raises(ValueError, match=r"T: weights have 1000, notebook has 500"):
        hf.load_weights(model, WEIGHTS, {**CONFIG, "T": 500})


def test_shipped_weights_say_how_they_were_trained():
    run = hf.weights_metadata(WEIGHTS)
    assert run["steps"] > 1000 and 0 < run["train_seconds"] <= 200  # 3 minutes of the notebook's GPU training
    assert run["device_name"].startswith("NVIDIA")
    losses = run["losses"]
    assert 100 <= len(losses) <= 4000 and losses[0] > 0.5 and sum(losses[-50:]) / 50 < 0.05  # starts near 1, ends low


def test_shipped_weights_match_the_notebook_settings_that_made_them():
    settings, run = notebook_settings("DDPM.ipynb"), hf.weights_metadata(WEIGHTS)
    assert run["ema_decay"] == settings["EMA_DECAY"] and run["dropout"] == settings["GPU_DROPOUT"]
    assert run["batch_size"] == settings["GPU_BATCH_SIZE"]


def test_the_notebooks_save_path_never_touches_the_shipped_file(tmp_path, monkeypatch, unet_class):
    """DDPM.ipynb's own save_run_weights, in full mode (smoke=False): it writes to runs/ and data/ stays byte-identical."""
    save_run_weights = notebook_classes("DDPM.ipynb")["save_run_weights"]
    before = WEIGHTS.read_bytes()
    monkeypatch.setattr(hf, "RUNS_DIR", tmp_path / "runs")  # run_folder reads it at call time
    path = save_run_weights(unet_class(dim=8, dim_mults=(1, 2)), {"dim": 8}, {"steps": 1}, smoke=False)
    assert path == tmp_path / "runs" / WEIGHTS.name and hf.weights_metadata(path) == {"steps": 1}
    assert WEIGHTS.read_bytes() == before
