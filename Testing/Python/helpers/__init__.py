"""Shared test helpers (not tests): imported as ``from helpers.<module> import ...``.

``Testing/Python`` is on ``sys.path`` for pytest (``pythonpath`` in pyproject.toml); scripts
outside the test tree (Testing/Benchmarks, Training) insert it themselves.
"""
