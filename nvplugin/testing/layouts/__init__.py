"""Fake GPU layouts shipped with nvplugin (for --fake-gpus FILE, simulate, tests and benchmarks)."""
