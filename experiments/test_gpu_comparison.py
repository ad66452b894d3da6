"""gpu_comparison.py refuses before measuring anything, and says what to do, when the library it compares against
is missing; it reads installed versions for its record."""

import sys

import pytest
import torch

import gpu_comparison


def test_a_missing_library_is_refused_before_any_work(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(gpu_comparison, "installed_version", lambda package: None)
    monkeypatch.setattr(sys, "argv", ["gpu_comparison.py", "--output-dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        gpu_comparison.main()
    assert exit_info.value.code == 2
    assert "pip install denoising-diffusion-pytorch" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was measured or written


def test_installed_version_reads_the_package_metadata():
    assert str(torch.__version__).startswith(gpu_comparison.installed_version("torch"))  # "2.14.1" in "2.14.1+cu130"
    assert gpu_comparison.installed_version("no-such-package-here") is None


def test_our_settings_are_the_notebooks_own():
    from notebook_code import notebook_settings

    settings = notebook_settings("DDPM.ipynb")
    assert gpu_comparison.OURS["batch_size"] == settings["GPU_BATCH_SIZE"] and gpu_comparison.OURS["dropout"] == settings["GPU_DROPOUT"]
    assert (gpu_comparison.OURS["peak_lr"], gpu_comparison.OURS["warmup_steps"]) == (settings["LEARNING_RATE"], settings["WARMUP_STEPS"])
    assert settings["EMA_DECAY"] in gpu_comparison.OURS["ema_decays"]
