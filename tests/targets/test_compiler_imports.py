"""The compiler side in a fresh process imports neither torch nor transformers (tvm_ffi imports torch when it can:
seconds of start-up and exit for nothing)."""
from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json, sys
import ember.compiler, ember.describe
from ember.frontend.importers import gguf_source, gguf_tokenizer
from ember.targets import lower
from ember.targets.cpu.build import build_cpu, cpu_lowerings
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))))
"""


def test_compiler_imports_no_torch() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
