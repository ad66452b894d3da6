"""Pooling the draws of several evaluate_quality.py files: means over all draws, pairing by seed, refusals."""

import json
import sys
from pathlib import Path

import pytest

import pool_draws
from pool_draws import load_runs, paired_ratio_interval
FLOOR = {"classifier_fd": 5.0, "confidence": 0.97, "class_spread": 0.999, "copy_fraction": 0.05, "n": 4, "draws": 10,
         "classifier_fd_sd": 1.0}


def write_run(path: Path, fds: dict[str, list[float]], seeds: list[int], arithmetic: str = "float32") -> Path:
    """An evaluate_quality-shaped file: each sampler's draws from the given seeds with the given FDs."""
    results = {"real": FLOOR, "noise": {**FLOOR, "classifier_fd": 1000.0}}
    for spec, values in fds.items():
        draws = [{"classifier_fd": fd, "confidence": 0.95, "class_spread": 0.99, "copy_fraction": 0.04, "n": 4,
                  "seconds": 2.0, "seed": seed} for fd, seed in zip(values, seeds)]
        results[spec] = {"draws": draws}
    path.write_text(json.dumps({"device": "cpu", "arithmetic": arithmetic, "n": 4, "draws": len(seeds), "weights": "w.pt",
                                "chunk": 2, "noise_device": "cpu", "clip": False, "results": results}))
    return path


def pool(monkeypatch, capsys, *arguments: str) -> tuple[int, str, str]:
    """Run the script's main() in this process (no second torch import): exit status, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["pool_draws.py", *arguments])
    try:
        pool_draws.main()
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    printed = capsys.readouterr()
    return status, printed.out, printed.err


def test_two_files_pool_into_one_summary_with_paired_seeds(tmp_path, monkeypatch, capsys):
    first = write_run(tmp_path / "a.json", {"ancestral:1000": [4.0, 6.0], "ddim:50": [6.0, 9.0]}, [0, 1000])
    second = write_run(tmp_path / "b.json", {"ancestral:1000": [5.0, 5.0], "ddim:50": [8.0, 7.0]}, [2000, 3000])
    shared, floors, draws = load_runs([first, second])
    assert shared == {"n": 4, "weights": "w.pt", "arithmetic": "float32", "clip": False} and len(floors) == 2
    assert [key[0] for key, _ in draws["ddim:50"]] == [0, 1000, 2000, 3000]
    status, printed, errors = pool(monkeypatch, capsys, str(first), str(second), "--baseline", "ancestral:1000")
    assert status == 0, errors
    # means 5.0 and 7.5 over four draws each: ratio 1.5; differences 2, 3, 3, 2
    assert "ancestral:1000: 4 draws, ddim:50: 4 draws" in printed
    assert "FD   7.50 ± 0.65" in printed and "FD 1.50 ±" in printed
    assert "paired over 4 seeds: FD difference +2.50 ± 0.29 (t = 8.7)" in printed


def test_bootstrap_interval_of_a_ratio():
    assert paired_ratio_interval([2.0, 4.0, 6.0], [1.0, 2.0, 3.0]) == pytest.approx((2.0, 2.0))  # every resample: 2
    low, high = paired_ratio_interval([8.0, 6.0, 10.0, 7.0, 9.0], [5.0, 6.0, 4.0, 5.0, 6.0], resamples=2000, seed=1)
    assert low < 40 / 26 < high and high - low < 1
    with pytest.raises(ValueError, match="two or more pairs"):
        paired_ratio_interval([1.0], [1.0])


def test_what_cannot_be_pooled_is_refused(tmp_path, monkeypatch, capsys):
    first = write_run(tmp_path / "a.json", {"ddim:50": [6.0, 9.0]}, [0, 1000])
    repeat = write_run(tmp_path / "b.json", {"ddim:50": [6.5]}, [1000])
    other_arithmetic = write_run(tmp_path / "c.json", {"ddim:50": [5.0]}, [5000], arithmetic="bfloat16 autocast")
    with pytest.raises(ValueError, match="seed 1000 appears twice"):
        load_runs([first, repeat])
    older = tmp_path / "d.json"  # a file from before chunk and noise device were recorded: the same seed may be the same x_T
    older.write_text(json.dumps({key: value for key, value in json.loads(repeat.read_text()).items() if key not in ("chunk", "noise_device")}))
    with pytest.raises(ValueError, match="seed 1000 appears twice"):
        load_runs([first, older])
    other_noise = tmp_path / "e.json"  # the same seed on another device's generator is other noise
    other_noise.write_text(json.dumps({**json.loads(repeat.read_text()), "noise_device": "cuda"}))
    assert len(load_runs([first, other_noise])[2]["ddim:50"]) == 3
    with pytest.raises(ValueError, match="arithmetic"):
        load_runs([first, other_arithmetic])
    for arguments, message in (([str(first), str(repeat)], "appears twice"), ([str(first), "--baseline", "ddim:20"], "not among"),
                               ([str(tmp_path / "missing.json")], "No such file")):
        status, _, errors = pool(monkeypatch, capsys, *arguments)
        assert status == 2 and message in errors
