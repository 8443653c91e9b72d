"""targets/cuda/library_check.check_host_functions: a library that lacks a host shape function its VM bytecode
calls is refused at compile time (TVM's build has been seen to drop one, in some builds only), checked on small
ELF libraries built here with the C compiler."""
from __future__ import annotations

import shutil
import subprocess

import pytest

VM_TEXT = """@main:
  call  shape_func      in: %1           dst: %void
  call  shape_func1     in: %1           dst: %void
@shape_func packed_func;
@shape_func1 packed_func;
@vm.builtin.alloc_storage packed_func;
"""


def _library(tmp_path, names):
    src = tmp_path / "lib.c"
    src.write_text("".join(f"int __tvm_ffi_{n}(void) {{ return 0; }}\n" for n in names))
    out = tmp_path / "lib.so"
    subprocess.run([shutil.which("cc") or "gcc", "-shared", "-fPIC", str(src), "-o", str(out)], check=True)
    return out


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="needs a C compiler")
def test_a_missing_shape_function_is_refused_in_one_line(tmp_path):
    from ember.targets.cuda import CudaToolchainError
    from ember.targets.cuda.library_check import check_host_functions

    check_host_functions(VM_TEXT, _library(tmp_path, ["shape_func", "shape_func1"]))  # whole: passes
    with pytest.raises(CudaToolchainError, match=r"lib\.so: TVM's build left out the host function\(s\) shape_func1 "):
        check_host_functions(VM_TEXT, _library(tmp_path, ["shape_func"]))
    check_host_functions("@main:\n", _library(tmp_path, []))  # no shape functions: nothing to check
