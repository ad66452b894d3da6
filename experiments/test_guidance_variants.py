"""experiments/guidance_variants.py: each rule against its definition on a stand-in network whose conditional and
unconditional predictions are known, bad runs refused, and the script at a tiny size scoring every run it is given."""

import json
import re

import pytest
import torch

import helper_functions as hf
import guidance_variants as gv
from notebook_code import notebook_classes

GUIDED_EPS = notebook_classes("guided_diffusion.ipynb")["guided_eps"]
NULL, T_MIN = 10, 200
SCHEDULE = hf.NoiseSchedule(hf.linear_beta_schedule(1000))


def known_network(x, t, labels):
    """eps(x_t, t, c) = 0.1 (c + 1) x_t + 0.05 c, eps(x_t, t, no label) = -0.2 x_t: known, and different per image."""
    c = labels.float().view(-1, 1, 1, 1)
    return torch.where(c == NULL, -0.2 * x, 0.1 * (c + 1) * x + 0.05 * c)


def weaker_network(x, t, labels):
    """A stand-in for a less trained network: the label's part of known_network's eps halved, "no label" the same."""
    c = labels.float().view(-1, 1, 1, 1)
    return torch.where(c == NULL, -0.2 * x, -0.2 * x + 0.5 * (0.1 * (c + 1) * x + 0.05 * c + 0.2 * x))


def predict(rule, options, t):
    """The rule's eps for 4 fixed images with labels 1, 3, 5, 7 at timestep t, and the x0 it implies."""
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    t_batch = torch.full((4,), t)
    eps = gv.eps_model(rule, options, known_network, torch.tensor([1, 3, 5, 7]), SCHEDULE, NULL, T_MIN, GUIDED_EPS,
                       guiding_network=weaker_network, low_t_network=weaker_network)(x, t_batch)
    abar = SCHEDULE.alphas_cumprod[t]
    return eps, (x - (1 - abar).sqrt() * eps) / abar.sqrt()


@pytest.mark.parametrize("text, expected", [("cfg:w=0.5", ("cfg", {"w": 0.5})),
                                            ("interval:w=1,lo=200,hi=600", ("interval", {"w": 1.0, "lo": 200.0, "hi": 600.0})),
                                            ("apg:w=2,offset=1", ("apg", {"w": 2.0, "offset": 1.0})),
                                            ("auto:w=1", ("auto", {"w": 1.0})),
                                            ("handoff:w=1,at=500,low_w=0", ("handoff", {"w": 1.0, "at": 500.0, "low_w": 0.0}))])
def test_runs_are_read_as_a_rule_and_its_options(text, expected):
    assert gv.parse_run(text) == expected


@pytest.mark.parametrize("text, message", [("guide:w=1", "unknown guidance rule 'guide'"), ("apg:w=1,phi=1", "apg takes"),
                                           ("cfg:w", "cfg takes"), ("interval:w=1,lo=200", "interval needs ['hi']"),
                                           ("rescale:w=1", "rescale needs ['phi']"), ("clip:w=-1", "w must be at least 0"),
                                           ("auto:w=1,lo=200", "auto takes ['w']"), ("handoff:w=1", "handoff needs ['at']"),
                                           ("handoff:w=1,at=500,low_w=-1", "w must be at least 0")])
def test_bad_runs_get_a_clear_error(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        gv.parse_run(text)


def test_a_window_over_every_labelled_step_is_plain_guidance_and_one_outside_it_is_the_conditional_model():
    for t in (200, 500, 999):
        assert torch.equal(predict("interval", {"w": 2.0, "lo": 0, "hi": 999}, t)[0], predict("cfg", {"w": 2.0}, t)[0])
        assert torch.equal(predict("interval", {"w": 2.0, "lo": 0, "hi": t - 1}, t)[0], predict("cfg", {"w": 0.0}, t)[0])
    assert not torch.allclose(predict("cfg", {"w": 2.0}, 500)[0], predict("cfg", {"w": 0.0}, 500)[0])


def test_the_x0_rules_reduce_to_plain_guidance_where_they_should():
    t = 600
    plain_eps, plain_x0 = predict("cfg", {"w": 1.5}, t)
    assert torch.allclose(predict("apg", {"w": 1.5, "eta": 1.0}, t)[0], plain_eps, atol=1e-4)  # the parallel part kept
    assert torch.allclose(predict("rescale", {"w": 1.5, "phi": 0.0}, t)[0], plain_eps, atol=1e-4)
    assert plain_x0.abs().max() > 1  # so clipping has something to do
    clipped_x0 = predict("clip", {"w": 1.5}, t)[1]
    assert torch.allclose(clipped_x0, plain_x0.clamp(-1, 1), atol=1e-4)


def test_projected_guidance_steps_orthogonally_and_rescaling_keeps_the_conditional_spread():
    x0_c, x0_null = torch.randn(2, 3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    for offset in (0.0, 1.0):
        step = gv.guided_x0("apg", {"w": 2.0, "offset": offset}, x0_c, x0_null) - x0_c
        assert torch.allclose((step * (x0_c + offset)).flatten(1).sum(1), torch.zeros(3), atol=1e-3)
    rescaled = gv.guided_x0("rescale", {"w": 2.0, "phi": 1.0}, x0_c, x0_null)
    assert torch.allclose(rescaled.flatten(1).std(1), x0_c.flatten(1).std(1), atol=1e-5)


def test_autoguidance_steers_away_from_the_weaker_network_and_needs_one():
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    labels, t = torch.tensor([1, 3, 5, 7]), torch.full((4,), 500)
    eps_c, eps_weak = known_network(x, t, labels), weaker_network(x, t, labels)
    assert torch.allclose(predict("auto", {"w": 2.0}, 500)[0], eps_c + 2.0 * (eps_c - eps_weak))
    assert torch.equal(predict("auto", {"w": 0.0}, 500)[0], predict("cfg", {"w": 0.0}, 500)[0])
    # the weaker network keeps half of the label's part, so autoguidance with w is plain guidance with w / 2 here
    assert torch.allclose(predict("auto", {"w": 2.0}, 500)[0], predict("cfg", {"w": 1.0}, 500)[0], atol=1e-5)
    with pytest.raises(ValueError, match="needs the weaker guiding network"):
        gv.eps_model("auto", {"w": 1.0}, known_network, labels, SCHEDULE, NULL, T_MIN, GUIDED_EPS)


def test_the_handoff_is_each_network_guided_on_its_own_steps_and_needs_the_second():
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([1, 3, 5, 7])
    for t, network, w in ((500, known_network, 3.0), (999, known_network, 3.0), (499, weaker_network, 0.5), (200, weaker_network, 0.5)):
        expected = GUIDED_EPS(network, labels, w, NULL, T_MIN)(x, torch.full((4,), t))
        assert torch.equal(predict("handoff", {"w": 3.0, "at": 500, "low_w": 0.5}, t)[0], expected)
    assert torch.equal(predict("handoff", {"w": 3.0, "at": 500}, 300)[0],  # low_w defaults to w
                       GUIDED_EPS(weaker_network, labels, 3.0, NULL, T_MIN)(x, torch.full((4,), 300)))
    assert not torch.allclose(predict("handoff", {"w": 3.0, "at": 500}, 300)[0], predict("cfg", {"w": 3.0}, 300)[0])
    with pytest.raises(ValueError, match="give --low-t-weights"):
        gv.eps_model("handoff", {"w": 1.0, "at": 500}, known_network, labels, SCHEDULE, NULL, T_MIN, GUIDED_EPS)


@pytest.mark.parametrize("rule, options", [("cfg", {"w": 3.0}), ("interval", {"w": 3.0, "lo": 0, "hi": 999}),
                                           ("clip", {"w": 3.0}), ("apg", {"w": 3.0}), ("rescale", {"w": 3.0, "phi": 0.7}),
                                           ("auto", {"w": 3.0}), ("handoff", {"w": 3.0, "at": 500})])
def test_below_the_label_threshold_every_rule_is_the_unconditional_model(rule, options):
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(predict(rule, options, T_MIN - 1)[0], -0.2 * x)


def test_the_script_scores_every_run_at_a_tiny_size_and_leaves_the_shipped_weights_alone(tmp_path):
    shipped = hf.SHIPPED_GUIDED_WEIGHTS_PATH.read_bytes()
    gv.main(["--per-digit", "2", "--steps", "2", "--batch", "7", "--run", "cfg:w=0.5", "apg:w=1,offset=1",
             "--output-dir", str(tmp_path)])
    results = json.loads((tmp_path / "guidance_variants.json").read_text())
    assert list(results["runs"]) == ["cfg:w=0.5", "apg:w=1,offset=1"] and results["real"]["n"] == 20
    assert all(scores["n"] == 20 and 0 <= scores["accuracy"] <= 1 for scores in results["runs"].values())
    assert hf.SHIPPED_GUIDED_WEIGHTS_PATH.read_bytes() == shipped


def test_the_script_scores_autoguidance_with_the_weights_it_is_given_and_refuses_it_without(tmp_path, capsys):
    gv.main(["--per-digit", "2", "--steps", "2", "--batch", "20", "--run", "auto:w=1",
             "--guiding-weights", str(hf.SHIPPED_GUIDED_WEIGHTS_PATH), "--output-dir", str(tmp_path / "run")])
    results = json.loads((tmp_path / "run" / "guidance_variants.json").read_text())
    assert results["guiding_weights"] == str(hf.SHIPPED_GUIDED_WEIGHTS_PATH) and results["runs"]["auto:w=1"]["n"] == 20
    with pytest.raises(SystemExit):
        gv.main(["--per-digit", "2", "--run", "auto:w=1", "--output-dir", str(tmp_path / "refused")])
    assert "give its weights with --guiding-weights" in capsys.readouterr().err and not (tmp_path / "refused").exists()


def test_a_handoff_to_the_same_weights_is_plain_guidance_and_none_is_refused_without_them(tmp_path, capsys):
    gv.main(["--per-digit", "2", "--steps", "3", "--batch", "20", "--run", "cfg:w=0.5", "handoff:w=0.5,at=500",
             "--low-t-weights", str(hf.SHIPPED_GUIDED_WEIGHTS_PATH), "--output-dir", str(tmp_path / "run")])
    results = json.loads((tmp_path / "run" / "guidance_variants.json").read_text())
    plain, handoff = results["runs"]["cfg:w=0.5"], results["runs"]["handoff:w=0.5,at=500"]
    assert results["low_t_weights"] == str(hf.SHIPPED_GUIDED_WEIGHTS_PATH)
    assert {k: v for k, v in plain.items() if k != "seconds"} == {k: v for k, v in handoff.items() if k != "seconds"}
    with pytest.raises(SystemExit):
        gv.main(["--per-digit", "2", "--run", "handoff:w=0,at=500", "--output-dir", str(tmp_path / "refused")])
    assert "give its weights with --low-t-weights" in capsys.readouterr().err and not (tmp_path / "refused").exists()


def test_a_single_sample_per_digit_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gv.main(["--per-digit", "1", "--run", "cfg:w=0", "--output-dir", str(tmp_path)])
    assert "--per-digit must be at least 2" in capsys.readouterr().err and not (tmp_path / "guidance_variants.json").exists()
