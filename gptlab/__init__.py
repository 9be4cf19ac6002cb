"""gptlab: a readable, from-scratch GPT inside a Hydra + PyTorch Lightning experiment framework."""

import time as _time

__version__ = "0.1.0"
STARTED = _time.monotonic()  # when this process imported gptlab: a command's time budget counts from here
