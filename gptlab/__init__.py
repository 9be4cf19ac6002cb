"""gptlab: a readable, from-scratch GPT inside a Hydra + Lightning experiment framework."""

__version__ = "0.1.0"
