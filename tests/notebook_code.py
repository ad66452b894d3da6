"""Run a notebook's definitions outside Jupyter, so tests and scripts use the very models and loops it defines,
and read its configuration cell's settings."""

import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def code_cells(notebook: str) -> list[dict]:
    """The notebook's code cells, in order, as saved."""
    return [cell for cell in json.loads((ROOT / notebook).read_text())["cells"] if cell["cell_type"] == "code"]


def notebook_classes(notebook: str) -> dict:
    """Namespace after running the notebook's first code cell (its imports) and every code cell that starts with
    `class` or `def` (its models, training loop and small functions), in order. No other cell runs."""
    namespace: dict = {}
    for index, cell in enumerate(code_cells(notebook)):
        source = "".join(cell["source"])
        if index == 0 or source.lstrip().startswith(("class ", "def ")):
            exec(compile(source, f"{notebook}:{cell.get('id', '?')}", "exec"), namespace)
    return namespace


def notebook_settings(notebook: str) -> dict:
    """The NAME = literal assignments of the notebook's configuration cell (the code cell that sets SEED), read
    without running it. A name set by `small if SMOKE_TEST else full` reads as its full-mode value when that is a
    literal; a name set by another expression of literals and the settings above it (such as `500 if FLAG else 0`)
    reads as its value; a name that needs anything else is left out."""
    sources = ("".join(cell["source"]) for cell in code_cells(notebook))
    source = next(text for text in sources if "SEED = " in text)
    settings = {}
    for statement in ast.parse(source).body:
        if not isinstance(statement, ast.Assign):
            continue
        target, value = statement.targets[0], statement.value
        pairs = zip(target.elts, value.elts) if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) else [(target, value)]
        for name, expression in pairs:
            if isinstance(expression, ast.IfExp) and isinstance(expression.test, ast.Name) and expression.test.id == "SMOKE_TEST":
                expression = expression.orelse  # the full-mode value
            try:
                settings[name.id] = ast.literal_eval(expression)
            except ValueError:  # not a literal: an expression of the settings above (`FLAG`, `a if FLAG else b`) or none
                try:
                    settings[name.id] = eval(compile(ast.Expression(expression), notebook, "eval"), {"__builtins__": {}}, dict(settings))
                except Exception:  # it needs the environment, a function or a module: not a setting to compare
                    pass
    return settings


def notebook_weights_config(notebook: str = "DDPM.ipynb") -> dict:
    """The configuration the DDPM notebook saves with its weights and checks on loading (its `weights_config`),
    built from its configuration cell, so scripts and tests never keep a copy of their own."""
    settings = notebook_settings(notebook)
    return {"dim": settings["DIM"], "dim_mults": list(settings["DIM_MULTS"]), "T": settings["T"],
            "beta_start": settings["BETA_START"], "beta_end": settings["BETA_END"], "image_size": settings["IMAGE_SIZE"]}
