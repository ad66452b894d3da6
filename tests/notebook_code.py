"""Run the class definitions of a notebook (its models) outside Jupyter, so tests can use the models it defines."""

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


def notebook_classes(notebook: str) -> dict:
    """Namespace holding every class defined by a code cell that starts with `class` in ROOT/notebook."""
    cells = json.loads((ROOT / notebook).read_text())["cells"]
    namespace = {"torch": torch, "nn": nn, "F": F, "math": math}
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and source.lstrip().startswith("class "):
            exec(compile(source, f"{notebook}:{cell.get('id', '?')}", "exec"), namespace)
    return namespace
