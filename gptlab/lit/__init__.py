"""Lightning glue: the LightningModule around the GPT, its lr schedule, and callbacks."""

from gptlab.lit.module import GPTLitModule

__all__ = ["GPTLitModule"]
