"""pytest configuration shared by the unit tests and the nbval notebook runs.

Set before any notebook kernel starts (kernels inherit this environment): smoke-mode sizes, the
shipped MNIST subset instead of a download, and a non-interactive matplotlib backend.
"""

import os

os.environ["SMOKE_TEST"] = "1"
os.environ["PLAYGROUND_OFFLINE_DATA"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

# Under pytest-xdist (pytest.ini's `-n 2`), each worker and the notebook kernels it starts compute on one thread.
# Two workers then keep both cores busy without contending for them; on two threads each they spin against each
# other (on a 2-core AMD EPYC: over 18 minutes, against under 4 on one thread each).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # read by torch when a test first imports it, and by every kernel started


import pytest  # noqa: E402  (after the environment above, which torch reads when a test first imports it)


@pytest.fixture(scope="session")
def reference():
    """The quality measure's reference on the shipped digits and classifier, for tests/ and experiments/ alike."""
    import helper_functions as hf

    images, labels = hf.load_mnist_subset()
    return hf.QualityReference(hf.load_classifier(), images, labels)
