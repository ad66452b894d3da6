"""experiments/time_notebook.py: a notebook's code cells run in order in one namespace, each timed."""

import json
import sys
import traceback
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import time_notebook  # noqa: E402


def write_notebook(path: Path, cells: list[tuple[str, str]]) -> Path:
    path.write_text(json.dumps({"cells": [{"cell_type": kind, "source": [source], "metadata": {}} for kind, source in cells],
                                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_code_cells_run_in_order_in_one_namespace_and_are_timed(tmp_path, capsys):
    notebook = write_notebook(tmp_path / "lesson.ipynb", [
        ("markdown", "# A lesson"),
        ("code", "import time\nsteps = [1]"),
        ("markdown", "Then a slow cell:"),
        ("code", "time.sleep(0.2)\nsteps.append(2)\nprint('steps', steps)"),
        ("code", "import matplotlib.pyplot as plt\nplt.subplots()\nplt.show()"),
    ])
    result = time_notebook.time_notebook(notebook)
    assert "steps [1, 2]" in capsys.readouterr().out
    assert [cell["cell"] for cell in result["cells"]] == [1, 3, 4]  # numbered among all cells, markdown skipped
    assert result["cells"][1]["seconds"] >= 0.2 > result["cells"][0]["seconds"]
    assert result["total_seconds"] >= 0.2 and result["notebook"] == "lesson.ipynb" and result["device"]
    import matplotlib.pyplot as plt
    assert not plt.get_fignums()  # each cell's figures closed


def test_a_failing_cell_stops_the_run_and_names_itself(tmp_path):
    notebook = write_notebook(tmp_path / "broken.ipynb", [("code", "x = 1"), ("code", "x = y")])
    with pytest.raises(NameError) as failure:
        time_notebook.time_notebook(notebook)
    assert "broken.ipynb, cell 1" in [frame.filename for frame in traceback.extract_tb(failure.value.__traceback__)]


def test_unknown_notebooks_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        time_notebook.main(["lesson.ipynb", "--output-dir", str(tmp_path)])
    assert "unknown notebook" in capsys.readouterr().err and not list(tmp_path.iterdir())
