"""Run the notebooks top to bottom, headless, and save them with their outputs; this rewrites every committed figure.

    python run_notebooks.py                         # both notebooks, in reading order
    python run_notebooks.py DDPM.ipynb              # one of them

Each notebook runs in a fresh kernel with the environment as it is (set no variable for the default path), is
saved in place with its progress bars coalesced to their last state, and its total and five slowest cells are
printed. Figures go to data/ (the notebooks' full mode); the shipped data, weights and classifier are never written.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent
NOTEBOOKS = ["toy_diffusion.ipynb", "DDPM.ipynb", "guided_diffusion.ipynb"]


def cell_seconds(cell) -> float:
    """Wall-clock seconds of one executed cell, from the timestamps nbclient records."""
    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not start or not end:
        return 0.0
    return (datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()


def run(path: Path) -> None:
    """Execute path in place and print how long it and its slowest cells took."""
    import nbformat  # here, not at the top: experiments/time_notebook.py imports NOTEBOOKS where Jupyter is missing
    from nbclient import NotebookClient
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    total = time.perf_counter() - start
    notebook, _ = CoalesceStreamsPreprocessor().preprocess(notebook, {})
    timed = [(cell_seconds(cell), index) for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)  # timestamps differ every run: keep them out of the committed file
    nbformat.write(notebook, path)
    slowest = ", ".join(f"cell {index} {seconds:.0f} s" for seconds, index in sorted(timed, reverse=True)[:5])
    print(f"{path.name}: {total:.0f} s in all; slowest: {slowest}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", default=NOTEBOOKS, help="notebooks to run (default: both, in reading order)")
    args = parser.parse_args()
    unknown = [name for name in args.notebooks if name not in NOTEBOOKS]
    if unknown:
        sys.exit(f"unknown notebook(s) {unknown}; choose from {NOTEBOOKS}")
    for name in args.notebooks:
        run(ROOT / name)


if __name__ == "__main__":
    main()
