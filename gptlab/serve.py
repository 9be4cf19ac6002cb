"""Serve a model: `python -m gptlab.serve ckpt_path=RUN_DIR`, then open http://127.0.0.1:8000 (the chat page) or
point an OpenAI client at http://127.0.0.1:8000/v1. Needs the serve extra: pip install -e ".[serve]"."""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import sys
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from gptlab import checkpoint, cli
from gptlab.config import ServeConfig, register_configs, to_spec
from gptlab.devices import inference_dtype, pick_device
from gptlab.errors import GptlabError
from gptlab.rundir import RunDir

register_configs()
KEY_ENV = "GPTLAB_API_KEY"
EVERYWHERE = ("0.0.0.0", "::", "")
DATE, TIME = re.compile(r"\d{4}-\d{2}-\d{2}"), re.compile(r"\d{2}-\d{2}-\d{2}")  # conf/hydra/default.yaml's run dirs


def dated_part(folder: Path) -> Optional[str]:
    """A dated run folder's path from its date on: outputs/DATE/TIME -> 'DATE/TIME', a multirun's
    outputs/multirun/DATE/TIME/N -> 'DATE/TIME/N'; None for a folder the user named."""
    a, b, c = ("", "", *folder.parts)[-3:]
    if DATE.fullmatch(b) and TIME.fullmatch(c):
        return f"{b}/{c}"
    if DATE.fullmatch(a) and TIME.fullmatch(b) and c.isdigit():
        return f"{a}/{b}/{c}"
    return None


def experiment(run: RunDir) -> Optional[str]:
    """The run's `experiment=` choice, from Hydra's record of it; None without one."""
    if not run.hydra_record.is_file():
        return None
    choice = OmegaConf.select(OmegaConf.load(run.hydra_record), "hydra.runtime.choices.experiment")
    return str(choice) if choice else None


def model_name(ckpt_path: str) -> str:
    """The run's name: a folder the user named is its name (outputs/sft, or outputs/sft/checkpoints/best.ckpt ->
    sft); a dated folder is named by its experiment= choice (with a multirun's job number: 'sft_tasks/3'), else by
    its path from the date on ('2026-12-07/00-37-20', '2026-12-07/10-00-00/3': the time alone says too little).
    Not a run: the checkpoint file's stem, or the folder's or GPT-2's name."""
    p, run = Path(ckpt_path).expanduser(), RunDir.of(ckpt_path)
    if not run.is_run():
        return p.stem if p.suffix == ".ckpt" else p.resolve().name if p.exists() else p.name
    path = run.path.resolve()
    dated = dated_part(path)
    if dated is None:
        return path.name
    chosen = experiment(run)
    if chosen is None:
        return dated
    multirun_job = dated.count("/") == 2  # its sibling jobs share the experiment: the number tells them apart
    return f"{chosen}/{path.name}" if multirun_job else chosen


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, made here so a port in use is one clear line and port=0 learns its number."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise GptlabError(f"port {port} is in use on {host}: pick another (port=8001, or port=0 for any "
                              "free one)") from None
        raise GptlabError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def run(node: DictConfig) -> None:
    cfg = to_spec(ServeConfig, node, "serve")
    try:  # the optional extra
        import uvicorn

        from gptlab.serving.api import Served
        from gptlab.serving.app import Server
        from gptlab.serving.worker import Worker
    except ImportError as e:
        raise GptlabError(f"gptlab serve needs the serve extra ({e.name} is missing): "
                          "pip install -e \".[serve]\"") from None
    device = pick_device(cfg.device)
    loaded = checkpoint.load(cfg.ckpt_path, device=device, dtype=inference_dtype(cfg.dtype, device))
    block = loaded.model.config.block_size
    if cfg.max_tokens is not None and cfg.max_tokens >= block:
        raise GptlabError(f"max_tokens={cfg.max_tokens} leaves no room for a prompt in the model's context of "
                          f"{block} tokens: use at most {block - 1}")
    served = Served(cfg.name or model_name(cfg.ckpt_path), loaded.tokenizer, block,
                    max_tokens=cfg.max_tokens or block - 1, max_n=cfg.batch_size)
    api_key = cfg.api_key or os.environ.get(KEY_ENV) or None
    sock = bind(cfg.host, cfg.port)
    port = sock.getsockname()[1]

    log = logging.getLogger("gptlab.serve")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

    worker = Worker(loaded.model, loaded.tokenizer, cfg.batch_size, cfg.max_queue, cfg.compile)
    app = Server(worker, served, api_key, cfg.max_request_bytes).asgi()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host or "0.0.0.0"
    url = f"http://{'127.0.0.1' if cfg.host in EVERYWHERE else shown}:{port}"
    kind = "chat model" if served.chat else "text model: /v1/completions and /v1/responses with text input"
    print(f"[{loaded.path} (step {loaded.step}) on {device}: {served.name!r}, a {kind}, context {block} tokens, "
          f"{cfg.batch_size} requests decoded together]", file=sys.stderr)
    if cfg.host in EVERYWHERE:
        print(f"[listening on every interface: anyone who can reach this machine can use the model"
              f"{'' if api_key else ' (no api_key set)'}]", file=sys.stderr)
    print(f"serving {served.name} at {url}  (chat page: {url}/ , OpenAI API: {url}/v1"
          f"{', API key required' if api_key else ''}; Ctrl-C stops)", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        worker.close()


main = cli.entry(
    run, "serve", ("ckpt_path", "api_key", "name", "host"), ServeConfig,
    "Serve a model over HTTP: OpenAI's chat/completions and completions API, and a chat page at /.",
    "ckpt_path=RUN_DIR [port=8000] [host=127.0.0.1] [api_key=KEY] [dtype=auto] [key=value ...]",
    notes="Needs pip install -e \".[serve]\". Chat requests need a model fine-tuned on conversations (data=chat); "
          "any model takes /v1/completions. The API key may also come from the environment's GPTLAB_API_KEY.")

if __name__ == "__main__":
    main()
