"""The GPT itself and decoding from it: plain PyTorch, no Lightning, no Hydra."""

from gptlab.model.cache import KVCache
from gptlab.model.engine import Engine, Request, complete, generate, prompt_ids
from gptlab.model.gpt import GPT, ConfigError, GPTConfig, param_groups
from gptlab.model.lora import LoRAConfig, add_lora, merge_lora
from gptlab.model.resize import adapt, add_tokens
from gptlab.model.sampling import GREEDY, OPENAI, SEED, SamplingConfig, filter_logits, sample_next

__all__ = ["GPT", "GPTConfig", "ConfigError", "KVCache", "param_groups", "adapt", "add_tokens", "Engine", "Request",
           "generate", "complete", "prompt_ids", "SEED", "GREEDY", "OPENAI", "SamplingConfig", "sample_next", "filter_logits",
           "LoRAConfig", "add_lora", "merge_lora"]
