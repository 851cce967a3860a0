"""Test support for the eventflow test suites, tools and benchmarks (a development dependency of the
workspace only; no service or emulator image installs it)."""

from eventflow_testing.polling import eventually

__all__ = ["eventually"]
