"""Run notebooks top to bottom without Jupyter and time each code cell: for the GPU machine, which has PyTorch but
no Jupyter, where the README's GPU times come from. Here, run_notebooks.py does the same and keeps the outputs.

    python experiments/time_notebook.py DDPM.ipynb --output-dir runs/gpu_times     # one notebook
    python experiments/time_notebook.py DDPM.ipynb guided_diffusion.ipynb --output-dir "$OUT"   # in reading order

Each notebook's code cells run in order in one fresh namespace, from the repository root, with the environment as it
is (set no variable for the learner's path; SMOKE_TEST=1 shrinks the sizes as under nbval) and matplotlib headless.
Nothing is displayed or saved into the notebook; what its cells print goes to stdout. As with run_notebooks.py, a
full-mode run writes the notebook's figures into data/ and its own weights into runs/ (never the shipped files).
After each notebook, <output-dir>/<notebook stem>_times.json holds the device, the total and every cell's seconds,
so a run cut short keeps the notebooks that finished; the total and the five slowest cells are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from helper_functions import is_smoke_test  # noqa: E402
from guided import machine  # noqa: E402  (beside this script)
from run_notebooks import NOTEBOOKS  # noqa: E402


def finish_gpu_work() -> None:
    """Wait for queued GPU work, so that a cell's time includes what it launched."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_notebook(path: Path) -> dict:
    """Execute the notebook's code cells in order in one namespace; return the total and each cell's seconds (cells
    numbered among all cells, as in the saved notebook). An error in a cell stops the run, its traceback naming the
    cell."""
    namespace: dict = {"__name__": "__main__"}
    cells = []
    start = time.perf_counter()
    for position, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        cell_start = time.perf_counter()
        exec(compile("".join(cell["source"]), f"{path.name}, cell {position}", "exec"), namespace)
        finish_gpu_work()
        plt.close("all")
        cells.append({"cell": position, "seconds": round(time.perf_counter() - cell_start, 2)})
    return {"notebook": path.name, "device": machine(), "smoke_test": is_smoke_test(),
            "total_seconds": round(time.perf_counter() - start, 1), "cells": cells}


def slowest(result: dict, count: int = 5) -> str:
    """The count slowest cells as 'cell N S s, ...'."""
    ranked = sorted(result["cells"], key=lambda cell: cell["seconds"], reverse=True)[:count]
    return ", ".join(f"cell {cell['cell']} {cell['seconds']:.0f} s" for cell in ranked)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", help=f"notebooks to run, from {NOTEBOOKS}")
    parser.add_argument("--output-dir", type=Path, required=True, help="where <notebook stem>_times.json goes")
    args = parser.parse_args(argv)
    unknown = [name for name in args.notebooks if name not in NOTEBOOKS]
    if unknown:
        parser.error(f"unknown notebook(s) {unknown}; choose from {NOTEBOOKS}")
    plt.switch_backend("Agg")  # headless: plt.show() draws nothing (helper_functions has imported pyplot already)
    os.chdir(ROOT)  # the notebooks import helper_functions and read data/ from the repository root
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for notebook in args.notebooks:
        result = time_notebook(ROOT / notebook)
        (args.output_dir / f"{Path(notebook).stem}_times.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"{notebook} on {result['device']}: {result['total_seconds']:.0f} s in all; slowest: {slowest(result)}", flush=True)


if __name__ == "__main__":
    main()
