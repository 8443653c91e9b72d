"""Tiny random Hugging Face decoders exported to ONNX by torch.onnx, for the ONNX importer's tests.

`export(hf_model, path, cache=...)` writes the graph the way a user would get it from `torch.onnx.export`: inputs
input_ids, attention_mask and position_ids (dynamic batch and sequence), output logits; with `cache=True` also the
optimum layout: inputs past_key_values.N.key / .value ([batch, kv_heads, past, head_dim]) and outputs present.N.key /
.value. `external=True` saves every initializer to one external data file beside the graph.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch


class _NoCache(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).logits


class _WithCache(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        present = []
        for layer in range(len(past) // 2):
            present += [out.past_key_values.layers[layer].keys, out.past_key_values.layers[layer].values]
        return (out.logits, *present)


def export(model, path: Path, cache: bool = False, external: bool = False, dynamo: bool = True,
           seq: int = 5, past: int = 3) -> Path:
    cfg = model.config
    layers = cfg.num_hidden_layers
    kv_heads = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    past_len = past if cache else 0
    ids = torch.randint(0, cfg.vocab_size, (1, seq))
    mask = torch.ones(1, past_len + seq, dtype=torch.int64)
    pos = torch.arange(past_len, past_len + seq)[None]
    names = ["input_ids", "attention_mask", "position_ids"]
    outputs = ["logits"]
    args = [ids, mask, pos]
    if cache:
        for layer in range(layers):
            for kind in ("key", "value"):
                names.append(f"past_key_values.{layer}.{kind}")
                outputs.append(f"present.{layer}.{kind}")
                args.append(torch.randn(1, kv_heads, past_len, head_dim))
    module = (_WithCache if cache else _NoCache)(model).eval()
    path = Path(path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            batch, length, total, held = (torch.export.Dim("batch", max=64), torch.export.Dim("seq", max=4096),
                                          torch.export.Dim("total", max=8192), torch.export.Dim("past", max=4096))
            shapes = [{0: batch, 1: length}, {0: batch, 1: total}, {0: batch, 1: length}]
            if cache:
                shapes.append(tuple({0: batch, 2: held} for _ in args[3:]))
            program = torch.onnx.export(module, tuple(args), dynamic_shapes=tuple(shapes), input_names=names,
                                        output_names=outputs, dynamo=True, external_data=False, verbose=False)
            program.save(str(path), external_data=external)
        else:
            axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
                    "position_ids": {0: "batch", 1: "seq"}}
            axes.update({n: {0: "batch", 2: "past"} for n in names[3:]})
            torch.onnx.export(module, tuple(args), str(path), input_names=names, output_names=outputs,
                              dynamic_axes=axes, dynamo=False)
            if external:
                import onnx

                proto = onnx.load(str(path))
                onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                          location=path.name + ".data", size_threshold=0)
    return path
