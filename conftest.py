"""pytest configuration shared by the unit tests and the nbval notebook runs.

Set before any notebook kernel starts (kernels inherit this environment): smoke-mode sizes, the
shipped MNIST subset instead of a download, and a non-interactive matplotlib backend.
"""

import os

os.environ["SMOKE_TEST"] = "1"
os.environ["PLAYGROUND_OFFLINE_DATA"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
