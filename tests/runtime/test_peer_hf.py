"""`ember bench --peer hf` builds the artifact's architecture in transformers from the manifest's config
(runtime/peer_hf.py): for every preset, the Hugging Face model made from those keys has ember's parameter count
(counted from ember's traced module), so the peer times the same model, experts and all."""
from __future__ import annotations

import pytest

from ember.frontend.models import parameter_count
from ember.frontend.presets import PRESETS, preset_config
from ember.runtime.peer_hf import hf_config_kwargs


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_peer_builds_the_preset_with_embers_parameter_count(name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = preset_config(name)
    raw = cfg.to_dict()
    hf_config = transformers.AutoConfig.for_model(raw["model_type"], **hf_config_kwargs(raw))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    # a tied head is one tensor in both counts
    assert sum(p.numel() for p in model.parameters()) == parameter_count(cfg)
