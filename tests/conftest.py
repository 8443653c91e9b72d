"""The suite compiles and runs artifacts in the same processes: TVM is imported with its compiler before any test
can call `ember.load` (which would otherwise load TVM's runtime alone, and a runtime-only process cannot compile).
Runtime-only behaviour is tested in fresh subprocesses (tests/runtime/test_runtime_only.py)."""
import tvm  # noqa: F401
