"""End-to-end test kernels for the emulator (loaded by tests/sim/conftest.py after nki_moe.sim.install())."""
