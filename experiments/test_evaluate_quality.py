"""The multi-draw evaluation script, at a tiny size: seeds, per-draw scores and their summary."""

import json
import math
from pathlib import Path

import pytest

from evaluate_quality import main, parse_sampler


def run_script(tmp_path: Path, capsys, *arguments: str) -> dict:
    """The script's main in this process (a fresh interpreter would spend seconds importing torch again)."""
    output = tmp_path / "quality.json"
    main(["--device", "cpu", "--output", str(output), *arguments])
    return {"printed": capsys.readouterr().out, **json.loads(output.read_text())}


def test_draws_are_seeded_scored_and_summarised(tmp_path, capsys):
    result = run_script(tmp_path, capsys, "--n", "12", "--chunk", "8", "--draws", "2", "--seed", "5", "--samplers", "ddim:2", "ddim:2:1")
    assert result["draws"] == 2 and result["n"] == 12
    for spec in ("ddim:2", "ddim:2:1"):
        draws, summary = result["results"][spec]["draws"], result["results"][spec]["summary"]
        assert [d["seed"] for d in draws] == [5, 1005]  # draw k from seed + 1000 k
        fds = [d["classifier_fd"] for d in draws]
        assert fds[0] != fds[1] and all(math.isfinite(fd) for fd in fds)
        assert summary["classifier_fd"]["mean"] == pytest.approx(sum(fds) / 2)
        assert summary["classifier_fd"]["sd"] == pytest.approx(abs(fds[0] - fds[1]) / math.sqrt(2))
    assert "times ddim:2's" in result["printed"]
    assert (result["chunk"], result["weights"]) == (8, "ddpm_mnist_ema.pt")
    # one draw of the same seed is the first draw of the two
    single = run_script(tmp_path, capsys, "--n", "12", "--chunk", "8", "--seed", "5", "--samplers", "ddim:2")
    assert single["results"]["ddim:2"]["classifier_fd"] == pytest.approx(result["results"]["ddim:2"]["draws"][0]["classifier_fd"])


def test_sampler_specs_are_parsed_or_refused():
    assert parse_sampler("ddim:50") == ("ddim:50", "ddim", 50, 0.0)
    assert parse_sampler("ddim:20:0.5") == ("ddim:20:0.5", "ddim", 20, 0.5)
    assert parse_sampler("ancestral:1000") == ("ancestral:1000", "ancestral", 1000, 0.0)
    for spec in ("ancestral:10:0.5", "ddim", "ddim:fifty", "ddim:0", "ddim:1001", "ddim:50:-1", "ddim:50:1:2", "euler:50"):
        with pytest.raises(ValueError, match="bad sampler"):
            parse_sampler(spec)


def test_bad_arguments_are_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--draws", "0", "--output", str(tmp_path / "q.json")])
    assert exit_info.value.code == 2 and "--draws" in capsys.readouterr().err and not (tmp_path / "q.json").exists()
