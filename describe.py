"""`ember inspect`: describe an artifact, a GGUF file or a Hugging Face folder, as text or (`--json`) one object.

Each kind gathers its facts into one dict; the text is those facts, one per line, in the same words for every kind.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .errors import EmberError

IR_FILE = "ir.txt"  # the IR after all passes, written by the compiler


def describe(path: str, show_ir: bool = False, as_json: bool = False) -> str:
    target = Path(path)
    if target.is_dir() and (target / "manifest.json").is_file():
        if show_ir:
            return _artifact_ir(target)
        facts, text = _artifact_facts(target)
    elif show_ir:
        raise EmberError(f"{path}: --ir needs an artifact folder")
    elif target.suffix.lower() == ".gguf":
        facts, text = _gguf_facts(target)
    elif target.is_dir() and (target / "config.json").is_file():
        facts, text = _hf_folder_facts(target)
    else:
        raise EmberError(f"{path}: not an artifact folder, a .gguf file, or a Hugging Face folder")
    return json.dumps(facts, indent=2) if as_json else "\n".join(text)


def _artifact_facts(folder: Path) -> tuple[dict[str, Any], list[str]]:
    from .frontend.config import ModelConfig
    from .frontend.models import parameter_count
    from .runtime.artifact import read_manifest

    manifest = read_manifest(folder)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    n_params = parameter_count(ModelConfig.from_manifest(manifest.config))
    weight_bytes = sum(_numel(p.shape) * _bytes(p.dtype) for p in manifest.params)
    schemes = sorted({p.scheme for p in manifest.params if p.scheme})
    weights = {"packed": "packed", "random": "random weights (benchmark build)", "none": "none (library only)"}
    tok = manifest.tokenizer
    facts = {
        "kind": "artifact", "path": str(folder), "name": manifest.name, "architecture": manifest.architecture,
        "parameter_count": n_params, "weight_bytes": weight_bytes, "weight_schemes": schemes,
        "quantization": manifest.quantization, "compute_dtype": manifest.compute_dtype,
        "target": {"kind": manifest.target.kind, "archs": manifest.target.archs, "host": manifest.target.host},
        "weights": manifest.weights, "functions": manifest.functions, "passes": manifest.passes,
        "tokenizer": tok is not None, "chat_template": bool(tok and tok.chat_template),
        "context_length": manifest.context_length, "vocab_size": manifest.vocab_size,
        "size_bytes": size, "versions": manifest.versions, "notes": manifest.notes,
        "verification": asdict(manifest.verification) if manifest.verification else None,
        "format_version": manifest.format_version, "build": asdict(manifest.build) if manifest.build else None,
        "tensor_parallel": manifest.tensor_parallel.shards if manifest.tensor_parallel else None,
    }  # fmt: skip
    tp = manifest.tensor_parallel
    text = [
        f"artifact {folder}",
        f"model: {manifest.name} ({manifest.architecture}), {n_params:,} parameters",
        f"weight bytes: {weight_bytes / 1e6:.1f} MB" + (f" ({', '.join(schemes)})" if manifest.params else "")
        + (f" per shard, {tp.shards} tensor-parallel shards (run with --devices)" if tp else ""),
        f"quantization: {manifest.quantization}, compute dtype {manifest.compute_dtype}",
        f"target: {manifest.target.kind} {' '.join(manifest.target.archs)}".rstrip(),
        f"weights: {weights.get(manifest.weights, manifest.weights)}",
        f"context length: {manifest.context_length}, vocabulary: {manifest.vocab_size}",
        f"functions: {', '.join(manifest.functions)}",
        f"passes: {', '.join(manifest.passes)}",
        f"tokenizer: {'yes' if tok else 'none'}" + (", chat template" if facts["chat_template"] else ""),
        f"verification: {_verification(manifest)}",
        f"size on disk: {size / 1e6:.1f} MB",
        f"versions: {', '.join(f'{k} {v}' for k, v in manifest.versions.items())}",
        f"format: {manifest.format_version}",
        *_build(manifest),
    ] + [f"note: {note}" for note in manifest.notes]
    return facts, text


def _build(manifest: Any) -> list[str]:
    build = manifest.build
    if build is None:
        return ["build fingerprint: none (compiled before ember recorded one)"]
    options = ", ".join(f"{k} {v}" for k, v in build.options.items() if k != "env")
    env = " ".join(f"{k}={v}" for k, v in build.options.get("env", {}).items())
    inputs = ", ".join(f"{k} {v[:12]}" for k, v in build.inputs.items())
    return [f"build fingerprint: {build.fingerprint}",
            f"  inputs: {inputs}",
            f"  options: {options}" + (f"; env {env}" if env else ""),
            f"  tools: {', '.join(f'{k} {v}' for k, v in build.tools.items()) or 'none'}"]


def _verification(manifest: Any) -> str:
    info = manifest.verification
    if info is None:
        return "no golden outputs (`ember verify` checks the files only)"
    what = "whole model" if info.layers is None else f"first {info.layers} layers"
    return (f"golden outputs of the {what} ({len(info.prompt_ids)}-token prompt + {info.greedy_steps} greedy steps, "
            f"tolerance {info.tolerance:.0e}), by {info.reference}")


def _gguf_facts(path: Path) -> tuple[dict[str, Any], list[str]]:
    from .frontend.importers.gguf import describe_gguf

    info = describe_gguf(path)
    facts = {"kind": "gguf", **info}
    tokenizer = info["tokenizer_model"] or "none"
    if info["tokenizer_pre"]:
        tokenizer += f" (pre-tokenizer {info['tokenizer_pre']})"
    text = [
        f"GGUF file {path}",
        f"model: {info['name'] or path.stem} ({info['architecture']}), {info['parameter_count']:,} parameters",
        f"tensor types: {', '.join(f'{k} x{v}' for k, v in info['tensor_types'].items())}",
        f"context length: {info['context_length']}, vocabulary: {info['vocab_size']}",
        f"tokenizer: {tokenizer}" + (", chat template" if info["has_chat_template"] else ""),
    ]
    return facts, text


def _hf_folder_facts(folder: Path) -> tuple[dict[str, Any], list[str]]:
    from .frontend.config import ModelConfig
    from .frontend.models import parameter_count

    cfg = ModelConfig.from_file(folder / "config.json")
    has_tokenizer = (folder / "tokenizer.json").is_file()
    facts = {"kind": "hf-folder", "path": str(folder), "architecture": cfg.model_type,
             "parameter_count": parameter_count(cfg), "context_length": cfg.max_position_embeddings,
             "vocab_size": cfg.vocab_size, "tokenizer": has_tokenizer}  # fmt: skip
    text = [
        f"Hugging Face folder {folder}",
        f"model: {folder.name} ({cfg.model_type}), {facts['parameter_count']:,} parameters",
        f"context length: {cfg.max_position_embeddings}, vocabulary: {cfg.vocab_size}",
        f"tokenizer: {'tokenizer.json' if has_tokenizer else 'none'}",
    ]
    return facts, text


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
