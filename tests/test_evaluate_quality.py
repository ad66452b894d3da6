"""The evaluation script's draws mode, at a tiny size: seeds, per-draw scores and their summary."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evaluate_quality import arithmetic_label, bfloat16_weights, parse_sampler, perturbed_weights

SCRIPT = Path(__file__).resolve().parent / "evaluate_quality.py"


def run_script(tmp_path: Path, *arguments: str) -> dict:
    output = tmp_path / "quality.json"
    completed = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--output", str(output), *arguments],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return {"printed": completed.stdout, **json.loads(output.read_text())}


def test_draws_are_seeded_scored_and_summarised(tmp_path):
    result = run_script(tmp_path, "--n", "12", "--chunk", "8", "--draws", "2", "--seed", "5", "--samplers", "ddim:2", "ddim:2:1")
    assert result["draws"] == 2 and result["n"] == 12
    for spec in ("ddim:2", "ddim:2:1"):
        draws, summary = result["results"][spec]["draws"], result["results"][spec]["summary"]
        assert [d["seed"] for d in draws] == [5, 1005]  # draw k from seed + 1000 k
        fds = [d["classifier_fd"] for d in draws]
        assert fds[0] != fds[1] and all(math.isfinite(fd) for fd in fds)
        assert summary["classifier_fd"]["mean"] == pytest.approx(sum(fds) / 2)
        assert summary["classifier_fd"]["sd"] == pytest.approx(abs(fds[0] - fds[1]) / math.sqrt(2))
    assert "times ddim:2's" in result["printed"]
    assert (result["chunk"], result["noise_device"], result["weights"]) == (8, "cpu", "ddpm_mnist_ema.pt")
    # pool_draws reads the file back and, for one file, prints the run's own summary and the pairing of its seeds
    pooled = subprocess.run([sys.executable, str(SCRIPT.parent / "pool_draws.py"), str(tmp_path / "quality.json")],
                            capture_output=True, text=True, timeout=300)
    assert pooled.returncode == 0, pooled.stderr[-2000:]
    assert result["printed"].split("sd between draws):\n")[1].split("\nwrote")[0] in pooled.stdout
    assert "ddim:2:1 against ddim:2, paired over 2 seeds" in pooled.stdout
    # one draw of the same seed is the first draw of the two, in the old one-draw format
    single = run_script(tmp_path, "--n", "12", "--chunk", "8", "--seed", "5", "--cpu-noise", "--samplers", "ddim:2")
    assert single["results"]["ddim:2"]["classifier_fd"] == pytest.approx(result["results"]["ddim:2"]["draws"][0]["classifier_fd"])


def test_sampler_specs_are_parsed_or_refused():
    assert parse_sampler("ddim:50") == ("ddim:50", "ddim", 50, 0.0)
    assert parse_sampler("ddim_trailing:20:0.5") == ("ddim_trailing:20:0.5", "ddim_trailing", 20, 0.5)
    assert parse_sampler("ancestral:1000") == ("ancestral:1000", "ancestral", 1000, 0.0)
    for spec in ("ancestral:10:0.5", "ddim", "ddim:fifty", "ddim:0", "ddim:1001", "ddim:50:-1", "ddim:50:1:2", "euler:50"):
        with pytest.raises(ValueError, match="bad sampler"):
            parse_sampler(spec)


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    completed = subprocess.run([sys.executable, str(SCRIPT), "--draws", "0", "--output", str(tmp_path / "q.json")],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2 and "--draws" in completed.stderr and not (tmp_path / "q.json").exists()


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> dict:
    """One tiny float32 draw that the arithmetic and eps-scale variants below are compared with."""
    return run_script(tmp_path_factory.mktemp("plain"), "--n", "8", "--seed", "3", "--samplers", "ddim:3")


def test_tf32_emulation_moves_the_samples_a_little(tmp_path, plain):
    emulated = run_script(tmp_path, "--n", "8", "--seed", "3", "--emulate-tf32", "--samplers", "ddim:3")
    assert plain["arithmetic"] == "float32" and emulated["arithmetic"] == "float32, TF32 operands (emulated)"
    fd, fd_tf32 = plain["results"]["ddim:3"]["classifier_fd"], emulated["results"]["ddim:3"]["classifier_fd"]
    assert fd_tf32 != fd and fd_tf32 == pytest.approx(fd, rel=0.2)  # the same x_T, rounded arithmetic
    for pair in (["--bf16", "--emulate-tf32"], ["--emulate-tf32", "--strict-float32"], ["--bf16", "--strict-float32"],
                 ["--bf16", "--bf16-weights"], ["--bf16-activations", "--perturb-weights", "1"]):
        completed = subprocess.run([sys.executable, str(SCRIPT), *pair, "--output", str(tmp_path / "q.json")],
                                   capture_output=True, text=True, timeout=300)
        assert completed.returncode == 2 and "choose one" in completed.stderr


def test_eps_scale_changes_the_path_and_is_recorded(tmp_path, plain):
    scaled = run_script(tmp_path, "--n", "8", "--seed", "3", "--eps-scale", "1.05", "--samplers", "ddim:3")
    assert (plain["eps_scale"], scaled["eps_scale"]) == (1.0, 1.05) and "eps x 1.05" in scaled["printed"]
    assert scaled["results"]["ddim:3"]["classifier_fd"] != pytest.approx(plain["results"]["ddim:3"]["classifier_fd"])
    completed = subprocess.run([sys.executable, str(SCRIPT), "--eps-scale", "0", "--output", str(tmp_path / "q.json")],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2 and "--eps-scale must lie in" in completed.stderr


def test_bfloat16_weights_round_a_copy_and_are_named():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.GroupNorm(2, 4))
    original = [p.clone() for p in model.parameters()]
    rounded = bfloat16_weights(model)
    for before, after, kept in zip(original, rounded.parameters(), model.parameters()):
        assert after.dtype == torch.float32 and torch.equal(after, before.bfloat16().float())
        assert torch.equal(kept, before)  # the model itself is left alone
    assert not torch.equal(rounded[0].weight, model[0].weight)
    assert arithmetic_label(torch.device("cpu"), False, False, bf16_weights=True) == "float32, weights rounded to bfloat16"


def test_perturbed_weights_are_random_errors_of_bfloat16s_size():
    torch.manual_seed(0)
    model = torch.nn.Linear(200, 200)
    weight = model.weight.detach().clone()
    rounding = ((bfloat16_weights(model).weight - weight) / weight.abs()).detach()
    perturbed = perturbed_weights(model, seed=0)
    error = ((perturbed.weight - weight) / weight.abs()).detach()
    assert torch.equal(model.weight, weight) and torch.equal(perturbed.weight, perturbed_weights(model, seed=0).weight)
    assert not torch.equal(perturbed.weight, perturbed_weights(model, seed=1).weight)
    assert error.abs().max() <= 2.0**-8  # at most half a bfloat16 step, as rounding
    assert error.abs().mean().item() == pytest.approx(rounding.abs().mean().item(), rel=0.03)  # same size on average ...
    assert abs(torch.corrcoef(torch.stack([error.flatten(), rounding.flatten()]))[0, 1]) < 0.05  # ... but unrelated
    assert "seed 7" in arithmetic_label(torch.device("cpu"), False, False, perturb_seed=7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_strict_float32_turns_tf32_off_on_a_gpu(tmp_path):
    output = tmp_path / "quality.json"
    for flags, arithmetic in ((["--strict-float32"], "float32"), ([], "float32, TF32 convolutions")):
        completed = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda", "--n", "8", "--samplers", "ddim:3", *flags,
                                    "--output", str(output)], capture_output=True, text=True, timeout=300)
        assert completed.returncode == 0, completed.stderr[-2000:]
        assert json.loads(output.read_text())["arithmetic"] == arithmetic
