"""experiments/class_vector_probe.py at a tiny size: with --freeze only the class vectors move (and with
--projections-lr the scale-shift layers too), and it probes as told."""

import torch

import class_vector_probe
import helper_functions as hf


def test_frozen_probe_moves_only_the_class_vectors(capsys):
    model = class_vector_probe.main(["--steps", "2", "--freeze", "--class-lr", "1e-2", "--t-min", "500",
                                     "--probe-every", "2", "--per-digit", "2"])
    ddpm = torch.load(hf.SHIPPED_WEIGHTS_PATH, map_location="cpu", weights_only=True)["state_dict"]
    state = model.state_dict()
    assert all(torch.equal(state[name], value.float()) for name, value in ddpm.items())
    assert state["class_embedding.weight"].abs().sum() > 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("step 0: accuracy w=0") and lines[2].startswith("step 2: loss")


def test_probe_with_projections_moves_only_the_label_path():
    model = class_vector_probe.main(["--steps", "1", "--freeze", "--class-lr", "1e-2", "--projections-lr", "1e-3",
                                     "--probe-every", "5", "--per-digit", "2"])
    ddpm = torch.load(hf.SHIPPED_WEIGHTS_PATH, map_location="cpu", weights_only=True)["state_dict"]
    state = model.state_dict()
    moved = {name for name, value in ddpm.items() if not torch.equal(state[name], value.float())}
    assert moved and all(".time_mlp." in name for name in moved) and "time_mlp.1.weight" not in moved
