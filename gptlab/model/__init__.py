"""The GPT itself and sampling from it: plain PyTorch, no Lightning, no Hydra."""

from gptlab.model.gpt import GPT, ConfigError, GPTConfig, KVCache, adapt, add_tokens, param_groups
from gptlab.model.sampling import SEED, SamplingConfig, complete, filter_logits, generate, prompt_ids, sample_next

__all__ = ["GPT", "adapt", "add_tokens", "SEED", "GPTConfig", "ConfigError", "KVCache", "param_groups", "generate", "sample_next", "filter_logits",
           "SamplingConfig", "complete", "prompt_ids"]
