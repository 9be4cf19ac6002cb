"""Reinforcement learning on verifiable answers (objective=grpo, gptlab/lit/rl.py): the objective's parts, the reward
interface and its errors, and whole runs (learning from a reward, resuming exactly, bad settings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlab import checkpoint
from gptlab.data.chat import questions, read_conversations
from gptlab.data.rewards import RewardError, exact_match, load_reward, score
from gptlab.errors import GptlabError
from gptlab.lit.grpo import advantages, policy_loss
from gptlab.lit.rl import GRPOModule
from gptlab.model import GPT, GPTConfig
from gptlab.tokenizers import CharTokenizer
from gptlab.tokenizers.chat import chat_tokenizer
from gptlab.train import train

REPO = Path(__file__).resolve().parents[1]
CHARS = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-=?.,:'\n"


def test_advantages_sum_to_zero_within_each_group():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.5, 2.0, -1.0, 3.0]])
    adv = advantages(rewards)
    assert torch.allclose(adv.sum(dim=1), torch.zeros(3), atol=1e-6)
    assert adv[0].tolist() == [0.5, -0.5, -0.5, 0.5] and adv[1].abs().max() == 0  # all alike: nothing to learn
    assert adv[2].argmax() == 3 and adv[2].argmin() == 2  # the order of the rewards is kept


def test_the_loss_weighs_each_answer_token_by_its_advantage_and_measures_the_kl():
    torch.manual_seed(0)
    logits, targets = torch.randn(5, 7, requires_grad=True), torch.tensor([1, 2, 3, 4, 5])
    weights = torch.tensor([1.0, 1.0, -0.5, -0.5, 0.0])
    loss, stats = policy_loss(logits, targets, weights, reference_logits=logits.detach())
    logp = torch.log_softmax(logits, -1)[torch.arange(5), targets]
    assert loss.item() == pytest.approx(-(weights * logp).mean().item())
    assert stats["kl"].item() == pytest.approx(0.0, abs=1e-6)  # the start model itself
    loss.backward()
    assert logits.grad[4].abs().max() == 0  # advantage 0: no gradient
    # a token of a better-than-average answer is made likelier, one of a worse answer less likely
    assert logits.grad[0, 1] < 0 and logits.grad[2, 3] > 0
    _, stats = policy_loss(logits, targets, weights, reference_logits=torch.zeros(5, 7))
    assert stats["kl"] > 0 and 0 < stats["entropy"] <= torch.log(torch.tensor(7.0))


def tiny_module(tok) -> GRPOModule:
    from gptlab.lit.grpo import GRPOConfig

    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=tok.vocab_size))
    module = GRPOModule(GRPOConfig(), exact_match, 0, model=model.config, tokenizer=tok, gpt=model)
    module.on_fit_start()
    return module


def test_prompt_tokens_get_no_gradient_only_the_answer_tokens_do():
    tok = chat_tokenizer(CharTokenizer.train(CHARS))
    module = tiny_module(tok)
    prompt, answer = [5, 6, 7, 8, 9, 10], [11, 12, 13]
    seen = {}
    features = module.model.features

    def keep(idx, cache=None):  # the hidden states the head reads, kept to ask for their gradient
        seen["x"] = features(idx, cache)
        seen["x"].retain_grad()
        return seen["x"]

    module.model.features = keep
    loss, _ = module.update([(prompt, answer, 1.0)])
    loss.backward()
    norms = seen["x"].grad[0].norm(dim=-1)  # (T,): position t predicts token t + 1
    assert (norms[: len(prompt) - 1] == 0).all()  # predicting a prompt token: never scored
    assert (norms[len(prompt) - 1:] > 0).all()  # predicting each answer token (the first from the prompt's last)
    assert len(norms) == len(prompt) + len(answer) - 1


def test_questions_are_every_answer_with_the_conversation_before_it(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"task": "add", "messages": [
        {"role": "user", "content": "1 + 2?"}, {"role": "assistant", "content": "3"},
        {"role": "user", "content": "add 4"}, {"role": "assistant", "content": "7"}]}) + "\n")
    tok = chat_tokenizer(CharTokenizer.train(CHARS))
    qs = questions(tok, read_conversations(path), block_size=64)
    assert [q.reference for q in qs] == ["3", "7"] and [len(q.messages) for q in qs] == [1, 3]
    assert qs[1].prompt[-1] == tok.special_tokens["<|assistant|>"] and qs[1].task == "add"
    assert qs[1].where.endswith("t.jsonl:1") and [q.budget for q in qs] == [2, 2]  # "3" or "7", then <|end|>
    first_turn_gone = questions(tok, read_conversations(path), block_size=16)[1]  # 1 + 2?, 3 no longer fit
    assert first_turn_gone.messages == qs[1].messages and len(first_turn_gone.prompt) < len(qs[1].prompt)


def test_rewards_are_numbers_or_one_line_naming_the_function_and_the_answer(tmp_path, monkeypatch):
    msgs = [{"role": "user", "content": "2 + 2?"}]
    assert score(exact_match, msgs, "4", "4") == 1.0 and score(exact_match, msgs, " 4", "4") == 0.0
    assert score(lambda m, a, r: a == r, msgs, "4", "4") == 1.0  # True counts as 1

    def broken(messages, answer, reference):
        return {"4": 1.0}[answer]

    with pytest.raises(RewardError, match=r"test_rl:.*broken raised KeyError: '5' \(for the answer '5'"):
        score(broken, msgs, "5", "4")
    with pytest.raises(RewardError, match=r"returned 'yes' for the answer '4'.*must return a finite number"):
        score(lambda m, a, r: "yes", msgs, "4", "4")
    with pytest.raises(RewardError, match="returned nan"):
        score(lambda m, a, r: float("nan"), msgs, "4", "4")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_rewards.py").write_text("def close(messages, answer, reference):\n    return 0.5\n")
    assert load_reward("my_rewards:close")(msgs, "4", "4") == 0.5  # found in the folder the run starts from
    for spec, message in (("nomodule_xyz:f", "cannot import nomodule_xyz"), ("my_rewards:far", "has no function far"),
                          ("my_rewards", "is not module:function")):
        with pytest.raises(RewardError, match=message):
            load_reward(spec)


# --- whole runs ----------------------------------------------------------------------------------------------

def task_file(folder: Path, n: int = 200) -> Path:
    """Conversations whose answer is a copy of the prompt's number (a task a tiny model can meet by chance)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, lo in (("train.jsonl", 0), ("val.jsonl", n)):
        with open(folder / name, "w") as f:
            for i in range(lo, lo + (n if lo == 0 else 40)):
                f.write(json.dumps({"task": "copy", "messages": [{"role": "user", "content": f"say {i % 10}"},
                                                                 {"role": "assistant", "content": str(i % 10)}]}) + "\n")
    return folder


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> tuple[Path, Path]:
    """An untrained chat model (random weights, the chat markers) and a task folder: RL's starting point."""
    root = tmp_path_factory.mktemp("rl")
    tok = chat_tokenizer(CharTokenizer.train(CHARS))
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=tok.vocab_size))
    checkpoint.save(root / "start.ckpt", model, tok)
    return root / "start.ckpt", task_file(root / "tasks")


def rl(start, out: Path, cache_dir, *overrides: str) -> dict:
    from conftest import make_cfg

    ckpt, tasks = start
    return train(make_cfg(out, cache_dir, ["objective=grpo", "data=chat", f"data.path={tasks}", f"init_from={ckpt}",
                                           "objective.samples=8", "objective.max_new_tokens=4", "data.batch_size=8",
                                           "objective.val_questions=40", "sample_tokens=0", "~callbacks.text_samples",
                                           "optim.lr=1e-2", "model.dropout=0.0", *overrides]))


@pytest.fixture
def favour(tmp_path, monkeypatch) -> str:
    """A reward for answers made of x's: whatever the question, the more x's the better."""
    (tmp_path / "favour.py").write_text("def xs(messages, answer, reference):\n"
                                        "    return answer.count('x') / max(1, len(answer))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "objective.reward=favour:xs"


def test_a_reward_that_favours_one_answer_makes_the_model_give_it(start, tmp_path, cache_dir, favour):
    metrics = rl(start, tmp_path / "run", cache_dir, favour, "trainer.max_steps=40",
                 "trainer.val_check_interval=40")
    assert metrics["val/reward"] > 0.9  # greedy answers are all x's now
    assert metrics["val/exact_match"] == 0.0  # and never the data's answer: the reward, not the data, was learnt
    logs = next((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logs.parent)).Reload()
    start_reward = [e.value for e in events.Scalars("val/reward") if e.step == 0]
    assert start_reward and start_reward[0] < 0.2  # the untrained model's answers were not x's
    for tag in ("rl/reward", "rl/any_exact", "rl/trained_groups", "rl/answer_tokens", "rl/entropy", "rl/kl"):
        assert len(events.Scalars(tag)) >= 1, tag
    assert events.Scalars("rl/kl")[-1].value > 0  # it moved away from the start model
    from gptlab.viz.curves import read_curves

    drawn = read_curves(logs.parent, "rl").series  # what `gptlab plot` draws: reward and exact match by step
    assert drawn["val/exact_match"][0][0] == 0 and len(drawn["rl/reward"][0]) >= 1


def test_a_resumed_rl_run_ends_as_an_uninterrupted_one(start, tmp_path, cache_dir, favour):
    common = ("trainer.val_check_interval=3", "scheduler.total_steps=6", "objective.val_questions=8", favour)
    straight = rl(start, tmp_path / "straight", cache_dir, *common, "trainer.max_steps=6")
    rl(start, tmp_path / "first", cache_dir, *common, "trainer.max_steps=3")
    from conftest import make_cfg

    again = ["trainer.max_steps=6", f"ckpt_path={tmp_path / 'first'}"]  # the command line of a resume
    resumed = train(make_cfg(tmp_path / "second", cache_dir, again), overrides=again)
    assert resumed["val/reward"] == pytest.approx(straight["val/reward"])
    a = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "second/checkpoints/last.ckpt", weights_only=True)
    first = checkpoint.load(start[0]).model.state_dict()
    assert a["global_step"] == b["global_step"] == 6
    for k, v in a["state_dict"].items():
        assert torch.allclose(v, b["state_dict"][k], atol=1e-6), k
    for k, v in b[checkpoint.REFERENCE].items():  # the KL is still measured against where the run began
        assert torch.equal(v, first[k]), k
    assert checkpoint.load(tmp_path / "second").model is not None  # an RL checkpoint loads as any other


def test_rl_with_lora_measures_its_kl_against_the_base_without_a_copy(start, tmp_path, cache_dir, favour):
    """finetune=lora: the start model is the base with the adapters off; its checkpoints hold the adapters alone."""
    rl(start, tmp_path / "run", cache_dir, favour, "finetune=lora", "trainer.max_steps=3", "objective.kl_coef=0.1",
       "trainer.log_every_n_steps=1",
       "trainer.val_check_interval=3", "objective.val_questions=8")
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint.REFERENCE not in ckpt and all(".lora_" in k for k in ckpt["state_dict"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = next((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    kl = [e.value for e in EventAccumulator(str(logs.parent)).Reload().Scalars("rl/kl")]
    assert kl[0] == 0.0 and kl[-1] > 0  # at the start the adapters change nothing; then the policy moves


def test_a_reward_failing_mid_run_stops_it_saved_in_one_line(start, tmp_path, cache_dir, monkeypatch):
    (tmp_path / "picky.py").write_text("calls = 0\n"
                                       "def tired(messages, answer, reference):\n"
                                       "    global calls\n"
                                       "    calls += 1\n"
                                       "    return 0.0 if calls < 150 else None\n")  # 64 answers a step
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RewardError, match=r"^the reward picky:tired returned None for the answer '.*' \(reference "
                                          r"'\d'\): it must return a finite number at step 2; the run's last checkpoint"
                                          r" is .*last.ckpt: fix the reward and resume with ckpt_path="):
        rl(start, tmp_path / "run", cache_dir, "objective.reward=picky:tired", "trainer.max_steps=4",
           "objective.val_questions=0")
    assert torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)["global_step"] == 2


@pytest.mark.parametrize("overrides, message", [
    (["objective.samples=1"], "objective.samples must be >= 2"),
    (["objective.temperature=0"], "objective.temperature must be > 0"),
    (["data=text", "data.path=null"], "objective=grpo learns from conversations"),
    (["objective.reward=gptlab.data.rewards:nothing"], "has no function nothing"),
])
def test_bad_rl_settings_are_one_line_before_anything_runs(start, tmp_path, cache_dir, overrides, message):
    with pytest.raises(GptlabError, match=message):
        rl(start, tmp_path / "run", cache_dir, "trainer.max_steps=2", *overrides)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_reward_that_fails_on_the_first_answer_stops_the_run_before_anything_is_written(start, tmp_path, cache_dir,
                                                                                           monkeypatch):
    (tmp_path / "strict.py").write_text("def score(messages, answer, reference):\n    return int(answer) / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RewardError, match=r"the reward strict:score raised ZeroDivisionError: division by zero \(for "
                                          r"the answer '\d', reference '\d'\)$"):
        rl(start, tmp_path / "run", cache_dir, "objective.reward=strict:score", "trainer.max_steps=2")
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "tensorboard").exists()


def test_a_prompt_too_long_for_the_context_is_named_before_anything_runs(start, tmp_path, cache_dir):
    tasks = task_file(tmp_path / "tasks", n=20)
    with open(tasks / "train.jsonl", "a") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "x" * 40},
                                         {"role": "assistant", "content": "y"}]}) + "\n")
    with pytest.raises(GptlabError, match=r"train.jsonl:21: a prompt takes 43 tokens and the context holds 32"):
        rl((start[0], tasks), tmp_path / "run", cache_dir, "trainer.max_steps=2")


def test_an_unimportable_reward_through_the_cli_is_one_line_and_writes_nothing(start, tmp_path, cache_dir):
    ckpt, tasks = start
    r = subprocess.run([sys.executable, "-m", "gptlab.train", "experiment=rl_tasks", f"init_from={ckpt}",
                        f"data.path={tasks}", "objective.reward=no_such_module:score", "hydra.run.dir=run",
                        f"paths.cache_dir={cache_dir}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: objective.reward=no_such_module:score: cannot import no_such_module"), r.stderr
    assert not (tmp_path / "run").exists()
