"""Our LLM stack against transformers' own Llama and Qwen2 (the reference implementations).

The transformers weights go through our checkpoint key map (q/k/v fused into the grouped
``wqkv``), so these tests also prove the fuse is right for GQA, and that a transformers-5
config (``rope_parameters``) is read correctly.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hovle import LLMConfig  # noqa: E402
from hovle.checkpoint import LLM_PREFIX, from_file_names  # noqa: E402
from hovle.model.language import LanguageModel  # noqa: E402

from .conftest import assert_same_logits_as_transformers, randomize, tiny_config  # noqa: E402

SHAPE = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=160,
             num_hidden_layers=3, vocab_size=128, max_position_embeddings=64)

CASES = {
    "llama-gqa": (transformers.LlamaConfig, dict(rope_theta=5e5)),
    "llama-mha-tied": (transformers.LlamaConfig, dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "llama3-rope": (transformers.LlamaConfig, dict(rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})),
    "linear-rope": (transformers.LlamaConfig, dict(rope_scaling={"rope_type": "linear", "factor": 4.0})),
    # 40 tokens against a trained length of 16: the NTK base grows.
    "dynamic-rope": (transformers.LlamaConfig, dict(max_position_embeddings=16,
                                                     rope_scaling={"rope_type": "dynamic", "factor": 2.0})),
    "qwen2-bias": (transformers.Qwen2Config, dict()),
}


def ours_from(reference, hf_config) -> LanguageModel:
    data = hf_config.to_dict()
    data["architectures"] = [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[data["model_type"]]]
    config = tiny_config(arch=data["architectures"][0])
    config.llm = LLMConfig.from_dict(data)
    files = {LLM_PREFIX + k: v for k, v in reference.state_dict().items()}
    if config.llm.tie_word_embeddings:
        del files[LLM_PREFIX + "lm_head.weight"]
    state = from_file_names(files, config)
    model = LanguageModel(config.llm)
    model.load_state_dict({k[len(LLM_PREFIX):]: v for k, v in state.items()}, strict=True)
    model.tie_weights()
    return model.eval()


@pytest.mark.parametrize("case", sorted(CASES))
def test_llm_matches_transformers(case):
    cls, extra = CASES[case]
    hf_config = cls(**{**SHAPE, **extra}, attn_implementation="sdpa")
    torch.manual_seed(0)
    reference = randomize(transformers.AutoModelForCausalLM.from_config(hf_config), seed=1)
    ours = ours_from(reference, hf_config)

    assert_same_logits_as_transformers(reference, ours, vocab=128, length=40)
