"""experiments/class_vector_probe.py at a tiny size: with --freeze and --label-layers-lr only the class vectors and
the blocks' label layers move, and it probes as told."""

import torch

import class_vector_probe
import helper_functions as hf


def test_frozen_probe_moves_only_the_label_path(capsys):
    model = class_vector_probe.main(["--steps", "2", "--freeze", "--class-lr", "1e-2", "--label-layers-lr", "1e-3",
                                     "--t-min", "500", "--label-t-min", "500", "--probe-every", "2", "--per-digit", "2", "--probe-steps", "2", "--batch", "8"])
    ddpm = torch.load(hf.SHIPPED_WEIGHTS_PATH, map_location="cpu", weights_only=True)["state_dict"]
    state = model.state_dict()
    assert all(torch.equal(state[name], value.float()) for name, value in ddpm.items())  # nothing of DDPM's moved
    label_layers = [name for name in state if ".label_mlp." in name]
    assert label_layers and all(state[name].abs().sum() > 0 for name in label_layers)
    assert state["class_embedding.weight"].abs().sum() > 0  # from the second step on
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("step 0: accuracy w=0") and lines[2].startswith("step 2: loss")
