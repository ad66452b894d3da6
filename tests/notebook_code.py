"""Run a notebook's definitions outside Jupyter, so tests and scripts use the very models and loops it defines."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def notebook_classes(notebook: str) -> dict:
    """Namespace after running the notebook's first code cell (its imports) and every code cell that starts with
    `class` or `def` (its models, training loop and small functions), in order. No other cell runs."""
    cells = [cell for cell in json.loads((ROOT / notebook).read_text())["cells"] if cell["cell_type"] == "code"]
    namespace: dict = {}
    for index, cell in enumerate(cells):
        source = "".join(cell["source"])
        if index == 0 or source.lstrip().startswith(("class ", "def ")):
            exec(compile(source, f"{notebook}:{cell.get('id', '?')}", "exec"), namespace)
    return namespace
