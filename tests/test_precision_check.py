"""tests/precision_check.py at a tiny size: the shipped network treats each image on its own, and TF32 moves it."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "precision_check.py"


def test_batch_size_does_not_matter_and_tf32_does_a_little():
    completed = subprocess.run([sys.executable, str(SCRIPT), "--n", "3", "--steps", "3", "--networks", "float32", "float32_per_image", "tf32"],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in completed.stdout.splitlines()[2:]}
    assert rows["float32"][:2] == [0.0, 0.0]  # the reference against itself
    assert rows["float32_per_image"][1] < 1e-4  # one image per call: the same images up to float32 rounding
    assert 1e-4 < rows["tf32"][1] < 0.5  # TF32's rounding moves them, but not far
