"""Typed schemas for the Hydra configs, registered in Hydra's ConfigStore.

Each YAML group under conf/ is checked against its dataclass here, so `model.n_layr=4` (a typo) or
`model.n_layer=four` (a wrong type) stops the run with an error instead of being silently ignored.
The model schema is the model's own GPTConfig: one definition, no copy to keep in sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig

from gptlab.errors import GptlabError
from gptlab.model.gpt import GPTConfig


@dataclass
class CharTokenizerConfig:
    kind: str = "char"


@dataclass
class BPETokenizerConfig:
    kind: str = "bpe"
    vocab_size: int = 4096  # 256 bytes + merges + special tokens; up to 65,536
    special_tokens: List[str] = field(default_factory=lambda: ["<|endoftext|>"])
    min_frequency: int = 2  # stop merging pairs seen fewer times than this
    show_progress: bool = True


@dataclass
class DataConfig:
    """Maps onto gptlab.data.TextDataModule."""

    _target_: str = "gptlab.data.TextDataModule"
    source: str = "shakespeare"  # "shakespeare" (found or downloaded) or "text" (data.path)
    path: Optional[str] = None  # text: a UTF-8 file or a folder of .txt files
    url: Optional[str] = None  # where a named data set is downloaded from when it is not on disk
    sha256: Optional[str] = None  # checked after download
    data_dir: Optional[str] = II("paths.data_dir")
    cache_dir: str = II("paths.cache_dir")
    val_fraction: float = 0.1  # the last 10% of the text is the validation split
    block_size: int = II("model.block_size")
    batch_size: int = 64
    val_batch_size: Optional[int] = None  # None: batch_size; evaluation holds no gradients, so larger is fine
    num_workers: int = 0  # batches are cheap numpy gathers; workers only pay off on fast GPUs
    seed: int = II("seed")


@dataclass
class TrainerConfig:
    """Maps onto lightning.Trainer; the arguments gptlab uses, typed."""

    _target_: str = "lightning.Trainer"
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: Any = "32-true"
    max_steps: int = 5000
    max_time: Optional[str] = None  # "DD:HH:MM:SS"; stops early, after a last validation
    max_epochs: int = -1  # training batches are an endless stream; steps (or time) end a run
    val_check_interval: Any = 250  # validate (and checkpoint) every N optimizer steps
    check_val_every_n_epoch: Optional[int] = None  # count val_check_interval across the whole run
    limit_val_batches: Any = 20
    num_sanity_val_steps: int = 1
    gradient_clip_val: Optional[float] = 1.0
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    deterministic: Any = False
    benchmark: Optional[bool] = None
    enable_model_summary: bool = False  # gptlab prints its own parameter count
    fast_dev_run: Any = False
    overfit_batches: Any = 0.0
    limit_train_batches: Any = None
    profiler: Any = None  # "simple", "advanced", or a profiler config with _target_
    default_root_dir: Optional[str] = II("paths.output_dir")


@dataclass
class AdamWConfig:
    """torch.optim.AdamW, built later with the parameter groups (Hydra's _partial_)."""

    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-8
    weight_decay: float = 0.1  # applied to matrices only; biases and LayerNorm weights get none
    fused: Optional[bool] = None
    foreach: Optional[bool] = None


@dataclass
class SchedulerConfig:
    """Linear warmup then cosine decay, stepped every optimizer step."""

    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the lr ends at min_lr_ratio * optim.lr
    total_steps: Optional[int] = None  # steps of the cosine; None: trainer.max_steps


@dataclass
class PathsConfig:
    data_dir: Optional[str] = None  # where data sets are looked for and downloaded to ($GPTLAB_DATA_DIR wins)
    cache_dir: str = "data/cache"  # tokenized corpora, shared by every run and multirun job
    output_dir: str = "${hydra:runtime.output_dir}"  # this run's folder: logs and checkpoints


@dataclass
class TrainConfig:
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: Any = MISSING
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    callbacks: Any = None
    logger: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 1337
    ckpt_path: Optional[str] = None  # resume from this checkpoint (file, or a run dir: its last.ckpt)
    sample_tokens: int = 500  # length of the text sample printed at the end of training
    compile: bool = False  # torch.compile the model (pays off on GPUs; on a small CPU model it costs more than it saves)
    matmul_precision: str = "high"  # fp32 matmuls on CUDA: highest (true fp32), high (TF32), medium (bf16)


@dataclass
class GenerateConfig:
    """python -m gptlab.generate: sample text from a checkpoint."""

    ckpt_path: str = MISSING  # a .ckpt file, or a run dir (its best.ckpt, else last.ckpt)
    prompt: str = "\n"
    prompt_file: Optional[str] = None  # read the prompt from this file instead
    max_new_tokens: int = 500
    temperature: float = 0.8  # 0: greedy
    top_k: Optional[int] = 200
    top_p: Optional[float] = None  # nucleus sampling, in (0, 1]
    num_samples: int = 1  # sampled together as one batch
    seed: int = 1337
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:1, mps
    dtype: Optional[str] = None  # None: the checkpoint's (float32); or bfloat16, float16
    use_cache: bool = True  # KV cache: read the prompt once, then one token per step


@dataclass
class EvalDataConfig:
    path: Optional[str] = None  # None: the checkpoint's own validation split
    batch_size: int = 32
    max_batches: Optional[int] = None  # None: every window of the text


@dataclass
class EvalConfig:
    """python -m gptlab.eval: loss, perplexity and bits per character of a checkpoint."""

    ckpt_path: str = MISSING
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    device: str = "auto"
    cache_dir: str = "${oc.env:GPTLAB_CACHE_DIR,data/cache}"
    data_dir: Optional[str] = "${oc.env:GPTLAB_DATA_DIR,data}"


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="generate_schema", node=GenerateConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="tokenizer", name="char_schema", node=CharTokenizerConfig)
    cs.store(group="tokenizer", name="bpe_schema", node=BPETokenizerConfig)
    cs.store(group="optim", name="adamw_schema", node=AdamWConfig)


# the schema of each node, for the check below; optim and tokenizer pick theirs by what they build
TOKENIZER_SCHEMAS: dict[str, type] = {"char": CharTokenizerConfig, "bpe": BPETokenizerConfig}
OPTIM_SCHEMAS: dict[str, type] = {"torch.optim.AdamW": AdamWConfig}
NODE_SCHEMAS: dict[str, type] = {
    "model": GPTConfig, "data": DataConfig, "trainer": TrainerConfig, "scheduler": SchedulerConfig, "paths": PathsConfig
}


def check_keys(cfg: DictConfig) -> None:
    """Reject keys no schema knows. Hydra lets `+key=value` add keys even to typed nodes; a typo there
    would otherwise surface later as a TypeError deep inside a constructor."""
    nodes: list[tuple[str, Any, type]] = [("", cfg, TrainConfig)]
    nodes += [(name, cfg.get(name), schema) for name, schema in NODE_SCHEMAS.items()]
    if cfg.get("tokenizer") is not None:
        nodes.append(("tokenizer", cfg.tokenizer, TOKENIZER_SCHEMAS.get(cfg.tokenizer.get("kind"), object)))
    if cfg.get("optim") is not None:
        nodes.append(("optim", cfg.optim, OPTIM_SCHEMAS.get(cfg.optim.get("_target_"), object)))
    for name, node, schema in nodes:
        if node is None or schema is object:
            continue
        known = {f.name for f in fields(schema)}
        unknown = [k for k in node.keys() if k not in known and not (name == "" and k == "hydra")]
        if unknown:
            where = f"{name}." if name else ""
            raise GptlabError(
                f"unknown config key {where}{unknown[0]}: {name or 'the top level'} takes "
                f"{', '.join(sorted(known))}"
            )
