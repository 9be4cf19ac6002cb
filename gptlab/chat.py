"""Talk to a fine-tuned model: `python -m gptlab.chat ckpt_path=RUN_DIR`.

In a terminal: type a message, read the answer as it is written. /reset starts over, /system TEXT sets the
system message, /exit or Ctrl-D leaves; Ctrl-C stops an answer. The oldest turns are left out once the
conversation no longer fits in the model's context. With standard input not a terminal, all of it is one
message (a final newline, as `echo` adds, is dropped) and only the answer is printed: for scripts.
"""

from __future__ import annotations

import sys
from typing import Optional

from omegaconf import DictConfig

from gptlab import checkpoint, cli
from gptlab.config import ChatConfig, register_configs, to_spec
from gptlab.devices import inference_dtype, pick_device
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.model.chat import reply
from gptlab.tokenizers import Tokenizer
from gptlab.tokenizers.chat import Message, has_template

register_configs()
HELP = "/reset: start over   /system TEXT: set the system message   /exit or Ctrl-D: leave   Ctrl-C: stop an answer"


class Session:
    """One conversation with a model: its messages, and what /reset and /system do to them."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, cfg: ChatConfig) -> None:
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.system: Optional[str] = self.known(cfg.system) if cfg.system else None
        self.turns: list[Message] = []

    def known(self, text: str) -> str:
        """text without the characters the model's vocabulary cannot encode (a char vocabulary lacks those it
        never saw), saying which were left out."""
        lost = set(self.tokenizer.unknown(text))
        if lost:
            shown = ", ".join(repr(c) for c in sorted(lost)[:10])
            print(f"[not in this model's vocabulary, left out: {shown}]", file=sys.stderr, flush=True)
            text = "".join(c for c in text if c not in lost)
        return text

    def messages(self) -> list[Message]:
        head: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def ask(self, text: str, stream: bool) -> str:
        """The model's answer to text (streamed to stdout if stream); both join the conversation."""
        self.turns.append({"role": "user", "content": self.known(text)})
        out = (lambda piece: print(piece, end="", flush=True)) if stream else None
        try:
            answer, dropped = reply(self.model, self.tokenizer, self.messages(), self.cfg,
                                    seed=self.cfg.seed + len(self.turns), on_text=out)
        except KeyboardInterrupt:
            self.turns.pop()
            raise
        self.turns.append({"role": "assistant", "content": answer})
        if stream:
            print(flush=True)  # the streamed answer's line ends before any note
        if dropped:
            print(f"[the {dropped} oldest message(s) no longer fit in the context of "
                  f"{self.model.config.block_size} tokens: left out]", file=sys.stderr, flush=True)
        return answer


def interactive(session: Session) -> None:
    print(HELP, file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except EOFError:  # Ctrl-D
            print(file=sys.stderr)
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line
            print(file=sys.stderr)
            continue
        command, _, rest = line.strip().partition(" ")
        if command == "/exit":
            return
        if command == "/reset":
            session.turns = []
            print("[a new conversation]", file=sys.stderr)
            continue
        if command == "/system":
            session.system = session.known(line.lstrip()[len("/system"):].lstrip(" ")) or None
            print(f"[system message {'set' if session.system else 'removed'}]", file=sys.stderr)
            continue
        if not line:
            continue
        print("model> ", end="", flush=True)
        try:
            session.ask(line, stream=True)
        except KeyboardInterrupt:
            print("\n[stopped: that answer is not kept]", file=sys.stderr)


def run(node: DictConfig) -> Optional[str]:
    """A chat in the terminal, or (standard input not a terminal) one answer to what standard input holds."""
    cfg = to_spec(ChatConfig, node, "chat")
    device = pick_device(cfg.device)
    loaded = checkpoint.load(cfg.ckpt_path, device=device, dtype=inference_dtype(cfg.dtype, device))
    if not has_template(loaded.tokenizer):
        raise GptlabError(f"{loaded.path} was not fine-tuned on conversations (its tokenizer has no chat markers): "
                          "fine-tune it with data=chat (see experiment=sft_tasks), or sample text with gptlab generate")
    session = Session(loaded.model, loaded.tokenizer, cfg)
    if sys.stdin.isatty():
        print(f"[{loaded.path} (step {loaded.step}) on {device}, context {loaded.model.config.block_size} tokens]",
              file=sys.stderr)
        interactive(session)
        return None
    text = sys.stdin.read().removesuffix("\n")
    if not text:
        raise GptlabError("standard input holds no message: pipe one in (echo 'What is 2 + 3?' | ...), "
                          "or run in a terminal to chat")
    answer = session.ask(text, stream=False)
    print(answer, flush=True)
    return answer


main = cli.entry(
    run, "chat", ("ckpt_path", "system"), ChatConfig,
    "Talk to a model fine-tuned on conversations (data=chat); " + HELP + ".",
    "ckpt_path=RUN_DIR [system=TEXT] [temperature=0] [key=value ...]   (or: echo MESSAGE | {command} ckpt_path=...)",
    notes="Messages are taken as typed. Standard input that is not a terminal is one message; the answer alone is "
          "printed.")

if __name__ == "__main__":
    main()
