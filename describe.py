"""`ember inspect`: describe an artifact, a GGUF file or a Hugging Face folder."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import EmberError

IR_FILE = "ir.txt"  # the IR after all passes, written by the compiler


def describe(path: str, show_ir: bool = False) -> str:
    target = Path(path)
    if target.is_dir() and (target / "manifest.json").is_file():
        return _describe_artifact(target, show_ir)
    if show_ir:
        raise EmberError(f"{path}: --ir needs an artifact folder")
    if target.suffix.lower() == ".gguf":
        from .frontend.importers.gguf import describe_gguf

        return json.dumps(describe_gguf(target), indent=2)
    if target.is_dir() and (target / "config.json").is_file():
        from .frontend.config import ModelConfig
        from .frontend.presets import parameter_count

        cfg = ModelConfig.from_file(target / "config.json")
        lines = [f"Hugging Face folder {target}", f"architecture: {cfg.model_type}",
                 f"parameters: {parameter_count(cfg):,}",
                 f"tokenizer: {'tokenizer.json' if (target / 'tokenizer.json').is_file() else 'none'}"]
        return "\n".join(lines)
    raise EmberError(f"{path}: not an artifact folder, a .gguf file, or a Hugging Face folder")


def _describe_artifact(folder: Path, show_ir: bool) -> str:
    from .runtime.artifact import read_manifest

    manifest = read_manifest(folder)
    if show_ir:
        return _artifact_ir(folder)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    from .frontend.config import ModelConfig
    from .frontend.presets import parameter_count

    n_params = parameter_count(ModelConfig(**manifest.config))
    weights = {"packed": "packed", "random": "random weights (benchmark build)", "none": "none (library only)"}
    lines = [
        f"artifact {folder}",
        f"model: {manifest.name} ({manifest.architecture}), {n_params:,} parameters",
        f"weight bytes: {sum(_numel(p.shape) * _bytes(p.dtype) for p in manifest.params) / 1e6:.1f} MB"
        + (f" ({', '.join(sorted({p.scheme for p in manifest.params if p.scheme}))})" if manifest.params else ""),
        f"quantization: {manifest.quantization}, compute dtype {manifest.compute_dtype}",
        f"target: {manifest.target.kind} {' '.join(manifest.target.archs)}",
        f"weights: {weights.get(manifest.weights, manifest.weights)}",
        f"functions: {', '.join(manifest.functions)}",
        f"passes: {', '.join(manifest.passes)}",
        f"tokenizer: {'yes' if manifest.tokenizer else 'none'}"
        + (", chat template" if manifest.tokenizer and manifest.tokenizer.chat_template else ""),
        f"size on disk: {size / 1e6:.1f} MB",
        f"versions: {', '.join(f'{k} {v}' for k, v in manifest.versions.items())}",
    ]
    return "\n".join(lines)


def _artifact_ir(folder: Path) -> str:
    path = folder / IR_FILE
    if not path.is_file():
        raise EmberError(f"{folder}: the artifact holds no {IR_FILE}")
    return path.read_text()


def _bytes(dtype: str) -> int:
    return {"float32": 4, "int32": 4, "uint32": 4, "float16": 2, "bfloat16": 2}.get(dtype, 1)


def _numel(shape: list[int]) -> int:
    total = 1
    for d in shape:
        total *= d
    return total
