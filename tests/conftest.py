"""Shared pytest setup: the hypothesis profiles of the property tests (tests/test_fuzz.py).

``ci`` (the default) is derandomised, so every run draws the same examples and a failure
reproduces; ``HYPOTHESIS_PROFILE=explore pytest tests/test_fuzz.py`` draws fresh random examples
to look for new failures (``FUZZ_EXAMPLES=3000`` raises the count per test, see test_fuzz.py).
"""

import os

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the test extra is not installed: only tests/test_fuzz.py needs it
    settings = None

if settings is not None:
    _common = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("ci", derandomize=True, database=None, **_common)
    settings.register_profile("explore", derandomize=False, **_common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    """Run the tests marked ``slow`` first: with pytest-xdist the long ones then overlap with the
    many short ones instead of leaving one worker busy at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_configure(config):
    """Under pytest-xdist, give each worker its share of the cores (torch would give every
    worker all of them, and the workers and their subprocesses would fight for them)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        import torch

        torch.set_num_threads(threads)
