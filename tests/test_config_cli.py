"""The default config is the released model's shape; `hovle info` describes a folder."""

import json

import pytest
import torch

from hovle import ConfigError, EmbeddingConfig, HoVLEConfig, HoVLEModel
from hovle.cli import main

from .conftest import PARITY


def test_default_config_is_the_released_hovle():
    with torch.device("meta"):
        model = HoVLEModel(HoVLEConfig())
    assert model.parameter_counts()["total"] == 2_606_327_808  # docs/model.md, 2
    assert len(model.state_dict()) == 236
    assert HoVLEConfig().tokens_per_tile == 256


def test_post_mode_config_and_bad_values():
    assert EmbeddingConfig(pixel_shuffle_loc="post").tokens_per_tile == 256
    with pytest.raises(ConfigError, match="pixel_shuffle_loc"):
        EmbeddingConfig(pixel_shuffle_loc="middle")
    with pytest.raises(ConfigError, match="multiple of num_key_value_heads"):
        EmbeddingConfig(num_attention_heads=16, num_key_value_heads=3)
    with pytest.raises(ConfigError, match="rope_scaling type 'yarn'"):
        HoVLEModel(HoVLEConfig.from_dict({**HoVLEConfig().to_dict(), "llm_config": {
            **HoVLEConfig().llm.to_dict(), "rope_scaling": {"type": "yarn", "factor": 2.0}}}))


def test_info_prints_the_shape(capsys):
    assert main(["info", str(PARITY)]) == 0
    out = capsys.readouterr().out
    assert "InternLM2ForCausalLM: 2 layers, hidden 64, 4 heads / 2 kv heads, vocab 128" in out
    assert "16 patches -> 4 tokens per tile" in out
    assert "256,640" in out  # total parameters of the fixture


def test_info_json_and_errors(capsys, tmp_path):
    assert main(["info", str(PARITY), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tokens_per_tile"] == 4 and info["dtype"] == {"F32": 40}
    assert main(["info", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
