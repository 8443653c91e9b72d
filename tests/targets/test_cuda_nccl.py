"""ember's NCCL collectives for cuda tensor-parallel builds (targets/cuda/nccl.py, kernels/nccl_collectives.cu),
without a GPU: a sharded cuda lowering calls them and marks the object for the library; the object compiles (nvcc),
exports its packed functions, loads without NCCL or a GPU, dlopens the nvidia-nccl wheel's libnccl, makes NCCL's
unique id, and says in one line why it cannot start a communicator here."""
import shutil
import subprocess
from pathlib import Path

import pytest

from ember.errors import ArtifactError
from ember.frontend.config import ModelConfig
from ember.frontend.models import build_module
from ember.passes.manager import PassManager, default_pipeline
from ember.runtime.nccl import NcclFunctions, NcclGroup, wheel_library
from ember.runtime.tensor_parallel import HostGroup

CONFIG = {"model_type": "llama", "vocab_size": 320, "hidden_size": 128, "intermediate_size": 256,
          "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
          "max_position_embeddings": 64, "tie_word_embeddings": False}

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs the CUDA toolkit (nvcc)")


def sharded_lowering(monkeypatch, collectives=None):
    from ember.targets.cuda import CudaTarget
    from ember.targets.lower import lower

    if collectives:
        monkeypatch.setenv("EMBER_TP_COLLECTIVES", collectives)
    module = PassManager(default_pipeline("q0f16", tensor_parallel=2)).run(
        build_module(ModelConfig.from_dict(CONFIG), "tiny", dtype="float16", static_decode=True))
    target = CudaTarget.parse("cuda:sm_90")
    relax_mod, _ = lower(module, target)
    return target, relax_mod.script()


def test_a_sharded_cuda_lowering_calls_ember_nccl_collectives(monkeypatch):
    target, script = sharded_lowering(monkeypatch)
    assert '"ember_tp_nccl_allreduce"' in script and '"ember_tp_nccl_allgather"' in script
    assert "runtime.disco" not in script
    assert target._nccl.used  # so build() links the NCCL object into model.so
    target, script = sharded_lowering(monkeypatch, "host")  # the one-GPU check's builds: no NCCL
    assert '"ember.tp.host_allreduce"' in script and not target._nccl.used


@pytest.fixture(scope="module")
def nccl_library(tmp_path_factory):
    """The object as `ember compile` makes it (cached like the prefill GEMMs'), linked alone into a shared library
    (model.so links it with TVM's code the same way)."""
    if shutil.which("nvcc") is None:
        pytest.skip("needs the CUDA toolkit (nvcc)")
    import tvm_ffi

    from ember.targets.cuda import CudaToolchainError
    from ember.targets.cuda.nccl import EXPORTS, NcclCollectives, nccl_include
    from ember.targets.cuda.prefill_gemm import tvm_ffi_include

    try:
        nccl_include()
    except CudaToolchainError as err:
        pytest.skip(str(err))
    marker = NcclCollectives()
    marker.used = True
    build = marker.start_objects()
    objects = build.result()
    library = tmp_path_factory.mktemp("nccl") / "libnccl_collectives.so"
    ffi_lib = Path(tvm_ffi_include()).parent / "lib"
    subprocess.run(["g++", "-shared", "-o", str(library), *map(str, objects), *build.link_options(),
                    f"-L{ffi_lib}", "-ltvm_ffi"], check=True, capture_output=True)
    module = tvm_ffi.load_module(str(library))
    return module, EXPORTS


@needs_nvcc
def test_the_object_exports_its_functions_and_loads_without_nccl(nccl_library):
    module, exports = nccl_library
    for name in exports:
        assert module.get_function(name) is not None, name
    with pytest.raises(RuntimeError, match="ember_tp_nccl_unique_id: NCCL is not loaded"):
        module["ember_tp_nccl_unique_id"]()  # before any open: the library loaded, no NCCL asked for
    with pytest.raises(RuntimeError, match=r"^ember_tp_nccl_open: cannot load /nowhere/libnccl.so.2: .*No such file"):
        module["ember_tp_nccl_open"]("/nowhere/libnccl.so.2")
    with pytest.raises(RuntimeError, match=r"^ember_tp_nccl_open: libm.so.6 has no ncclGetVersion"):
        module["ember_tp_nccl_open"]("libm.so.6")


@needs_nvcc
@pytest.mark.skipif(wheel_library() is None, reason="needs the nvidia-nccl-cu13 wheel (ember[cuda])")
def test_the_wheel_library_opens_and_a_group_fails_in_one_line_without_a_gpu(nccl_library):
    module, _ = nccl_library
    functions = NcclFunctions.of(module, "libnccl_collectives.so")
    assert functions.open(str(wheel_library())) >= 22800
    assert len(bytes(functions.unique_id())) == 128
    with pytest.raises(ArtifactError, match=r"^NCCL 2\.\d+\.\d+ could not start 2 ranks on cuda:0,1: "
                                            r"ember_tp_nccl_init: cudaSetDevice failed") as err:
        NcclGroup(functions, [0, 1], HostGroup(2).run, candidates=[str(wheel_library())])
    assert "\n" not in str(err.value)


@needs_nvcc
def test_a_compiled_tensor_parallel_library_exposes_its_nccl_functions(tmp_path):
    """The loaded model.so is the VM executable, whose library (imported by it) holds the NCCL set-up functions:
    NcclFunctions finds them there (session 16's GPU run failed on exactly this lookup). In a subprocess: it loads
    TVM's cuda runtime over the stub driver, a process-wide switch."""
    import sys

    from transformers import AutoModelForCausalLM, LlamaConfig

    AutoModelForCausalLM.from_config(LlamaConfig(**CONFIG)).save_pretrained(tmp_path / "hf")
    out = tmp_path / "tp2"
    subprocess.run([sys.executable, "-c", "from ember.cli import main; main()", "compile", "--model", str(tmp_path / "hf"), "--target",
                    "cuda:sm_90", "--quant", "q0f16", "--tensor-parallel", "2", "-o", str(out)],
                   check=True, capture_output=True, timeout=600)
    probe = ("import sys; from ember.targets.cuda.stub_driver import prepare_cuda_compile_process; "
             "prepare_cuda_compile_process(); from ember.runtime.tvm_import import ensure_device_runtime; "
             "ensure_device_runtime('cuda'); from ember.runtime.loader import library_module; "
             "from ember.runtime.nccl import NcclFunctions; lib = sys.argv[1]; "
             "f = NcclFunctions.of(library_module(lib), lib); print(all([f.open, f.unique_id, f.init, f.destroy, f.abort]))")
    result = subprocess.run([sys.executable, "-c", probe, str(out / "model.so")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr[-2000:]
