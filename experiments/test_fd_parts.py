"""experiments/fd_parts.py: the FD's two parts add up to it, and the mean part is the squared distance of the means."""

import pytest
import torch

import fd_parts


def test_the_parts_add_up_and_the_mean_part_is_the_means_distance():
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(400, 8, generator=generator, dtype=torch.float64)
    shifted = torch.randn(400, 8, generator=generator, dtype=torch.float64) * 1.5 + torch.tensor([2.0] + [0.0] * 7, dtype=torch.float64)
    parts = fd_parts.fd_parts(shifted, reference)
    assert parts["mean_part"] == pytest.approx((shifted.mean(0) - reference.mean(0)).pow(2).sum().item())
    assert parts["mean_part"] + parts["covariance_part"] == pytest.approx(parts["classifier_fd"])
    assert parts["mean_part"] == pytest.approx(4.0, abs=0.5) and parts["covariance_part"] > 0.5  # the shift, the wider spread
    same = fd_parts.fd_parts(reference, reference)
    assert same["mean_part"] == 0 and abs(same["covariance_part"]) < 1e-6


def test_a_single_sample_per_digit_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fd_parts.main(["--per-digit", "1", "--output-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2 and "--per-digit must be at least 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
