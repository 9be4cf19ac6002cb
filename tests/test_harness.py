"""gptlab as a model of the LM Evaluation Harness: the cross-check against the harness's own `hf` model on the
folder `gptlab export` writes (same scores on local tasks of each kind: multiple choice, rolling perplexity,
generation), `gptlab eval tasks=...`, and the failures a user meets (no extra, no network, an unknown task)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from conftest import make_cfg

lm_eval = pytest.importorskip("lm_eval", reason='the LM Evaluation Harness is an extra: pip install -e ".[eval]"')
pytest.importorskip("transformers", reason="the cross-check runs the harness's hf model")

TASKS = ("shakespeare_next_line", "shakespeare_ppl", "shakespeare_complete")
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def run_and_export(tmp_path_factory, cache_dir, shakespeare_text) -> tuple[Path, Path]:
    """A small BPE model trained briefly (so its greedy choices are clear-cut), and its Hugging Face export."""
    from gptlab.export import run as export
    from gptlab.train import train

    out = tmp_path_factory.mktemp("harness") / "run"
    train(make_cfg(out, cache_dir, ["tokenizer=bpe", "tokenizer.vocab_size=320", "tokenizer.show_progress=false",
                                    "model.block_size=64", "trainer.max_steps=60", "trainer.val_check_interval=60",
                                    "optim.lr=3e-3", "sample_tokens=0"]))
    folder = export(OmegaConf.create({"ckpt_path": str(out), "out": str(out.parent / "hf")}))
    return out, folder


@pytest.fixture(scope="module")
def tasks(tmp_path_factory, shakespeare_text) -> Path:
    """scripts/make_lm_tasks.py's three local tasks, one of each kind, over JSONL files: nothing downloads."""
    spec = importlib.util.spec_from_file_location("make_lm_tasks", SCRIPTS / "make_lm_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    d = tmp_path_factory.mktemp("tasks")
    assert tuple(module.make(shakespeare_text, d, n=40)) == TASKS
    return d


def evaluate(model, tasks: Path, **kwargs) -> dict:
    from lm_eval.tasks import TaskManager

    os.environ["HF_DATASETS_OFFLINE"] = "1"  # local JSON files only
    return lm_eval.simple_evaluate(model=model, tasks=list(TASKS), task_manager=TaskManager(include_path=str(tasks)),
                                   log_samples=True, **kwargs)


def test_gptlab_and_the_harness_hf_model_give_the_same_scores(run_and_export, tasks):
    from gptlab import checkpoint
    from gptlab.harness import GptlabLM

    run, folder = run_and_export
    tok = checkpoint.load(run).tokenizer
    contexts = [json.loads(ln)["context"] for ln in (tasks / "shakespeare_next_line.jsonl").open()]
    assert max(len(tok.encode(c)) for c in contexts) > 64  # some contexts are longer than the model's window
    ours = evaluate(GptlabLM(str(run), device="cpu", batch_size=8), tasks)
    theirs = evaluate("hf", tasks, model_args=f"pretrained={folder},dtype=float32", device="cpu", batch_size=1)
    for task in TASKS:
        a, b = ours["results"][task], theirs["results"][task]
        for metric in ("acc,none", "acc_norm,none", "exact_match,none"):
            if metric in b:
                assert a[metric] == b[metric], (task, metric)
        for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
            if metric in b:
                assert math.isclose(a[metric], b[metric], rel_tol=1e-4), (task, metric, a[metric], b[metric])
        # request by request: log-likelihoods within float32 rounding, greedy flags and generations identical
        for x, y in zip(ours["samples"][task], theirs["samples"][task]):
            for rx, ry in zip(x["resps"], y["resps"]):
                rx, ry = rx[0], ry[0]
                if isinstance(ry, str):
                    assert rx == ry
                else:
                    rx, ry = (rx, ry) if isinstance(ry, (tuple, list)) else ((rx,), (ry,))
                    assert math.isclose(float(rx[0]), float(ry[0]), rel_tol=1e-4, abs_tol=1e-3)
                    assert rx[1:] == ry[1:]
    assert ours["results"]["shakespeare_next_line"]["acc,none"] > 0  # a trained model picks some right continuations
    assert any(s["resps"][0][0] for s in ours["samples"]["shakespeare_complete"])  # and writes something


def eval_cfg(*overrides: str):
    with initialize_config_module(config_module="gptlab.conf", version_base="1.3"):
        return compose(config_name="eval", overrides=list(overrides))


def test_gptlab_eval_tasks_prints_the_table_and_writes_json(run_and_export, tasks, capsys):
    from gptlab.eval import run as eval_run

    run, _ = run_and_export
    result = eval_run(eval_cfg(f"ckpt_path={run}", "tasks='shakespeare_next_line,shakespeare_ppl'",
                               f"include_path={tasks}",
                               "limit=10", "device=cpu"))
    printed = capsys.readouterr().out
    assert "shakespeare_next_line" in printed and "acc_norm" in printed and "bits_per_byte" in printed
    (written,) = run.rglob("eval-*-harness-shakespeare_next_line-shakespeare_ppl.json")
    assert json.loads(written.read_text())["results"] == json.loads(json.dumps(result["results"]))


def test_harness_failures_are_one_line(run_and_export, tasks, monkeypatch):
    from gptlab.errors import GptlabError
    from gptlab.eval import run as eval_run

    run, _ = run_and_export
    with pytest.raises(GptlabError, match="no task named shakespeare_nothing.*include_path=FOLDER"):
        eval_run(eval_cfg(f"ckpt_path={run}", "tasks=shakespeare_nothing", f"include_path={tasks}"))
    with pytest.raises(GptlabError, match="is not a folder"):
        eval_run(eval_cfg(f"ckpt_path={run}", "tasks=shakespeare_ppl", f"include_path={tasks / 'none'}"))
    # a task whose data set is on the Hub, with no network: which data, and how to use local files instead
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(GptlabError, match=r"lambada_openai \(EleutherAI/lambada_openai on the Hugging Face Hub\) "
                                          "could not be downloaded.*include_path"):
        eval_run(eval_cfg(f"ckpt_path={run}", "tasks=lambada_openai", "limit=2", "device=cpu"))
    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)  # as if the extra were not installed
    with pytest.raises(GptlabError, match=r'pip install -e "\.\[eval\]"'):
        eval_run(eval_cfg(f"ckpt_path={run}", "tasks=shakespeare_ppl"))


def test_a_task_is_scored_at_each_validation_into_tensorboard(tmp_path, cache_dir, tasks):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gptlab.train import train

    out = tmp_path / "run"
    train(make_cfg(out, cache_dir, ["tokenizer=bpe", "tokenizer.vocab_size=300", "tokenizer.show_progress=false",
                                    "model.block_size=64", "trainer.max_steps=20", "trainer.val_check_interval=10", "sample_tokens=0",
                                    "callbacks.harness_task.task=shakespeare_next_line",
                                    f"callbacks.harness_task.include_path={tasks}", "callbacks.harness_task.limit=8"]))
    (events,) = (out / "tensorboard").rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    scores = acc.Scalars("harness/shakespeare_next_line/acc")
    assert [s.step for s in scores] == [10, 20] and all(0.0 <= s.value <= 1.0 for s in scores)
    assert "harness/shakespeare_next_line/acc_norm" in acc.Tags()["scalars"]


def test_the_harness_own_command_line_runs_gptlab(run_and_export, tasks, tmp_path):
    """python -m gptlab.harness is lm_eval's CLI with gptlab registered as --model gptlab."""
    import subprocess
    import sys

    run, _ = run_and_export
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "gptlab.harness", "--model", "gptlab", "--model_args",
                           f"pretrained={run}", "--device", "cpu", "--tasks", "shakespeare_ppl", "--include_path", str(tasks),
                           "--limit", "3"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "shakespeare_ppl" in done.stdout and "bits_per_byte" in done.stdout


def test_a_chat_model_prompt_goes_through_its_template_and_stops_at_the_turn_end(shakespeare_text):
    """apply_chat_template renders the harness's chat history with gptlab's template (render()); encoding the
    prompt gives render's ids back (markers are whole tokens), and generation stops at <|end|>."""
    import torch

    from gptlab.harness import GptlabLM
    from gptlab.model import GPT, GPTConfig
    from gptlab.tokenizers import CharTokenizer
    from gptlab.tokenizers.chat import END, chat_tokenizer, render

    tok = chat_tokenizer(CharTokenizer.train(shakespeare_text[:10_000]))
    torch.manual_seed(0)
    lm = GptlabLM(model=GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)),
                  tokenizer=tok)
    history = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Who is here?"},
               {"role": "assistant", "content": "ROMEO"}, {"role": "user", "content": "And then?"}]
    prompt = lm.apply_chat_template(history)
    assert lm.is_chat and lm.tok_encode(prompt) == render(tok, history, reply=True)[0]
    assert lm.eot_token_id == tok.special_tokens[END]


def test_generate_until_decodes_each_token_a_bounded_number_of_times(shakespeare_text):
    """generate_until checks stop sequences on the text as it grows, adding each token's text once: the tokens
    decoded over an answer grow linearly with its length, not quadratically (it decoded the whole row again after
    every token before). Counted, not timed."""
    import torch

    from gptlab.harness import GptlabLM
    from gptlab.model import GPT, GPTConfig
    from gptlab.tokenizers import CharTokenizer

    decoded: list[int] = []

    class Counting(CharTokenizer):
        def decode(self, ids):
            decoded.append(len(ids))
            return super().decode(ids)

    tok = Counting.from_dict(CharTokenizer.train(shakespeare_text[:10_000]).to_dict())
    torch.manual_seed(0)
    lm = GptlabLM(model=GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=512, n_layer=1, n_head=2, n_embd=16)),
                  tokenizer=tok, batch_size=2)

    class Req:
        def __init__(self, n: int) -> None:
            self.args = ("ROMEO:", {"until": ["never written here"], "max_gen_toks": n})

    per_token = {}
    for n in (50, 400):
        decoded.clear()
        (text,) = lm.generate_until([Req(n)], disable_tqdm=True)
        assert len(tok.encode(text)) == n
        per_token[n] = sum(decoded) / n
    assert per_token[400] < 1.5 * per_token[50] and per_token[400] < 4
