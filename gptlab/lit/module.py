"""The LightningModule: the GPT plus its loss, metrics, optimizer and lr schedule."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import torch
from torchmetrics import MeanMetric, SumMetric

from gptlab import checkpoint
from gptlab.errors import GptlabError
from gptlab.lit.metrics import batch_figures, byte_table, epoch_figures
from gptlab.lit.optim import build_optimizer, optimizer_groups
from gptlab.lit.schedule import WarmupCosine
from gptlab.model import GPT, GPTConfig, LoRAConfig, add_lora, add_tokens
from gptlab.model.lora import adapters, base_checksum, train_token_rows

NEW_TOKENS = checkpoint.NEW_TOKENS
from gptlab.tokenizers import Tokenizer


class GPTLitModule(L.LightningModule):
    """Wraps a GPT for training and validation.

    The model is built once its vocabulary is known: at once when a tokenizer is given (or taken as it is,
    `gpt=`, a checkpoint's), otherwise in `setup` from the datamodule's, after Lightning has had the data prepared (once per node).
    The optimizer and the lr schedule arrive as factories (Hydra's `_partial_: true`): the optimizer takes
    the parameter groups, the schedule nothing. Every checkpoint carries `checkpoint.record(...)`: the model
    spec, the tokenizer and the run's config, so the file alone rebuilds the model and resumes the run.
    With `lora` (finetune=lora) the model gets adapters once it is built and only they train; a checkpoint then
    holds the adapters alone when the run started from a `base` (init_from=), which loading rebuilds.
    """

    def __init__(self, model: GPTConfig, optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
                 scheduler: Optional[Callable[[], WarmupCosine]] = None, compile: bool = False,
                 tokenizer: Optional[Tokenizer] = None, run_config: Optional[dict] = None,
                 val_tokens_per_char: float = 1.0, gpt: Optional[GPT] = None, lora: Optional[LoRAConfig] = None,
                 base: Optional[str] = None, new_tokens_from: Optional[int] = None) -> None:
        super().__init__()
        self.lora, self.base, self.base_checksum = lora, base, ""  # finetune=lora; what its adapters sit on
        self.new_tokens_from = new_tokens_from  # LoRA: the token table's rows from this one on train too
        self.config = model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.compile, self.run_config = compile, run_config or {}
        self.val_tokens_per_char = val_tokens_per_char
        self.model: Optional[GPT] = None
        self.tokenizer: Optional[Tokenizer] = None
        if gpt is not None:  # a trained one (a checkpoint's), with its tokenizer
            self.tokenizer, self.model = tokenizer, gpt
        elif tokenizer is not None:
            self.build(tokenizer)
        self.val_loss = MeanMetric()
        self.val_text_nats, self.val_text_bytes = SumMetric(), SumMetric()  # for bits per byte
        self._text_bytes: Optional[torch.Tensor] = None  # bytes of text per token id (the tokenizer's)
        # torch.compile's wrapper is kept in a list, not as an attribute, so it is not registered as a
        # submodule: the state_dict keeps the plain `model.*` keys and a compiled run's checkpoint loads anywhere
        self._compiled: list[Callable] = []
        self.best_val, self.best_step = math.inf, None  # lowest val/loss of this run, and its step
        self.schedule: Optional[WarmupCosine] = None

    def build(self, tokenizer: Tokenizer) -> None:
        """Build the GPT for this tokenizer: model.vocab_size defaults to the tokenizer's; a larger one (padded
        to a multiple of 64, say) is kept."""
        vocab = self.config.vocab_size
        if vocab is None:
            self.config = dataclasses.replace(self.config, vocab_size=tokenizer.vocab_size)
        elif vocab < tokenizer.vocab_size:
            raise GptlabError(f"model.vocab_size={vocab} is smaller than the tokenizer's {tokenizer.vocab_size} "
                              "tokens: remove the override (it defaults to the tokenizer's) or raise it")
        self.tokenizer, self.model = tokenizer, GPT(self.config)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule  # type: ignore[attr-defined]
        if self.model is None:
            self.build(dm.tokenizer)
        elif dm is not None and self.tokenizer is not None and dm.tokenizer.vocab_size > self.tokenizer.vocab_size:
            # the data grew the tokenizer (chat markers, new characters): the model gets rows for the new ids
            self.model = add_tokens(self.model, self.tokenizer.vocab_size, dm.tokenizer.vocab_size)
            self.new_tokens_from = self.tokenizer.vocab_size
            self.config, self.tokenizer = self.model.config, dm.tokenizer
        if dm is not None and hasattr(dm, "val_tokens_per_char"):
            self.val_tokens_per_char = dm.val_tokens_per_char
        if self.lora is not None and not any(adapters(self.model)):  # a resume's base is checked on loading
            self.base_checksum = base_checksum(self.model) if self.base else ""
            add_lora(self.model, self.lora)
            if self.lora.tokens == "all":
                self.new_tokens_from = 0
            if self.new_tokens_from is not None:
                train_token_rows(self.model, self.new_tokens_from)

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None):
        assert self.model is not None, "the model is built in setup() or from a tokenizer"
        if self.compile and not self._compiled:
            self._compiled.append(torch.compile(self.model))
        return (self._compiled[0] if self._compiled else self.model)(idx, targets)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        _, loss = self(*batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def batch_tokens(self, batch: Any) -> tuple[int, int]:
        """(tokens, the width of its rows) a training batch put through the model, for the throughput figures."""
        return batch[0].numel(), batch[0].size(1)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits, loss = self(x, y)  # with the targets, as in training: a compiled model reuses its graph
        table = None
        if self.tokenizer is not None:  # bits per byte: each scored token's loss against the bytes it stands for
            table = self._text_bytes = byte_table(self.tokenizer, y.device, self._text_bytes)
        figures = batch_figures(logits, y, loss, table)
        self.val_loss.update(figures.loss, weight=figures.tokens)  # a mean over every scored token (chat: answers)
        if figures.text_nats is not None:
            self.val_text_nats.update(figures.text_nats)
            self.val_text_bytes.update(figures.text_bytes)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # mean over every window, synced across DDP ranks
        text_nats, text_bytes = self.val_text_nats.compute(), self.val_text_bytes.compute()
        for metric in (self.val_loss, self.val_text_nats, self.val_text_bytes):
            metric.reset()
        if not self.trainer.sanity_checking and float(loss) < self.best_val:
            self.best_val, self.best_step = float(loss), self.global_step
        # loss is in nats per token; bits per character and per byte make char and BPE runs comparable (lit/metrics.py,
        # which gptlab eval shares). (Already equal on every rank: sync_dist only tells Lightning so)
        self.log_dict(epoch_figures(loss, text_nats, text_bytes, self.val_tokens_per_char), prog_bar=True,
                      sync_dist=True)
        # x-axis: the number of optimizer steps the evaluated weights have had (Lightning's default is one less)
        self.log("step", float(self.global_step), sync_dist=True)

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None or self.scheduler_factory is None:
            raise RuntimeError("GPTLitModule was built without an optimizer or schedule; it can only run inference")
        assert self.model is not None
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        params = optimizer_groups(self.optimizer_factory, self.model)
        optimizer = build_optimizer(self.optimizer_factory, params, self.device, scaled)
        self.schedule = self.scheduler_factory()
        if self.schedule.total_steps is None and self.trainer.max_steps > 0:
            self.schedule.total_steps = self.trainer.max_steps  # else a time budget aims it (TimeBudget)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if not gradient_clip_val:
            return
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:  # 16-mixed: Lightning unscales first
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        else:  # not Lightning's plugin: it refuses fused AdamW even under bf16-mixed, with nothing to unscale
            nn_utils = torch.nn.utils
            clip = nn_utils.clip_grad_value_ if gradient_clip_algorithm == "value" else nn_utils.clip_grad_norm_
            clip(self.parameters(), gradient_clip_val)

    def on_save_checkpoint(self, ckpt: dict) -> None:
        assert self.model is not None and self.tokenizer is not None
        ckpt["gptlab"] = checkpoint.record(self.config, self.tokenizer, self.run_config, self.val_tokens_per_char)
        if self.lora is not None:
            ckpt["gptlab"]["lora"] = {"config": self.lora.to_dict(), "base": self.base, "checksum": self.base_checksum,
                                      "new_tokens_from": self.new_tokens_from}
            if self.base:  # the base is where it was: keep the adapters only, and the rows of the tokens it lacks
                state = ckpt["state_dict"]
                ckpt["state_dict"] = {k: v for k, v in state.items() if ".lora_" in k}
                if self.new_tokens_from is not None:
                    table = state["model.transformer.wte.weight"]
                    ckpt["state_dict"][NEW_TOKENS] = table[self.new_tokens_from:].clone()

    def on_load_checkpoint(self, ckpt: dict) -> None:
        lora = ckpt.get("gptlab", {}).get("lora")
        if lora and lora["base"]:  # a resume: the base's weights from where they are, checked, beside the adapters
            assert self.model is not None
            state = dict(ckpt["state_dict"])
            base = checkpoint.lora_base(lora, self.config, Path(str(self.trainer.ckpt_path)),
                                        state.pop(NEW_TOKENS, None))
            ckpt["state_dict"] = {**{f"model.{k}": v for k, v in base.state_dict().items()}, **state}
            self.base, self.base_checksum = lora["base"], lora["checksum"]
