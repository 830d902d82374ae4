"""End-to-end test kernels of the emulator, in the style of the public NKI tutorials.

Import them as ``from tests.sim.kernels import rmsnorm`` (the repository root is on sys.path under
``python -m pytest`` and through tests/conftest.py, which binds ``nki`` to the emulator first).
"""
