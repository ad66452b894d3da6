"""experiments/guided.py at a tiny size: training writes its weights where it is told and nowhere in data/, and the
evaluation scores every strength it is given against the real digits at the same n."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import helper_functions as hf
import guided

ROOT = Path(__file__).resolve().parent.parent


def shipped_bytes() -> dict:
    """The shipped weights' bytes, to check that a run left data/ as it was."""
    return {path: path.read_bytes() for path in (hf.SHIPPED_GUIDED_WEIGHTS_PATH, hf.SHIPPED_WEIGHTS_PATH)}


def test_training_and_evaluation_at_a_tiny_size(tmp_path):
    shipped = shipped_bytes()
    guided.main(["train", "--steps", "3", "--t-min", "250", "--output-dir", str(tmp_path)])
    weights = tmp_path / "guided_mnist_ema.pt"
    run = hf.weights_metadata(weights)
    assert run["from_ddpm_weights"] and run["steps"] == 3 and run["trained_by"] == "experiments/guided.py train"
    assert run["only_conditioning"] == guided.SETTINGS["TRAIN_ONLY_CONDITIONING"] and run["t_min"] == 250
    assert shipped_bytes() == shipped  # no --ship: data/ untouched

    guided.main(["evaluate", "--weights", str(weights), "--w", "0", "2", "--per-digit", "2", "--batch", "20", "--steps", "3",
                 "--output-dir", str(tmp_path)])
    results = json.loads((tmp_path / "guided_results.json").read_text())
    assert set(results["guided"]) == {"0.0", "2.0"} and results["real"]["n"] == 20
    assert results["label_t_min"] == guided.SETTINGS["LABEL_T_MIN"]  # the label where the notebook gives it
    assert all(0 <= scores["accuracy"] <= 1 and scores["n"] == 20 for scores in results["guided"].values())
    assert results["no_label"]["n"] == results["ddpm"]["n"] == 20 and results["real_unconditional"]["n"] == 20
    table = guided.markdown_table(results).splitlines()
    assert len(table) == 2 + 2 + 1 and table[2].startswith("| w = 0 |") and table[3].startswith("| w = 2 |")


def test_another_seed_draws_other_samples_against_the_same_real_digits(tmp_path):
    runs = {}
    for seed in (None, 1):
        out = tmp_path / f"seed_{seed}"
        guided.main(["evaluate", "--w", "0", "--per-digit", "2", "--batch", "20", "--steps", "3", "--no-unconditional",
                     "--output-dir", str(out)] + ([] if seed is None else ["--seed", str(seed)]))
        runs[seed] = json.loads((out / "guided_results.json").read_text())
    assert runs[None]["seed"] == guided.SETTINGS["SEED"] and runs[1]["seed"] == 1
    assert runs[None]["real"] == runs[1]["real"]  # the floor keeps the notebook's seed
    assert runs[None]["guided"]["0.0"]["classifier_fd"] != runs[1]["guided"]["0.0"]["classifier_fd"]


def test_every_weight_training_from_earlier_weights_moves_ddpms_weights_too(tmp_path):
    shipped = shipped_bytes()
    guided.main(["train", "--steps", "2", "--t-min", "0", "--from-weights", str(hf.SHIPPED_GUIDED_WEIGHTS_PATH),
                 "--every-weight-lr", "1e-4", "--class-lr", "5e-3", "--label-layer-lr", "5e-4", "--warmup-steps", "1",
                 "--output-dir", str(tmp_path)])
    weights = tmp_path / "guided_mnist_ema.pt"
    run = hf.weights_metadata(weights)
    assert not run["only_conditioning"] and run["every_weight_peak_lr"] == 1e-4 and run["peak_lr"] == 1e-4
    assert run["class_peak_lr"] == 5e-3 and run["label_layer_peak_lr"] == 5e-4 and run["warmup_steps"] == 1
    assert run["from_weights"] == str(hf.SHIPPED_GUIDED_WEIGHTS_PATH) and run["steps"] == 2
    unet = lambda: hf.Unet(dim=32, dim_mults=(1, 2, 4), num_classes=10)  # noqa: E731
    before = hf.load_weights(unet(), hf.SHIPPED_GUIDED_WEIGHTS_PATH, guided.WEIGHTS_CONFIG).state_dict()
    after = hf.load_weights(unet(), weights, guided.WEIGHTS_CONFIG).state_dict()
    assert not torch.equal(after["init_conv.weight"], before["init_conv.weight"])  # a DDPM weight trained
    assert not torch.equal(after["class_embedding.weight"], before["class_embedding.weight"])  # and the label parts
    assert shipped_bytes() == shipped


def test_training_from_random_weights_trains_every_weight_on_every_t(tmp_path):
    shipped = shipped_bytes()
    guided.main(["train", "--from-random-weights", "--steps", "2", "--output-dir", str(tmp_path)])
    weights = tmp_path / "guided_mnist_ema.pt"
    run = hf.weights_metadata(weights)
    assert not run["from_ddpm_weights"] and not run["only_conditioning"] and run["t_min"] == 0  # the notebook's T_MIN then
    assert run["peak_lr"] == pytest.approx(guided.SETTINGS["LEARNING_RATE"] * (run["batch_size"] / 128) ** 0.5)
    assert run["class_peak_lr"] is None and run["label_layer_peak_lr"] is None
    ddpm = torch.load(hf.SHIPPED_WEIGHTS_PATH, map_location="cpu", weights_only=True)["state_dict"]
    state = hf.load_weights(hf.Unet(dim=32, dim_mults=(1, 2, 4), num_classes=10), weights, guided.WEIGHTS_CONFIG).state_dict()
    assert not torch.equal(state["init_conv.weight"], ddpm["init_conv.weight"].float())  # not DDPM's weights
    assert state["class_embedding.weight"][:10].abs().sum() > 0
    assert shipped_bytes() == shipped


def test_the_gpu_script_trains_from_random_weights_and_scores_every_strength(tmp_path):
    # a stand-in interpreter records the script's two commands and they run here, in this process: 3 s, not the 13 s of
    # two fresh interpreters importing torch
    calls, recorder = tmp_path / "calls.jsonl", tmp_path / "record_python"
    recorder.write_text(f'#!/bin/sh\npython3 -c "import json, sys; print(json.dumps(sys.argv[1:]))" "$@" >> {calls}\n')
    recorder.chmod(0o755)
    env = os.environ | {"OUT": str(tmp_path), "TRAIN_SECONDS": "0.01", "PER_DIGIT": "2", "W": "0 1", "BATCH": "10", "STEPS": "2",
                        "PYTHON": str(recorder)}
    subprocess.run(["bash", str(ROOT / "experiments" / "guided_on_gpu.sh")], env=env, check=True, capture_output=True)
    commands = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [command[:2] for command in commands] == [["experiments/guided.py", "train"], ["experiments/guided.py", "evaluate"]]
    for command in commands:
        guided.main(command[1:])
    assert not hf.weights_metadata(tmp_path / "guided_mnist_ema.pt")["from_ddpm_weights"]
    results = json.loads((tmp_path / "guided_results.json").read_text())
    assert set(results["guided"]) == {"0.0", "1.0"} and results["label_t_min"] == 0 and results["ddpm"]["n"] == 20
    assert results["sampler"].endswith("2 steps") and (tmp_path / "train.log").is_file() and (tmp_path / "evaluate.log").is_file()


@pytest.mark.parametrize("arguments, message", [(["train", "--t-min", "1000"], "--t-min must be in 0 ... 999"),
                                                (["train", "--t-min", "-1"], "--t-min must be in 0 ... 999"),
                                                (["train", "--steps", "0"], "--steps must be at least 1"),
                                                (["train", "--every-weight-lr", "0"], "--every-weight-lr is a peak learning rate"),
                                                (["train", "--class-lr", "-1"], "--class-lr is a peak learning rate"),
                                                (["train", "--warmup-steps", "-1"], "--warmup-steps must be 0 or more"),
                                                (["train", "--from-weights", "nowhere.pt"], "--from-weights: no file nowhere.pt"),
                                                (["train", "--from-random-weights", "--class-lr", "1e-2"],
                                                 "--from-random-weights trains every weight from scratch"),
                                                (["train", "--from-random-weights", "--from-weights", "data/guided_mnist_ema.pt"],
                                                 "it takes no --from-weights"),
                                                (["train", "--relative-loss", "--ship"], "--relative-loss and --t-max below T are not that loss"),
                                                (["train", "--t-max", "800", "--ship"], "--t-max below T are not that loss"),
                                                (["train", "--t-min", "500", "--t-max", "500"],
                                                 "--t-max must lie above --t-min (500) and at most 1000, got 500"),
                                                (["train", "--t-max", "1001"], "--t-max must lie above --t-min"),
                                                (["train", "--relative-loss", "--from-random-weights"],
                                                 "which random weights do not have yet"),
                                                (["evaluate", "--label-t-min", "1000"], "--label-t-min must be in 0 ... 999"),
                                                (["evaluate", "--label-t-min", "-1"], "--label-t-min must be in 0 ... 999")])
def test_bad_arguments_are_refused_before_any_work(tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        guided.main([*arguments, "--output-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_label_part_peaks_are_refused_where_no_label_part_has_its_own(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(guided.SETTINGS, "TRAIN_ONLY_CONDITIONING", False)  # the notebook's route from random weights
    with pytest.raises(SystemExit) as exit_info:
        guided.main(["train", "--class-lr", "1e-2", "--output-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2 and "only the label-parts training or --every-weight-lr" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
