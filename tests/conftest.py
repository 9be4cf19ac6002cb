"""Shared fixtures. Tests never download: they use the Tiny Shakespeare copy in ../shared/data
(or $GPTLAB_DATA_DIR) and compose configs with Hydra's compose API into tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

# Each pytest worker's torch, and the CLI runs it starts, get their share of the cores: two workers with two threads
# each on two cores keep each other's threads waiting at every small op (test_configs, test_decode, test_engine
# and test_generate_eval: 117 s with torch's default, 57 s with one thread each, on 2 cores).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _share)))

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from gptlab.config import register_configs

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()))  # were it imported before
register_configs()  # the typed schemas the YAML files extend (the entry points do this on import)

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    """$GPTLAB_DATA_DIR, else ./data of this checkout (where the README's first run downloads to),
    else the shared copy beside the checkout (CI)."""
    if os.environ.get("GPTLAB_DATA_DIR"):
        return Path(os.environ["GPTLAB_DATA_DIR"]).resolve()
    for d in (REPO / "data", REPO.parent / "shared" / "data"):
        if (d / "tinyshakespeare" / "input.txt").is_file():
            return d.resolve()
    return (REPO / "data").resolve()


DATA_DIR = _data_dir()
SHAKESPEARE = DATA_DIR / "tinyshakespeare" / "input.txt"

# every process started by the tests (the CLI ones too) finds the data here and downloads nothing
os.environ["GPTLAB_DATA_DIR"] = str(DATA_DIR)


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu need CUDA: without it they are skipped, not failed."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One token cache for the whole session: Tiny Shakespeare is tokenized once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"Tiny Shakespeare not found at {SHAKESPEARE}")
    return SHAKESPEARE.read_text(encoding="utf-8")


def make_cfg(out_dir: Path, cache_dir: Path, overrides: list[str] = (), config_name: str = "train") -> DictConfig:
    """Compose the real config as the CLI would, with a small, fast nano run as the base."""
    with initialize_config_module(config_module="gptlab.conf", version_base="1.3"):
        return compose(config_name=config_name, overrides=nano_run(out_dir, cache_dir, overrides))


def nano_run(out_dir: Path, cache_dir: Path, overrides: list[str] = ()) -> list[str]:
    """The command line of make_cfg's run: a small, fast nano run, then `overrides`."""
    return [
        "model=nano",
        "trainer=cpu",
        "trainer.precision=32-true",  # auto would pick by the machine: every test runs alike everywhere
        "trainer.max_steps=20",
        "trainer.val_check_interval=10",
        "trainer.limit_val_batches=2",
        "data.batch_size=8",
        "scheduler.warmup_steps=2",
        "sample_tokens=20",
        "callbacks.text_samples.max_new_tokens=20",
        "callbacks.progress_bar.mode=lines",
        f"paths.output_dir={out_dir}",
        f"paths.cache_dir={cache_dir}",
        *overrides,
    ]


@pytest.fixture
def cfg_factory(tmp_path, cache_dir):
    def factory(*overrides: str, out: str = "run") -> DictConfig:
        return make_cfg(tmp_path / out, cache_dir, list(overrides))

    return factory


@pytest.fixture(scope="session")
def hf_gpt2(tmp_path_factory, shakespeare_text) -> Path:
    """A small random GPT-2 in the Hugging Face layout, saved by transformers, with a byte-level BPE of 300
    tokens in GPT-2's file format: the local stand-in for GPT-2's real weights (nothing downloads in tests)."""
    transformers = pytest.importorskip("transformers")
    from gptlab.tokenizers import ByteLevelBPE
    from gptlab.tokenizers.hf_export import hf_tokenizer_files

    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    tok = ByteLevelBPE.train(shakespeare_text[:200_000], vocab_size=300, show_progress=False)
    config = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=tok.eot_id, eos_token_id=tok.eot_id)
    import torch

    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    for name, text in hf_tokenizer_files(tok).items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder
