"""Manual GPU check of ember.runtime (not collected by pytest; CI has no GPU).

On the CPU box (nvcc on PATH; ember's stub driver makes TVM compile cubins at build time):
    python tests/runtime/gpu_check.py build .carry/rt-gpu /path/to/apache_tvm_ffi-...-cp312-...whl
builds a tiny fp32 Llama for cuda sm_90 (with `decode1`), HF reference logits, and a runtime-only TVM
(no libtvm_compiler.so, 24 MB) for the GPU box's Python 3.12. On the GPU box (device tool, carry .carry/rt-gpu):
    mkdir -p /tmp/pkgs && ln -s "$PWD" /tmp/pkgs/ember && PYTHONPATH=/tmp/pkgs:$PWD/.carry/rt-gpu/site \
    TVM_USE_RUNTIME_LIB=1 python3 tests/runtime/gpu_check.py check .carry/rt-gpu
prints one JSON report and exits 1 if any check failed. Last run (H100, driver 580): every check passed,
score max error 1.8e-6, decode1 8e-7.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np


def build(dest: Path, ffi_wheel: Path) -> None:
    from ember.targets.cuda.stub_driver import prepare_cuda_compile_process

    prepare_cuda_compile_process()  # before `import tvm`
    sys.path.insert(0, str(Path(__file__).parent))
    from nn_fixture import build_artifact, hf_greedy, hf_logits

    import tvm

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    a = build_artifact(dest / "tiny-cuda", cuda_arch="sm_90", name="tiny-cuda")
    rng = np.random.default_rng(0)
    score_ids = [0] + rng.integers(3, 320, size=39).tolist()
    gen_ids = [0] + rng.integers(3, 320, size=8).tolist()
    b_ids = [0] + rng.integers(3, 320, size=12).tolist()
    np.savez(dest / "ref.npz", score_ids=score_ids, score=hf_logits(a.hf_model, score_ids), gen_ids=gen_ids,
             greedy=hf_greedy(a.hf_model, gen_ids, 16), gen_last=hf_logits(a.hf_model, gen_ids)[-1],
             b_ids=b_ids, b_last=hf_logits(a.hf_model, b_ids)[-1])  # fmt: skip
    site = dest / "site"
    shutil.copytree(Path(tvm.__file__).parent, site / "tvm", ignore=shutil.ignore_patterns("__pycache__"))
    (site / "tvm" / "lib" / "libtvm_compiler.so").unlink()
    for sub in ("3rdparty", "include", "src", "web", "cmake", "lib64"):
        shutil.rmtree(site / "tvm" / sub, ignore_errors=True)
    with zipfile.ZipFile(ffi_wheel) as whl:
        whl.extractall(site)
    for sub in ("3rdparty", "include", "src", "cython", "share"):
        shutil.rmtree(site / "tvm_ffi" / sub, ignore_errors=True)
    for lib in (site / "tvm_ffi" / "lib").glob("*.so"):
        lib.chmod(0o755)


def check(dest: Path) -> int:
    import ember
    from click.testing import CliRunner

    from ember.errors import ArtifactError
    from ember.runtime.artifact import manifest_digest
    from ember.runtime.commands import run as run_cmd

    art, ref = dest / "tiny-cuda", np.load(dest / "ref.npz")
    g, b = ref["gen_ids"].tolist(), ref["b_ids"].tolist()
    out: dict = {}
    ok: dict[str, bool] = {}
    e = ember.load(art, device="cuda")
    ok["decode1 listed and used"] = e.runner._decode1 is not None
    out["score_max_err"] = float(np.abs(e.score(ref["score_ids"].tolist()) - ref["score"]).max())
    ok["score matches HF"] = out["score_max_err"] < 1e-4
    result = e.generate(g, max_tokens=16)
    ok["greedy matches HF"] = result.token_ids == ref["greedy"].tolist()
    out["summary"] = result.summary()
    e.runner.reset(), e.runner.add_sequence(0), e.runner.prefill([0], [g[:-1]])
    ok["decode1 matches HF"] = float(np.abs(e.runner.decode([0], [g[-1]])[0] - ref["gen_last"]).max()) < 1e-4
    e.runner.reset()
    e2 = ember.load(art, device="cuda", max_batch_size=2)
    e2.runner.add_sequence(0), e2.runner.add_sequence(1), e2.runner.prefill([0, 1], [g[:-1], b[:-1]])
    d = e2.runner.decode([0, 1], [g[-1], b[-1]])
    err = max(np.abs(d[0] - ref["gen_last"]).max(), np.abs(d[1] - ref["b_last"]).max())
    ok["batched decode matches HF"] = err < 1e-4
    tmp = Path(tempfile.mkdtemp())
    for archs, loads in ((["sm_80"], False), (["sm_100"], False), (["sm_80", "sm_90"], True)):
        copy = tmp / "_".join(archs)
        shutil.copytree(art, copy)
        m = json.loads((copy / "manifest.json").read_text())
        m["target"]["archs"] = archs
        m["manifest_sha256"] = manifest_digest(m)
        (copy / "manifest.json").write_text(json.dumps(m))
        try:
            ember.load(copy, device="cuda")
            ok[f"archs {archs} load"] = loads
        except ArtifactError as err:
            ok[f"archs {archs} refused"] = not loads and "this GPU" in str(err)
    copy = tmp / "random"
    shutil.copytree(art, copy)
    shutil.rmtree(copy / "params")
    m = json.loads((copy / "manifest.json").read_text())
    m["weights"] = "random"
    for key in ("files", "sizes"):
        m[key] = {k: v for k, v in m.get(key, {}).items() if not k.startswith("params/")}
    m["manifest_sha256"] = manifest_digest(m)
    (copy / "manifest.json").write_text(json.dumps(m))
    summary = ember.load(copy, device="cuda").generate([0, 5], max_tokens=4).summary()
    ok["random weights labelled"] = "random weights (benchmark build)" in summary
    res = CliRunner().invoke(run_cmd, [str(art), "--prompt", "hello world", "-n", "5", "--device", "cuda", "--json"])
    ok["cli run --json"] = res.exit_code == 0 and "token_ids" in json.loads(res.stdout)
    maps = open("/proc/self/maps").read()
    ok["runtime only"] = "libtvm_compiler" not in maps and "libtvm_runtime_cuda" in maps
    relax = any(k.startswith("tvm.relax") for k in sys.modules)
    ok["no torch, no tvm.relax"] = "torch" not in sys.modules and not relax
    ok = {k: bool(v) for k, v in ok.items()}  # some are numpy bools
    print(json.dumps({"ok": ok, **out}, indent=1))
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["build"]:
        build(Path(sys.argv[2]), Path(sys.argv[3]))
    elif sys.argv[1:2] == ["check"]:
        sys.exit(check(Path(sys.argv[2])))
    else:
        sys.exit(__doc__)
