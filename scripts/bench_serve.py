"""Many clients, one model: `gptlab serve` under concurrent streaming clients, against one client alone.

Starts a server on 127.0.0.1 (a free port) for a chat model of the given shape with random weights (speed does
not depend on them; random weights seldom write `<|end|>`, so every answer runs to max_tokens), then:
1. one client alone: `--single` streamed requests one after the other (the reference, same server);
2. `--clients` concurrent streaming clients sending `--requests` requests in all (each a different question).
It prints tokens/s of both, time to first token (p50, p99), the server's memory (RSS) after the first 50 and the
last 50 requests, and the errors (a status other than 200, or a stream that does not end with [DONE]).

    python scripts/bench_serve.py [--shape small|gpt2] [--clients 16] [--requests 200] [--max-tokens 64]
                                  [--device cpu] [--dtype auto] [--batch-size 16]

Last two lines: `errors: N` and `batched/single tokens/s: R`. The table goes into results/<machine kind>.json, key
the shape and dtype (scripts/results.py; --no-record: not).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

from gptlab import checkpoint
from gptlab.model import GPT, GPTConfig
from gptlab.tokenizers import train_tokenizer
from gptlab.tokenizers.chat import chat_tokenizer
from results import add_flag, record

SHAPES = {"tiny": dict(block_size=64, n_layer=2, n_head=2, n_embd=64),  # for a quick check of the script
          "small": dict(block_size=128, n_layer=6, n_head=8, n_embd=256),  # model=small
          "gpt2": dict(block_size=1024, n_layer=12, n_head=12, n_embd=768)}  # GPT-2 124M's shape
QUESTIONS = ["What is 2 + 3?", "Name three colours.", "Spell the word cat backwards.", "Count from one to five.",
             "Who wrote Romeo and Juliet?", "What is the opposite of cold?", "Say hello.", "Is seven odd?"]


def chat_model(shape: str, folder: Path) -> Path:
    text = "".join(QUESTIONS) + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'-\n"
    tokenizer = chat_tokenizer(train_tokenizer("char", text))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, dropout=0.0, **SHAPES[shape]))
    return checkpoint.save(folder / f"{shape}.ckpt", model, tokenizer)


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens = 0
        self.ttft: list[float] = []
        self.errors: list[str] = []
        self.done = 0


def ask(client: httpx.Client, url: str, i: int, max_tokens: int, stats: Stats) -> None:
    """One streamed chat request; its time to first token and its tokens go into stats."""
    body = {"model": "bench", "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "max_tokens": max_tokens, "temperature": 0.8, "seed": i, "stream": True,
            "stream_options": {"include_usage": True}}
    start, first, tokens, ended = time.perf_counter(), None, 0, False
    try:
        with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                raise RuntimeError(f"status {r.status_code}: {r.text[:100]}")
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    ended = True
                    break
                event = json.loads(data)
                if "error" in event:
                    raise RuntimeError(event["error"]["message"])
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                if first is None and any(c["delta"].get("content") for c in event["choices"]):
                    first = time.perf_counter() - start
        if not ended:
            raise RuntimeError("the stream ended without [DONE]")
    except Exception as e:  # counted, not fatal: the benchmark reports them
        with stats.lock:
            stats.errors.append(f"request {i}: {e}")
        return
    with stats.lock:
        stats.tokens += tokens
        stats.ttft.append(first if first is not None else time.perf_counter() - start)
        stats.done += 1


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_clients(url: str, clients: int, requests: int, max_tokens: int, pid: int) -> tuple[Stats, float, list]:
    """`clients` threads take requests 0..requests-1 in turn; returns the stats, the wall time and the server's
    RSS after the first 50 and after all requests."""
    stats, next_i, lock, rss = Stats(), [0], threading.Lock(), []

    def worker() -> None:
        with httpx.Client(timeout=120) as client:
            while True:
                with lock:
                    i = next_i[0]
                    next_i[0] += 1
                if i >= requests:
                    return
                ask(client, url, i, max_tokens, stats)
                with lock:
                    if stats.done + len(stats.errors) == min(50, requests) and not rss:
                        rss.append(rss_mib(pid))

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rss.append(rss_mib(pid))
    return stats, time.perf_counter() - start, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="small")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--single", type=int, default=8, help="requests of the lone client (the reference)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="the server's rows (requests decoded together)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="the server's dtype= (default: float32; auto: bf16 if fast)")
    add_flag(parser)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = chat_model(args.shape, Path(tmp))
        command = [sys.executable, "-m", "gptlab.serve", f"ckpt_path={ckpt}", "port=0", "name=bench",
                   f"device={args.device}", f"batch_size={args.batch_size}", f"max_queue={args.requests}"]
        command += [f"dtype={args.dtype}"] if args.dtype else []
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            line = server.stdout.readline()
            if not line.startswith("serving"):
                sys.exit(f"error: the server did not start: {line.strip() or 'no output'}")
            url = line.split(" at ")[1].split()[0]
            print(f"server: {args.shape} chat model, {args.batch_size} rows, device {args.device}, "
                  f"dtype {args.dtype or 'float32'}; {args.max_tokens} new tokens per request", flush=True)
            run_clients(url, 1, 2, args.max_tokens, server.pid)  # warm-up
            single, single_s, _ = run_clients(url, 1, args.single, args.max_tokens, server.pid)
            if not single.ttft:
                print("\n".join(f"  {e}" for e in single.errors[:5]))
                print(f"errors: {len(single.errors)}\nbatched/single tokens/s: n/a (every lone request failed)")
                sys.exit(1)
            single_rate = single.tokens / single_s
            print(f"one client alone: {args.single} requests, {single.tokens} tokens in {single_s:.1f} s = "
                  f"{single_rate:,.0f} tokens/s; time to first token p50 "
                  f"{statistics.median(single.ttft) * 1e3:.0f} ms", flush=True)
            many, many_s, rss = run_clients(url, args.clients, args.requests, args.max_tokens, server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    rate = many.tokens / many_s
    ttft = sorted(many.ttft) or [float("nan")]  # none: every request failed (the errors say why)
    p99 = ttft[min(len(ttft) - 1, round(0.99 * (len(ttft) - 1)))]
    print(f"{args.clients} clients: {args.requests} requests, {many.tokens} tokens in {many_s:.1f} s = "
          f"{rate:,.0f} tokens/s; time to first token p50 {statistics.median(ttft) * 1e3:.0f} ms, "
          f"p99 {p99 * 1e3:.0f} ms")
    print(f"server memory (RSS): {rss[0]:.0f} MiB after the first 50 requests, {rss[-1]:.0f} MiB after the last "
          f"({(rss[-1] / rss[0] - 1) * 100:+.1f}%)")
    for e in many.errors[:5]:
        print(f"  {e}")
    errors = len(many.errors) + len(single.errors)
    last_lines = f"errors: {errors}\nbatched/single tokens/s: {rate / single_rate:.2f}"
    print(last_lines)
    if not args.no_record:
        dtype = args.dtype or "float32"
        columns = ["shape, dtype", "one client alone", f"{args.clients} clients", "time to first token p50 / p99",
                   f"server memory, after {min(50, args.requests)} requests → after {args.requests}", "errors",
                   "batched/single"]
        row = [f"{args.shape}, {dtype}", f"{single_rate:,.0f} tokens/s", f"{rate:,.0f} tokens/s",
               f"{statistics.median(ttft) * 1e3:.0f} / {p99 * 1e3:.0f} ms",
               f"{rss[0]:.0f} → {rss[-1]:.0f} MiB ({(rss[-1] / rss[0] - 1) * 100:+.1f}%)", str(errors),
               f"**{rate / single_rate:.2f}**"]
        record("serve", {"columns": columns, "rows": [row]}, key=f"{args.shape}-{dtype}", last_line=last_lines,
               notes=f"{args.device}, {args.batch_size} rows, {args.max_tokens} new tokens a request")


if __name__ == "__main__":
    main()
