"""gptlab: a readable, from-scratch GPT inside a Hydra + PyTorch Lightning experiment framework."""

import os as _os
import time as _time

__version__ = "0.1.0"
STARTED = _time.monotonic()  # when this process imported gptlab: a command's time budget counts from here

# oneDNN (torch's bf16 matmuls on a CPU) builds a kernel for each shape it meets and keeps the last 1,024; batches of
# varying length and decoding meet more, and rebuilding them cost LoRA fine-tuning 40% of its steps on a Xeon with
# AMX (19.7 -> 31.5 steps/s with 4,096 kept). Read when the first is built; a value already set is kept.
_os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "4096")
