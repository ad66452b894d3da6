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


def test_first_of_each_keeps_the_first_per_digit_of_each_digit_that_qualify_in_the_order_drawn():
    asked = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert fd_parts.first_of_each(asked, 2).tolist() == [0, 1, 3, 4, 6, 7]
    keep = torch.tensor([False, True, True, True, False, True, True, True, False])
    assert fd_parts.first_of_each(asked, 2, keep).tolist() == [1, 2, 3, 5, 6, 7]
    with pytest.raises(ValueError, match="digit 1: only 1 of the samples qualify, 2 asked for"):
        fd_parts.first_of_each(asked, 2, torch.tensor([True, True, True, False, False, True, True, True, True]))
    with pytest.raises(ValueError, match="keep must be a boolean mask of shape"):
        fd_parts.first_of_each(asked, 2, torch.ones(9))


def test_the_table_puts_each_read_as_asked_row_under_its_strength():
    scores = {"classifier_fd": 5.0, "mean_part": 1.0, "covariance_part": 4.0, "ink": 0.9, "confidence": 0.95}
    results = {"guided": {"0.0": scores, "0.5": scores}, "real": scores | {"draws": 10},
               "read_as_asked": {"0.0": scores | {"drawn": 1300, "share_read_as_asked": 0.933}},
               "real_read_as_labelled": scores | {"draws": 10}}
    rows = fd_parts.markdown_table(results).splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [
        "| w = 0", "| w = 0, read as asked (93.3% of 1300)", "| w = 0.5", "| real held-out digits (mean of 10 draws)",
        "| real held-out digits read as their label"]


def test_fewer_samples_drawn_than_kept_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fd_parts.main(["--read-as-asked", "0.9", "--output-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2 and "--read-as-asked must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
