"""experiments/real_digit_aims.py: its pools of real digits hold what they say, and bad arguments are refused."""

import pytest
import torch

import real_digit_aims


def test_the_pools_are_every_digit_the_correctly_read_and_the_most_confident_share_of_each_class(reference):
    pools = real_digit_aims.pools(reference, 0.2)
    every, correct, confident = pools.values()
    assert list(pools)[2] == "the most confident 20%" and every.all()
    probabilities = reference.holdout_class_probabilities()
    labels = reference.holdout_labels
    assert torch.equal(correct, probabilities.argmax(1) == labels) and 0 < (~correct).sum() < 0.1 * len(labels)
    own = probabilities.gather(1, labels[:, None]).squeeze(1)
    for c in range(10):
        members = labels == c
        assert confident[members].sum() == round(0.2 * members.sum().item())  # a fifth of each class
        assert own[members & confident].min() >= own[members & ~confident].max()  # and the most confident fifth
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\], got 0"):
        real_digit_aims.pools(reference, 0.0)


@pytest.mark.parametrize("argv, message", [(["--per-digit", "1"], "--per-digit must be at least 2"),
                                           (["--confident-share", "1.5"], "--confident-share must lie in (0, 1]")])
def test_bad_arguments_are_refused_before_any_work(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        real_digit_aims.main(argv + ["--output-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_pool_too_small_for_the_digits_asked_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        real_digit_aims.main(["--per-digit", "200", "--confident-share", "0.5", "--draws", "1", "--output-dir", str(tmp_path / "run")])
    assert "the most confident 50%: only 125 held-out real digits" in capsys.readouterr().err
