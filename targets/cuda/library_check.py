"""Static checks of an exported CUDA library: compiled cubins per arch, no embedded CUDA source.

A build without a loadable CUDA runtime still "succeeds" but ships kernels as CUDA source, which
fails to load in runtime-only mode (tvm-core.md §0.1, §6). This module finds that out by scanning
the library bytes; it needs neither tvm nor a GPU.
"""
from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from . import CudaToolchainError
from .nvcc import sm_number

FATBIN_MAGIC = 0xBA55ED50
_FATBIN_HEADER = struct.Struct("<IHHQ")  # magic, version, header size, payload size
# kind, attr, header size, payload size, compressed size, _, minor, major, arch
_ENTRY_HEADER = struct.Struct("<HHIQIIHHI")
_ENTRY_PTX, _ENTRY_ELF = 1, 2
_ELF_MAGIC = b"\x7fELF"
_ELFOSABI_CUDA = 0x41
_EM_CUDA = 190
_PDL_TAG = b"tirx.use_programtic_dependent_launch"  # pdl.TAG, stored once per tagged kernel's function info
_PTX_TEXT = re.compile(rb"\.version \d+\.\d+\s+\.target sm_\d+")


@dataclass
class CudaLibraryReport:
    """What a library embeds: fatbins, cubin archs (`"sm_90"`, one per image), PTX, CUDA source."""

    path: str
    fatbins: int = 0
    cubin_archs: list[str] = field(default_factory=list)
    ptx_images: int = 0
    global_sources: int = 0
    pdl_kernels: int = 0  # kernels launched with programmatic dependent launch (their launch-param tag, pdl.py)

    @property
    def has_ptx(self) -> bool:
        return self.ptx_images > 0


def _cubin_sm(data: bytes, off: int) -> int | None:
    """The SM number of the CUDA ELF at `off`, or None if it is not one."""
    if data[off:off + 4] != _ELF_MAGIC or off + 64 > len(data) or data[off + 4] != 2:
        return None
    if data[off + 7] != _ELFOSABI_CUDA or struct.unpack_from("<H", data, off + 18)[0] != _EM_CUDA:
        return None
    abi_version = data[off + 8]
    e_flags = struct.unpack_from("<I", data, off + 0x30)[0]
    # CUDA ELF ABI v8+ (CUDA 12.8+) moved the SM number from bits 0-7 to bits 8-15.
    return (e_flags >> 8) & 0xFF if abi_version >= 8 else e_flags & 0xFF


def _fatbins(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each well-formed fatbin container in `data`."""
    magic = struct.pack("<I", FATBIN_MAGIC)
    pos = data.find(magic)
    while pos >= 0:
        if pos + _FATBIN_HEADER.size <= len(data):
            _, version, header_size, size = _FATBIN_HEADER.unpack_from(data, pos)
            end = pos + header_size + size
            if version == 1 and header_size >= _FATBIN_HEADER.size and end <= len(data):
                yield pos, end
                pos = data.find(magic, end)
                continue
        pos = data.find(magic, pos + 1)


def _scan_fatbin(data: bytes, start: int, end: int, report: CudaLibraryReport) -> None:
    off = start + _FATBIN_HEADER.unpack_from(data, start)[2]
    while off + _ENTRY_HEADER.size <= end:
        kind, _, header_size, size, compressed, _, _, _, arch = _ENTRY_HEADER.unpack_from(data, off)
        if header_size < _ENTRY_HEADER.size or off + header_size + size > end:
            break
        payload = off + header_size
        if kind == _ENTRY_PTX:
            report.ptx_images += 1
        elif kind == _ENTRY_ELF:
            # Trust the ELF header when the image is stored uncompressed, the entry header otherwise.
            sm = None if compressed else _cubin_sm(data, payload)
            report.cubin_archs.append(f"sm_{sm if sm is not None else arch}")
        off = payload + size


def inspect_cuda_library(path: str | os.PathLike[str]) -> CudaLibraryReport:
    """Scan a library's bytes for fatbins, cubins (inside fatbins or bare), PTX and `__global__` text."""
    with open(path, "rb") as f:
        data = f.read()
    report = CudaLibraryReport(path=os.fspath(path), global_sources=data.count(b"__global__"),
                               pdl_kernels=data.count(_PDL_TAG))
    spans = list(_fatbins(data))
    report.fatbins = len(spans)
    for start, end in spans:
        _scan_fatbin(data, start, end, report)
    pos = data.find(_ELF_MAGIC, 1)  # bare cubins (e.g. nvrtc), outside any fatbin
    while pos >= 0:
        if not any(s <= pos < e for s, e in spans) and (sm := _cubin_sm(data, pos)) is not None:
            report.cubin_archs.append(f"sm_{sm}")
        pos = data.find(_ELF_MAGIC, pos + 1)
    report.ptx_images += len(_PTX_TEXT.findall(data))
    return report


def check_cuda_library(path: str | os.PathLike[str], archs: Sequence[str]) -> CudaLibraryReport:
    """Raise `CudaToolchainError` unless the library holds a cubin for every arch and no CUDA source."""
    report = inspect_cuda_library(path)
    name = os.fspath(path)
    if report.global_sources:
        raise CudaToolchainError(
            f"library {name} holds CUDA source instead of compiled kernels ({report.global_sources} `__global__` "
            "strings); build it in a process that ran ember.targets.cuda.stub_driver.prepare_cuda_compile_process() "
            "before `import tvm`")
    found = {sm_number(a) for a in report.cubin_archs}
    missing = [a for a in archs if sm_number(a) not in found]
    if missing:
        raise CudaToolchainError(
            f"library {name} lacks cubins for {', '.join(missing)} "
            f"(found: {', '.join(sorted(set(report.cubin_archs))) or 'none'})")
    return report


_HOST_SHAPE_FUNCTION = re.compile(r"^@(shape_func\d*) packed_func;$", re.MULTILINE)


def check_host_functions(vm_text: str, path: str | os.PathLike[str]) -> None:
    """Every host shape function the VM's bytecode (`Executable.as_text()`) calls is exported by the library.
    TVM's build has been seen to leave one out of a llama3-8b q0f16 library, in some builds only (DESIGN.md
    "Shipping"); such a library fails when the call comes, so the compile stops here instead of shipping it."""
    import lief

    wanted = set(_HOST_SHAPE_FUNCTION.findall(vm_text))
    if not wanted:
        return
    binary = lief.parse(str(path))
    exported = {symbol.name for symbol in binary.exported_symbols} if binary is not None else set()
    missing = sorted(name for name in wanted if f"__tvm_ffi_{name}" not in exported)
    if missing:
        raise CudaToolchainError(f"{os.path.basename(path)}: TVM's build left out the host function(s) "
                                 f"{', '.join(missing)} that the VM calls (an intermittent TVM build issue); "
                                 f"compile again")
