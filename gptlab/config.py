"""The entry points' typed configs, and turning a composed config node into the typed spec it describes.

Each configured object has one typed spec beside its owner, holding its defaults: `GPTConfig`
(model/gpt.py), `DataConfig` (data/config.py), the tokenizers' `settings` (tokenizers/), `TrainerConfig`
(lit/trainer.py), `GRPOConfig` (lit/grpo.py), `AdamWConfig` (lit/optim.py), `WarmupCosine` (lit/schedule.py), `SamplingConfig`
(model/sampling.py). The schemas Hydra checks while composing are those classes themselves; the YAML
files under conf/ state only what differs from them. Nodes whose type depends on a choice (tokenizer by
`kind`, optim by `_target_`) get the schema of their option (`DEFAULT_OPTIONS`), and every node is
checked again, values included, when it is turned into its spec (`to_spec`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import typing
from importlib import resources
from pathlib import Path
from dataclasses import MISSING as MISSING_FIELD
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, ClassVar, Optional, TypeVar

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.utils import get_method, instantiate
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gptlab.checkpoint import DTYPES
from gptlab.data import KINDS, DataConfig
from gptlab.errors import GptlabError, did_you_mean
from gptlab.lit.optim import AdamWConfig, MuonConfig
from gptlab.lit.grpo import GRPOConfig
from gptlab.lit.schedule import WarmupCosine
from gptlab.lit.trainer import TrainerConfig, parse_duration
from gptlab.model import SEED, GPTConfig, LoRAConfig, SamplingConfig
from gptlab.rundir import RECORD, RunDir
from gptlab.tokenizers import TOKENIZERS, TokenizerError

T = TypeVar("T")

# optimizers and schedules whose settings gptlab knows, by the _target_ of their config
OPTIMIZERS: dict[str, type] = {"torch.optim.AdamW": AdamWConfig, "gptlab.lit.optim.MuonWithAdamW": MuonConfig}
SCHEDULES: dict[str, type] = {"gptlab.lit.schedule.WarmupCosine": WarmupCosine}


@dataclass
class DataPaths:
    """Where data is read from; relative paths start from the folder you run from."""

    data_dir: Optional[str] = "data"  # data sets are looked for here ($GPTLAB_DATA_DIR first) and downloaded
    cache_dir: str = "${oc.env:GPTLAB_CACHE_DIR,data/cache}"  # tokenized corpora, shared by every run


@dataclass
class PathsConfig(DataPaths):
    output_dir: str = "${hydra:runtime.output_dir}"  # this run's folder: logs and checkpoints


@dataclass
class TrainConfig:
    """python -m gptlab.train: the groups of conf/train.yaml and the run's own settings."""

    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: Any = MISSING  # tokenizer=char|bpe: the settings of TOKENIZERS[kind]
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: Any = MISSING  # a _partial_ optimizer: called with the parameter groups
    scheduler: Any = MISSING  # a _partial_ lr schedule
    objective: Any = None  # None: next-token prediction (pretraining, SFT); objective=grpo: GRPOConfig (lit/grpo.py)
    lora: Any = None  # finetune=lora: LoRAConfig (model/lora.py): adapters only, the base frozen
    callbacks: Any = None  # name -> a callback config with _target_
    logger: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = SEED  # seeds the weights, the order of the data and the samples
    ckpt_path: Optional[str] = None  # resume this run: a checkpoint file, or a run dir (its last checkpoint)
    init_from: Optional[str] = None  # a new run from trained weights: a run dir, gpt2...gpt2-xl, or a HF folder
    sample_tokens: int = 500  # length of the text sample printed at the end of training; 0: none
    # torch.compile the model: true, false, or auto: on a GPU, not on a CPU (devices.auto_compile: what was measured)
    compile: Any = False
    matmul_precision: str = "high"  # fp32 matmuls on CUDA: highest (true fp32), high (TF32), medium (bf16)
    checkpoint_every: Optional[str] = "00:00:10:00"  # DD:HH:MM:SS between saves of the last checkpoint; null: none

    # what a resumed run keeps whatever the command says (GPTConfig and DataConfig say which of theirs may change)
    FIXED_ON_RESUME: ClassVar[tuple[str, ...]] = ("tokenizer", "init_from")


def check_dtype(dtype: Optional[str]) -> None:
    """An inference dtype= setting: None (the checkpoint's), auto, or one of checkpoint.DTYPES."""
    if dtype not in (None, "auto", *DTYPES):
        raise ValueError(f"dtype={dtype} is not one of auto, {', '.join(DTYPES)}")


@dataclass
class InferenceConfig(SamplingConfig):
    """What the entry points that run a checkpoint token by token (generate, chat) share: the sampling defaults
    too, one set for both (a chat's answer ends at <|end|>, long before max_new_tokens)."""

    ckpt_path: str = MISSING  # a .ckpt file, or a run dir (its best checkpoint, else its last)
    seed: int = SEED  # the same seed, settings and input give the same output
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:1, mps
    # None: the checkpoint's (float32); auto: bfloat16 where a probe finds bf16 fast here (~2x on CPUs with bf16
    # units), else float32; bfloat16, float16
    dtype: Optional[str] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_dtype(self.dtype)


@dataclass
class GenerateConfig(InferenceConfig):
    """python -m gptlab.generate: sample text from a checkpoint."""

    prompt: str = "\n"  # the text the model continues, taken as typed
    prompt_file: Optional[str] = None  # read the prompt from this file instead
    num_samples: int = 1  # sampled together as one batch

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")


@dataclass
class ChatConfig(InferenceConfig):
    """python -m gptlab.chat: talk to a model fine-tuned on conversations."""

    system: Optional[str] = None  # a system message that opens the conversation, taken as typed


@dataclass
class ServeConfig:
    """python -m gptlab.serve: a model behind OpenAI's API (/v1/chat/completions, /v1/completions) and a chat page."""

    ckpt_path: str = MISSING  # a run dir, a .ckpt file, or GPT-2 (gpt2 ... gpt2-xl, or a Hugging Face folder)
    host: str = "127.0.0.1"  # this machine only; 0.0.0.0: every interface (anyone who can reach the machine)
    port: int = 8000  # 0: any free port (the printed address says which)
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:1, mps
    dtype: Optional[str] = None  # None: the checkpoint's (float32); auto: bfloat16 where a probe finds it fast
    api_key: Optional[str] = None  # when set (here or in GPTLAB_API_KEY), every API request must bring it
    name: Optional[str] = None  # the model's name in the API; None: the run's (its folder's, or its experiment's)
    batch_size: int = 16  # requests decoded together, one KV cache row each
    max_queue: int = 64  # requests that may wait for a row; past that the server answers 429 (try again)
    max_tokens: Optional[int] = None  # the most new tokens one request may ask for; None: the context less one
    max_request_bytes: int = 1_048_576  # a larger request body is refused (413) before it is read
    # torch.compile the one-token step (CUDA graphs on a GPU), once for each power of two of busy rows: each of
    # those compiles when first needed, which holds up the requests of that moment (tens of seconds)
    compile: bool = False

    def __post_init__(self) -> None:
        check_dtype(self.dtype)
        for key in ("batch_size", "max_request_bytes"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 (or null: the context), got {self.max_tokens}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")


@dataclass
class EvalDataConfig:
    kind: str = "text"  # text: windows of a text; chat: conversations (data=chat): answer loss and exact match
    path: Optional[str] = None  # None: the checkpoint's own validation split
    batch_size: Optional[int] = None  # None: the run's validation batch size

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.kind not in KINDS:
            raise ValueError(f"data.kind={self.kind} is not one of {', '.join(KINDS)}")


@dataclass
class EvalConfig:
    """python -m gptlab.eval: loss, perplexity, bits per character and per byte of a checkpoint; or tasks of the
    LM Evaluation Harness."""

    ckpt_path: str = MISSING  # a .ckpt file, or a run dir (its best checkpoint, else its last)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    whole_split: bool = False  # score every window, not only the ones the run's validation scored
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:1, mps
    paths: DataPaths = field(default_factory=DataPaths)
    # the LM Evaluation Harness (pip install -e ".[eval]"): tasks=hellaswag,arc_easy scores them instead
    tasks: Optional[str] = None  # comma-separated task names (`lm_eval ls tasks`), local ones from include_path
    include_path: Optional[str] = None  # a folder of task YAMLs (a task over local JSONL files, say)
    num_fewshot: Optional[int] = None  # None: each task's own
    limit: Optional[float] = None  # documents per task: a count, or a fraction below 1; None: all
    batch_size: int = 16  # requests per forward pass
    apply_chat_template: Optional[bool] = None  # None: for a chat model (one with the chat markers)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and not self.limit > 0:
            raise ValueError(f"limit must be > 0 (a count, or a fraction below 1), got {self.limit}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ValueError(f"num_fewshot must be >= 0, got {self.num_fewshot}")


def with_target(spec: type, target: str) -> type:
    """A schema for a `_partial_` config that Hydra instantiates: spec's fields (same names, types and defaults)
    plus `_target_` and `_partial_`, so the YAML never restates them."""
    hints = typing.get_type_hints(spec)
    extra = [("_target_", str, field(default=target)), ("_partial_", bool, field(default=True))]
    own = [(f.name, hints[f.name], field(default=f.default) if f.default is not MISSING_FIELD
            else field(default_factory=f.default_factory)) for f in fields(spec)]  # type: ignore[misc]
    return make_dataclass(f"{spec.__name__}Node", extra + own, namespace={"__doc__": spec.__doc__})


# group options that are a spec's defaults as they are: no YAML file restates them
DEFAULT_OPTIONS: dict[tuple[str, str], type] = {
    ("model", "small"): GPTConfig,
    ("data", "shakespeare"): DataConfig,
    ("trainer", "default"): TrainerConfig,
    ("optim", "adamw"): with_target(AdamWConfig, "torch.optim.AdamW"),
    ("optim", "muon"): with_target(MuonConfig, "gptlab.lit.optim.MuonWithAdamW"),
    ("scheduler", "warmup_cosine"): with_target(WarmupCosine, "gptlab.lit.schedule.WarmupCosine"),
    **{("tokenizer", kind): cls.settings for kind, cls in TOKENIZERS.items()},
    ("objective", "grpo"): GRPOConfig,
    ("finetune", "lora"): LoRAConfig,
}
PACKAGES = {"finetune": "lora"}  # finetune=lora puts its keys at lora.*, as users write them (lora.rank=16)


def run_name() -> str:
    """What tells this run apart in TensorBoard's run list: its command-line overrides (`model=nano,optim.lr=3e-4`),
    or "" for a run with none. (Hydra's job.override_dirname; "" outside a Hydra app, as in tests.)"""
    try:
        name = HydraConfig.get().job.override_dirname
    except ValueError:
        return ""
    name = re.sub(r"=(['\"])(.*?)\1(?=,|$)", r"=\2", unescape(name))  # the quotes free text is passed in
    name = name.replace("/", "|")  # a path in an override must not open sub-folders
    if len(name) > 120:  # a folder name has at most 255 bytes: keep the start, and a hash to tell runs apart
        name = f"{name[:110]}…{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def unescape(override: str) -> str:
    """Hydra writes overrides back with its grammar's escapes (`max_time=00\\:00\\:10`); people read them without."""
    return re.sub(r"\\(.)", r"\1", override)


def run_dir(ckpt_path: Optional[str], new: str) -> str:
    """hydra.run.dir: a run resumed with ckpt_path= goes on in its own folder; any other run gets a new one."""
    p = Path(str(ckpt_path)).expanduser() if ckpt_path else None
    return str(RunDir.of(p).path.resolve()) if p and (p.is_file() or RunDir(p).is_run()) else new


def register_configs() -> None:
    OmegaConf.register_new_resolver("gptlab.run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("gptlab.run_dir", run_dir, replace=True)
    # a resumed run keeps the record (.hydra/) of the command that started it
    OmegaConf.register_new_resolver("gptlab.record", lambda ckpt_path: None if ckpt_path else RECORD, replace=True)
    cs = ConfigStore.instance()
    for (group, name), node in DEFAULT_OPTIONS.items():
        cs.store(group=group, name=name, node=node, package=PACKAGES.get(group))
    for n, node in (("train", TrainConfig), ("generate", GenerateConfig), ("eval", EvalConfig), ("chat", ChatConfig),
                    ("serve", ServeConfig)):
        cs.store(name=f"{n}_schema", node=node)


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"model": {"n_layer": 4}} -> {"model.n_layer": 4}; Hydra's `_target_` keys left out."""
    if not isinstance(node, dict):
        return {prefix: node if isinstance(node, (int, float, str, bool)) else str(node)}
    out: dict[str, Any] = {}
    for k, v in node.items():
        if not str(k).startswith("_"):
            out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def composed(config_name: str, overrides: list[str]) -> DictConfig:
    """Hydra's composition of a config of conf/ (or the ConfigStore) with overrides, inside a Hydra app or not."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name, overrides)
    with initialize_config_module("gptlab.conf", version_base="1.3"):
        return compose(config_name, overrides)


def literal(text: str) -> str:
    """Text that OmegaConf reads back as exactly `text`: `${` would start an interpolation, so it is escaped,
    with any backslashes right before it doubled."""
    return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)


def _literals(node: Any) -> Any:
    if isinstance(node, str):
        return literal(node)
    if isinstance(node, dict):
        return {k: _literals(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_literals(v) for v in node]
    return node


def to_spec(spec: type[T], node: Any, name: str) -> T:
    """The typed spec a config node describes. Keys starting with `_` (Hydra's `_target_`) are Hydra's;
    an unknown key, a wrong type or a value out of range is one line that names the key."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    values = {k: v for k, v in values.items() if not str(k).startswith("_")}
    known = {f.name for f in fields(spec)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise GptlabError(f"unknown config key {name}.{unknown[0]}: {name} takes {', '.join(sorted(known))}")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(spec), _literals(values))  # wrong types fail here
        return OmegaConf.to_object(typed)  # type: ignore[return-value]  # builds spec: __post_init__ checks ranges
    except OmegaConfBaseException as e:
        key = f"{name}.{e.key}" if getattr(e, "key", None) else name  # type: ignore[attr-defined]
        raise GptlabError(f"{key}: {str(e).splitlines()[0]}") from None
    except (ValueError, TokenizerError) as e:
        raise GptlabError(str(e)) from None


def partial_of(node: DictConfig, name: str, known: dict[str, type]) -> Any:
    """A `_partial_` config (optimizer, schedule): checked against its spec where gptlab knows the target."""
    if node.get("_target_") in known:
        spec = to_spec(known[node._target_], node, name)
        return functools.partial(get_method(node._target_), **dataclasses.asdict(spec))
    return instantiate(node, _convert_="all")


def tokenizer_spec(node: Any) -> Any:
    """The tokenizer settings of a `tokenizer=...` node, checked against its kind's spec."""
    kind = node.get("kind") if node is not None else None
    if kind not in TOKENIZERS:
        raise GptlabError(f"tokenizer.kind={kind!r} is not one of {', '.join(TOKENIZERS)}")
    return to_spec(TOKENIZERS[kind].settings, node, "tokenizer")


def groups() -> list[str]:
    """The config groups of conf/ (model, data, lever, experiment, ...)."""
    return sorted(p.name for p in resources.files("gptlab.conf").iterdir() if p.is_dir() and p.name != "hydra"
                  and not p.name.startswith("_"))


def options(group: str) -> list[str]:
    """A group's options: its YAML files and the specs that are options as they are (config.DEFAULT_OPTIONS)."""
    folder = resources.files("gptlab.conf").joinpath(*group.split("/"))
    files = [p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")] if folder.is_dir() else []
    return sorted({*files, *(o for g, o in DEFAULT_OPTIONS if g == group)})


def check_top_level(cfg: DictConfig) -> None:
    """Hydra lets `+key=value` add keys even to a typed config; a typo there is an error, not ignored."""
    known = {f.name for f in fields(TrainConfig)} | {"hydra"}
    unknown = [k for k in cfg.keys() if k not in known]
    if unknown:
        raise GptlabError(f"unknown config key {unknown[0]}{did_you_mean(unknown[0], known | set(groups()))}: the "
                          "top level takes "
                          f"{', '.join(sorted(known))}")
    if cfg.sample_tokens < 0:
        raise GptlabError(f"sample_tokens must be >= 0 (0: no sample), got {cfg.sample_tokens}")
    if cfg.compile not in (True, False, "auto"):
        raise GptlabError(f"compile={cfg.compile} is not one of true, false, auto")
    if cfg.get("checkpoint_every"):
        try:
            parse_duration(cfg.checkpoint_every, "checkpoint_every")
        except ValueError as e:
            raise GptlabError(f"{e}, or null") from None
    if cfg.matmul_precision not in ("highest", "high", "medium"):
        raise GptlabError(f"matmul_precision={cfg.matmul_precision} is not one of highest, high, medium")


def check_train(cfg: DictConfig) -> None:
    """What training checks of a composed config before it reads any file or builds anything: unknown keys, wrong
    types, values out of range. `gptlab train` runs it before it imports Lightning (cli.check), so a typo is
    reported at once."""
    check_top_level(cfg)
    for spec, name in ((GPTConfig, "model"), (DataConfig, "data"), (TrainerConfig, "trainer")):
        to_spec(spec, cfg[name], name)
    partial_of(cfg.optim, "optim", OPTIMIZERS)
    partial_of(cfg.scheduler, "scheduler", SCHEDULES)
    tokenizer_spec(cfg.tokenizer)
    if cfg.objective is not None:
        to_spec(GRPOConfig, cfg.objective, "objective")
    if cfg.lora is not None:
        to_spec(LoRAConfig, cfg.lora, "lora")


TRAIN_FREE_TEXT = ("data.path", "ckpt_path", "init_from", "paths.data_dir", "paths.cache_dir")  # taken as typed
