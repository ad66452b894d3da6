"""experiments/fd_parts.py: the FD's two parts add up to it, and the mean part is the squared distance of the means."""

import argparse

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


def test_label_free_samples_are_drawn_with_no_label_and_kept_by_the_classifiers_reading(reference):
    asked_for = {}
    drawn = torch.randperm(len(reference.holdout_images), generator=torch.Generator().manual_seed(0))[:300]

    def stand_in_sampler(network, labels, w, schedule, steps, eta, batch_size, generator, device, null_label, t_min=0):
        asked_for.update(labels=labels.clone(), w=w, null_label=null_label)
        return reference.holdout_images[drawn].float() * 2 - 1  # real digits of every class, in [-1, 1] as a sampler gives them

    args = argparse.Namespace(label_free=300, per_digit=5, steps=3, batch=100, label_t_min=200)
    scores = fd_parts.score_label_free_by_reading(stand_in_sampler, None, None, reference, args, "cpu", 0, 10)
    assert asked_for["w"] == 0.0 and asked_for["null_label"] == 10 and (asked_for["labels"] == 10).all()
    assert len(asked_for["labels"]) == 300 and scores["drawn"] == 300 and scores["n"] == 50
    read = reference.holdout_class_probabilities()[drawn].argmax(1)
    assert scores["share_of_each_digit"] == pytest.approx((torch.bincount(read, minlength=10) / 300).tolist())
    kept = fd_parts.describe(reference.holdout_images[drawn][fd_parts.first_of_each(read, 5)].float(), reference)
    assert scores["classifier_fd"] == pytest.approx(kept["classifier_fd"])
    args.per_digit = 40  # more of each digit than 300 real digits hold
    with pytest.raises(ValueError, match=r"digit \d is read only \d+ times in 300 label-free samples, 40 needed"):
        fd_parts.score_label_free_by_reading(stand_in_sampler, None, None, reference, args, "cpu", 0, 10)


def test_fewer_label_free_samples_than_kept_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fd_parts.main(["--w", "--per-digit", "10", "--label-free", "99", "--output-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2 and "--label-free must be at least 10 times --per-digit (100), got 99" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
