"""The README is the front page: short, and every file it links or shows is in the repository."""

import re

from notebook_code import ROOT

README = (ROOT / "README.md").read_text()


def linked_paths(markdown: str) -> list[str]:
    """Relative targets of markdown links and images, and of HTML img tags (anchors and web addresses left out)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", markdown) + re.findall(r'<img src="([^"]+)"', markdown)
    return [t.split("#")[0] for t in targets if not t.startswith(("http://", "https://", "#"))]


def test_readme_is_short():
    assert len(README.splitlines()) <= 200


def test_every_link_and_image_in_the_readme_resolves():
    paths = linked_paths(README)
    assert "data/ddpm_samples.png" in paths  # the check finds links at all
    missing = [path for path in paths if not (ROOT / path).exists()]
    assert not missing, f"README.md links to files that are not in the repository: {missing}"


def test_the_results_document_links_resolve():
    results = ROOT / "experiments" / "RESULTS.md"
    missing = [path for path in linked_paths(results.read_text()) if not (results.parent / path).exists()]
    assert not missing, f"RESULTS.md links to files that are not in the repository: {missing}"


def test_link_finder_sees_links_and_images():
    assert linked_paths('[a](x.md) ![b](data/y.png) <img src="z.gif"> [web](https://e.org) [here](#top)') == ["x.md", "data/y.png", "z.gif"]
