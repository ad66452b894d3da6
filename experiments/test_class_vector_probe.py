"""experiments/class_vector_probe.py at a tiny size: with --freeze and --projections-lr only the class vectors and
the blocks' scale-shift layers move, and it probes as told."""

import torch

import class_vector_probe
import helper_functions as hf


def test_frozen_probe_moves_only_the_label_path(capsys):
    model = class_vector_probe.main(["--steps", "2", "--freeze", "--class-lr", "1e-2", "--projections-lr", "1e-3",
                                     "--t-min", "500", "--label-t-min", "500", "--probe-every", "2", "--per-digit", "2"])
    ddpm = torch.load(hf.SHIPPED_WEIGHTS_PATH, map_location="cpu", weights_only=True)["state_dict"]
    state = model.state_dict()
    moved = {name for name, value in ddpm.items() if not torch.equal(state[name], value.float())}
    assert moved and all(".time_mlp." in name for name in moved)  # the blocks' scale-shift layers, nothing else of DDPM's
    assert "time_mlp.1.weight" not in moved and state["class_embedding.weight"].abs().sum() > 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("step 0: accuracy w=0") and lines[2].startswith("step 2: loss")
