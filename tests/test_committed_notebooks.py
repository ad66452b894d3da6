"""The committed notebooks are what a reader sees first, on GitHub or in Jupyter: check they are a clean full run.

A committed notebook carries the outputs of one top-to-bottom run, kernel name `python3`, no machine paths, no
base64 images in markdown, and stays under about 3 MB. Every measured number in its text (a decimal or a percentage)
was printed by a cell above it, or is a setting written in one, as CONVENTIONS.md's "lesson, not log" asks: after a
rerun whose numbers moved, the test names the cell that still quotes the old one. A progress bar must show once, as
its last state: executed by nbconvert, tqdm leaves one stream output per refresh, each starting with a carriage
return, and a viewer that does not process carriage returns prints every one of them (a hundred lines of
"training: 1%|..."). `run_notebooks.py` produces notebooks which pass.
"""

import re

import nbformat
import pytest

from notebook_code import ROOT

NOTEBOOKS = ["toy_diffusion.ipynb", "DDPM.ipynb", "guided_diffusion.ipynb"]
MAX_BYTES = 3 * 1024 * 1024
MACHINE_PATH = re.compile(r"(/work/|/home/|/root/|/Users/|/tmp/|[A-Z]:\\Users\\)")
# A decimal such as 21.75 or a percentage such as 95% (its number without the sign), not part of a longer token.
MEASURED_NUMBER = re.compile(r"(?<![\w.])(\d+\.\d+|\d+(?=%))(?![\w.]*\w)")
# Numbers in the text that no cell prints because they are facts, each with the reason.
NUMBER_FACTS = {
    ("toy_diffusion.ipynb", "0.5"): "the mean of uniform noise on [0, 1]",
    ("toy_diffusion.ipynb", "95"): "the copies measure's definition: closer than 95% of real digits' nearest neighbours",
    ("toy_diffusion.ipynb", "0.05"): "what that definition gives real digits, 1 - 0.95",
    ("guided_diffusion.ipynb", "1.25"): "the guidance scale s = 1 + w at the printed w = 0.25",
}


def output_text(output) -> str:
    """The text a reader sees of one output: a stream's text, a result's plain text, an error's traceback."""
    if output.output_type == "stream":
        return output.text
    if output.output_type == "error":
        return "\n".join(output.traceback)
    return str(output.get("data", {}).get("text/plain", ""))


def progress_redraws(outputs) -> list[str]:
    """Stream outputs that a viewer without carriage-return handling would show as extra lines, as short excerpts:
    text overwritten by a later carriage return on the same line, or a stream continued in a separate output."""
    found = []
    for previous, output in zip([None, *outputs], outputs):
        if output.output_type != "stream":
            continue
        if re.search(r"\r(?!\n|$)", output.text):
            found.append(f"carriage return in {output.text[:60]!r}")
        if previous is not None and previous.output_type == "stream" and previous.name == output.name:
            found.append(f"{output.name} split across outputs at {output.text[:60]!r}")
    return found


def unprinted_numbers(cells, facts=frozenset()) -> list[tuple[int, str]]:
    """(cell index, number) for each measured number in a markdown cell that no code cell above it shows, in its
    source or its outputs, and that is not among `facts`; 95% matches a printed 95.0%. arXiv identifiers and link
    targets are not numbers."""
    shown, found = set(), []
    for index, cell in enumerate(cells):
        if cell.cell_type == "code":
            texts = [cell.source, *(output_text(output) for output in cell.get("outputs", []))]
            shown.update(float(number) for text in texts for number in MEASURED_NUMBER.findall(text))
        elif cell.cell_type == "markdown":
            prose = re.sub(r"\(https?://[^)]*\)|arXiv \d{4}\.\d{4,5}", "", cell.source)
            found += [(index, number) for number in MEASURED_NUMBER.findall(prose)
                      if float(number) not in shown and number not in facts]
    return found


@pytest.fixture(scope="module", params=NOTEBOOKS)
def notebook(request):
    path = ROOT / request.param
    return path, nbformat.read(path, as_version=4)


def test_notebook_is_small_and_uses_the_python3_kernel(notebook):
    path, nb = notebook
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size / 1e6:.1f} MB; keep it under 3 MB"
    assert nb.metadata.kernelspec.name == "python3"


def test_every_code_cell_ran_once_in_order_without_error(notebook):
    path, nb = notebook
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code_cells]
    assert counts == list(range(1, len(code_cells) + 1)), f"{path.name}: not one top-to-bottom run: {counts}"
    errors = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and any(o.output_type == "error" for o in cell.outputs)]
    assert not errors, f"{path.name}: cells {errors} end in an error"


def test_outputs_name_no_machine_path_and_markdown_embeds_no_image(notebook):
    path, nb = notebook
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            assert "data:image" not in cell.source, f"{path.name} cell {index}: link the figure in data/ instead"
        for output in cell.get("outputs", []):
            match = MACHINE_PATH.search(output_text(output))
            assert match is None, f"{path.name} cell {index} prints a machine path: {match.group(0)!r}"


def test_every_number_in_the_text_was_printed_above_it(notebook):
    path, nb = notebook
    facts = {number for (name, number) in NUMBER_FACTS if name == path.name}
    missing = unprinted_numbers(nb.cells, facts)
    assert not missing, (
        f"{path.name}: the text quotes numbers that no cell above it printed, (cell, number): {missing}; "
        "quote this run's outputs, or add a fact to NUMBER_FACTS with its reason"
    )


def test_unprinted_numbers_are_found():
    """The check above can fail: a stale measurement is caught, and so is one printed only below the text; a printed
    one, a setting and an arXiv id pass."""
    cells = [nbformat.v4.new_markdown_cell("See [arXiv 2006.11239](https://arxiv.org/abs/2006.11239)."),
             nbformat.v4.new_code_cell("P_UNCOND = 0.2", outputs=[
                 nbformat.v4.new_output("stream", name="stdout", text="accuracy 95.0%, FD 21.75\n")]),
             nbformat.v4.new_markdown_cell("With p = 0.2: FD 21.75 and 95%, against 23.53; 97% of them."),
             nbformat.v4.new_markdown_cell("FD 0.5 by fact."),
             nbformat.v4.new_code_cell("print(23.53)", outputs=[nbformat.v4.new_output("stream", name="stdout", text="23.53\n")])]
    assert unprinted_numbers(cells) == [(2, "23.53"), (2, "97"), (3, "0.5")]
    assert unprinted_numbers(cells, facts={"0.5"}) == [(2, "23.53"), (2, "97")]


def test_each_progress_bar_shows_once_in_its_last_state(notebook):
    path, nb = notebook
    redraws = {index: progress_redraws(cell.outputs) for index, cell in enumerate(nb.cells) if cell.cell_type == "code"}
    redraws = {index: found for index, found in redraws.items() if found}
    assert not redraws, (
        f"{path.name}: progress bars saved with every redraw in cells {sorted(redraws)} (first: {next(iter(redraws.values()))[0]}); "
        "regenerate them with `python run_notebooks.py`, which coalesces the streams"
    )


def test_progress_redraws_are_found():
    """The check above can fail: a tqdm-like pair of outputs is caught, a coalesced one passes."""
    redrawn = [nbformat.v4.new_output("stream", name="stderr", text="\rtraining:  0%|"),
               nbformat.v4.new_output("stream", name="stderr", text="\rtraining: 50%|")]
    assert len(progress_redraws(redrawn)) == 3
    tidy = [nbformat.v4.new_output("stream", name="stderr", text="training: 100%|\n"),
            nbformat.v4.new_output("stream", name="stdout", text="800 steps\n")]
    assert progress_redraws(tidy) == []
