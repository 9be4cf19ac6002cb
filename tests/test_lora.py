"""LoRA (finetune=lora, gptlab/model/lora.py): adapters start as the base, only they train, merged equals unmerged
for every target and lever, a run's checkpoint keeps the adapters alone and rebuilds (and checks) its base, resume
is exact, and the PEFT export loads in peft itself with gptlab's logits."""

from __future__ import annotations

import json

import pytest
import torch

from gptlab import checkpoint
from gptlab.errors import GptlabError
from gptlab.model import GPT, ConfigError, GPTConfig, LoRAConfig, add_lora, merge_lora
from gptlab.model.lora import TARGETS, adapter_state, trainable
from gptlab.train import train

LEVERS = {  # every lever's model (conf/lever/), and GPT-1's post-norm
    "gpt2": {}, "gpt1": dict(norm="post"), "llama": dict(pos="rope", norm_type="rmsnorm", activation="swiglu"),
    "qwen3-gqa": dict(pos="rope", norm_type="rmsnorm", activation="swiglu", qk_norm=True, n_kv_head=2, bias=False),
    "relu2-softcap-untied": dict(activation="relu2", logit_softcap=30.0, tie_weights=False),
    "zero_init": dict(zero_init=True),
}


def tiny(**options) -> GPT:
    """A small GPT with weights as after training (zero_init's zero projections moved too)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, n_layer=2, n_head=4, n_embd=32, block_size=16, dropout=0.0, **options))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def randomise_adapters(model: GPT) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.normal_(0, 0.2)


@pytest.mark.parametrize("lever", LEVERS)
@pytest.mark.parametrize("targets", [list(TARGETS), ["attn.c_attn"], ["attn.c_proj"], ["mlp.c_fc"], ["mlp.c_proj"]])
def test_adapters_start_as_the_base_and_merge_into_the_same_model(lever, targets):
    model, x = tiny(**LEVERS[lever]), torch.randint(0, 40, (2, 12))
    base = model(x)[0]
    add_lora(model, LoRAConfig(rank=4, targets=targets))
    assert torch.equal(model(x)[0], base)  # B starts at zero
    randomise_adapters(model)
    adapted = model(x)[0]
    assert (adapted - base).abs().max() > 1e-2  # the adapters change the outputs...
    merge_lora(model)
    assert not adapter_state(model) and all(p.requires_grad for p in model.parameters())
    assert torch.allclose(model(x)[0], adapted, atol=1e-5)  # ...and merging them keeps the change exactly


def test_only_the_adapters_train():
    model = tiny()
    add_lora(model, LoRAConfig(rank=2))
    trains, total = trainable(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".lora_" in n for n in names)
    assert trains == 2 * 2 * (32 + 96) + 2 * 2 * (32 + 32) + 2 * 2 * (32 + 128) + 2 * 2 * (128 + 32)
    _, loss = model(torch.randint(0, 40, (2, 12)), torch.randint(0, 40, (2, 12)))
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if ".lora_" not in n)
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("lora_B"))


@pytest.mark.parametrize("settings, message", [
    (dict(rank=0), "lora.rank must be >= 1"), (dict(alpha=0), "lora.alpha must be > 0"),
    (dict(targets=["attn.q"]), "'attn.q' is not a target: use any of attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj"),
    (dict(dropout=1.0), "lora.dropout must be in"), (dict(tokens="some"), "lora.tokens must be new .* or all"),
])
def test_bad_settings_are_one_line(settings, message):
    with pytest.raises(ConfigError, match=message):
        LoRAConfig(**settings)


@pytest.mark.parametrize("tokens", ["new", "all"])
@pytest.mark.parametrize("lever", ["gpt2", "llama", "qwen3-gqa"])
def test_the_peft_adapter_loads_in_peft_with_gptlabs_logits(tmp_path, lever, tokens):
    pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from peft import PeftModel

    from gptlab.model.hf_export import architecture, save_hf_folder
    from gptlab.model.hf_peft import adapter_files

    model = tiny(**LEVERS[lever])
    save_hf_folder(model, tmp_path / "base")
    lora = LoRAConfig(rank=4, alpha=8, tokens=tokens)
    add_lora(model, lora)
    randomise_adapters(model)
    rows = None
    if tokens == "all":  # the whole table trained (and the head tied to it): PEFT's trainable tokens carry it
        rows = model.transformer.wte.weight
        with torch.no_grad():
            rows.add_(torch.randn_like(rows) * 0.1)
    config, tensors = adapter_files(adapter_state(model), model.config, lora, architecture(model.config),
                                    str(tmp_path / "base"), rows)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter/adapter_config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "adapter/adapter_model.safetensors"))
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    x = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        theirs, ours = peft_model(x).logits, model(x)[0]
    assert (ours - tiny(**LEVERS[lever])(x)[0]).abs().max() > 1e-2  # the adapters matter here
    assert torch.allclose(theirs, ours, atol=1e-4), (theirs - ours).abs().max()


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, cache_dir):
    """A base run, then LoRA runs from it: 8 steps straight, and 4 steps resumed to 8."""
    from tests.conftest import make_cfg

    root = tmp_path_factory.mktemp("lora")
    common = ["trainer.val_check_interval=4", "scheduler.total_steps=8", "optim.lr=1e-2"]
    train(make_cfg(root / "base", cache_dir, ["trainer.max_steps=4"]))
    adapted = [*common, "finetune=lora", "lora.rank=4", f"init_from={root / 'base'}"]
    train(make_cfg(root / "straight", cache_dir, [*adapted, "trainer.max_steps=8"]))
    train(make_cfg(root / "first", cache_dir, [*adapted, "trainer.max_steps=4"]))
    resume = ["trainer.max_steps=8", f"ckpt_path={root / 'first'}"]  # the rest as the checkpoint recorded it
    train(make_cfg(root / "resumed", cache_dir, resume), overrides=resume)
    return root


def test_a_lora_run_keeps_its_adapters_alone_and_resumes_exactly(lora_runs):
    straight = torch.load(lora_runs / "straight/checkpoints/last.ckpt", weights_only=True)
    resumed = torch.load(lora_runs / "resumed/checkpoints/last.ckpt", weights_only=True)
    assert straight["state_dict"] and all(".lora_" in k for k in straight["state_dict"])  # no base weights
    assert straight["gptlab"]["lora"]["base"] == str(lora_runs / "base")
    assert resumed["global_step"] == straight["global_step"] == 8
    for k, v in straight["state_dict"].items():
        assert torch.allclose(v, resumed["state_dict"][k], atol=1e-6), k
    base = checkpoint.load(lora_runs / "base").model
    run = checkpoint.load(lora_runs / "straight")  # the base rebuilt, the adapters folded in
    x = torch.randint(0, 65, (1, 20))
    assert (run.model(x)[0] - base(x)[0]).abs().max() > 1e-4
    unmerged = checkpoint.load(lora_runs / "straight", merge=False).model
    assert torch.allclose(unmerged(x)[0], run.model(x)[0], atol=1e-5)


def test_adapters_refuse_a_base_that_changed(lora_runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(lora_runs / "straight", run)
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    base = tmp_path / "base"
    shutil.copytree(lora_runs / "base", base)
    ckpt["gptlab"]["lora"]["base"] = str(base)
    torch.save(ckpt, run / "checkpoints/last.ckpt")
    checkpoint.load(run / "checkpoints/last.ckpt")  # the same weights elsewhere: fine
    state = torch.load(base / "checkpoints/best.ckpt", weights_only=True)
    state["state_dict"]["model.transformer.ln_f.weight"] += 0.01  # the base trained on
    torch.save(state, base / "checkpoints/best.ckpt")
    with pytest.raises(GptlabError, match="is not the base the adapters of .* were trained on"):
        checkpoint.load(run / "checkpoints/last.ckpt")


def test_tokens_the_base_lacks_train_and_its_own_stay(lora_runs, cache_dir, tmp_path):
    """Fine-tuning on conversations adds the chat markers and new characters (digits): their rows train with the
    adapters (else they would all stay one average row), the base's rows stay, and the checkpoint keeps them."""
    from tests.conftest import make_cfg

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {a} + {a}?"},
                                                     {"role": "assistant", "content": str(2 * a)}]}) + "\n"
                            for a in range(40)))
    train(make_cfg(tmp_path / "sft", cache_dir, ["data=chat", f"data.path={data}", "finetune=lora", "lora.rank=4",
                                                 "trainer.max_steps=4", "optim.lr=1e-2",
                                                 f"init_from={lora_runs / 'base'}"]))
    saved = torch.load(tmp_path / "sft/checkpoints/last.ckpt", weights_only=True)
    first = saved["gptlab"]["lora"]["new_tokens_from"]
    assert first == 65 and checkpoint.NEW_TOKENS in saved["state_dict"]
    base = checkpoint.load(lora_runs / "base").model.transformer.wte.weight
    table = checkpoint.load(tmp_path / "sft").model.transformer.wte.weight
    assert torch.equal(table[:first], base)  # the base's own rows: untouched, weight decay included
    new = table[first:]
    assert (new - base.mean(0)).abs().max() > 1e-3 and (new[0] - new[1:]).abs().max() > 1e-3  # trained, apart


def test_the_whole_table_trains_with_lora_tokens_all_and_exports_as_peft_trainable_tokens(lora_runs, cache_dir,
                                                                                             tmp_path):
    """lora.tokens=all: every row of the table (and the tied head) trains beside the adapters; the checkpoint keeps
    the table, the base stays as it was on disk, and the PEFT export puts the trained rows on the unchanged base."""
    pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from omegaconf import OmegaConf
    from peft import PeftModel

    from gptlab import export
    from tests.conftest import make_cfg

    train(make_cfg(tmp_path / "run", cache_dir, ["finetune=lora", "lora.rank=4", "lora.tokens=all", "optim.lr=1e-2",
                                                 "trainer.max_steps=4", f"init_from={lora_runs / 'base'}"]))
    saved = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    assert saved["gptlab"]["lora"]["new_tokens_from"] == 0 and saved["state_dict"][checkpoint.NEW_TOKENS].shape[0] == 65
    base = checkpoint.load(lora_runs / "base").model.transformer.wte.weight
    run = checkpoint.load(tmp_path / "run").model
    assert ((run.transformer.wte.weight - base).abs().amax(dim=1) > 1e-4).all()  # every row trained (the tied head)
    export.run(OmegaConf.create({"ckpt_path": str(tmp_path / "run"), "out": str(tmp_path / "x"), "adapter": True}))
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "x/base")
    assert torch.equal(hf_base.transformer.wte.weight.detach(), base)  # the base as it is: its own rows
    theirs = PeftModel.from_pretrained(hf_base, tmp_path / "x/adapter").eval()
    x = torch.randint(0, 65, (2, 20))
    with torch.no_grad():
        assert torch.allclose(theirs(x).logits, run(x)[0], atol=1e-4)


def test_settings_that_cannot_work_are_one_line(lora_runs, cache_dir, tmp_path):
    from omegaconf import OmegaConf

    from gptlab import export
    from gptlab.__main__ import check
    from tests.conftest import make_cfg

    assert check(["train", "finetune=lora", "lora.rank=0"]) == "error: lora.rank must be >= 1, got 0"
    assert "is not a target" in check(["train", "finetune=lora", "lora.targets=[attn.c_attn,wte]"])
    with pytest.raises(GptlabError, match="finetune=lora cannot run under FSDP"):
        train(make_cfg(tmp_path / "fsdp", cache_dir, ["finetune=lora", "trainer=fsdp", f"init_from={lora_runs / 'base'}"]))
    assert not (tmp_path / "fsdp").exists()
    with pytest.raises(GptlabError, match="holds no adapters .* export it without adapter=true"):
        export.run(OmegaConf.create({"ckpt_path": str(lora_runs / "base"), "out": str(tmp_path / "x"), "adapter": True}))
    assert not (tmp_path / "x").exists()


def test_export_adapter_writes_the_base_and_a_peft_adapter_of_the_run(lora_runs, tmp_path):
    pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from omegaconf import OmegaConf
    from peft import PeftModel

    from gptlab import export

    export.run(OmegaConf.create({"ckpt_path": str(lora_runs / "straight"), "out": str(tmp_path / "x"), "adapter": True}))
    assert sorted(p.name for p in (tmp_path / "x/adapter").iterdir()) == ["adapter_config.json",
                                                                        "adapter_model.safetensors"]
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "x/base")
    theirs = PeftModel.from_pretrained(base, tmp_path / "x/adapter").eval()
    ours = checkpoint.load(lora_runs / "straight").model
    x = torch.randint(0, 65, (2, 20))
    with torch.no_grad():
        assert torch.allclose(theirs(x).logits, ours(x)[0], atol=1e-4)
