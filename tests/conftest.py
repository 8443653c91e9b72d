"""The suite compiles and runs artifacts in the same processes: TVM is imported with its compiler before any test
can call `ember.load` (which would otherwise load TVM's runtime alone, and a runtime-only process cannot compile).
Runtime-only behaviour is tested in fresh subprocesses (tests/runtime/test_runtime_only.py)."""
import tvm  # noqa: F401

# Property-based fuzzing of the parsers (tests/*/test_fuzz_*.py): bounded for CI; EMBER_FUZZ_EXAMPLES=N runs longer.
import os  # noqa: E402

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ember", max_examples=int(os.environ.get("EMBER_FUZZ_EXAMPLES", "60")), deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
                          derandomize=os.environ.get("EMBER_FUZZ_EXAMPLES") is None)
settings.load_profile("ember")
