"""Attention maps and their pictures (gptlab.viz): the numbers, the summary, the images, the PNG and the HTML page."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from gptlab.errors import GptlabError
from gptlab.model.gpt import GPT, GPTConfig
from gptlab.tokenizers import ByteLevelBPE, CharTokenizer
from gptlab.viz import (
    attention_maps,
    causal_leak,
    format_summary,
    grid_image,
    head_summary,
    layer_images,
    save_html,
    save_png,
    token_labels,
    top_predictions,
)
from gptlab.viz.attention import VIRIDIS

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
# everything that could break the page: a closing script tag, quotes, commas, an ampersand, CJK, emoji
NASTY = '</script><b>"hi", \'yo\' & 中文 😀\n'  # 30 characters: within the tiny model's context
CHROMIUM = Path("/usr/bin/chromium")


def tiny_gpt(norm: str = "pre", n_layer: int = 2, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=65, block_size=32, n_layer=n_layer, n_head=2, n_embd=16, norm=norm))


@pytest.fixture(scope="module")
def tok() -> CharTokenizer:
    t = CharTokenizer.train(TEXT + NASTY)
    assert t.vocab_size <= 65
    return t


def causal(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def prev_token_map(T: int) -> torch.Tensor:
    m = torch.zeros(T, T)
    m[0, 0] = 1.0  # the first token can only look at itself
    m[torch.arange(1, T), torch.arange(T - 1)] = 1.0
    return m


def first_token_map(T: int) -> torch.Tensor:
    m = torch.zeros(T, T)
    m[:, 0] = 1.0
    return m


# -- the numbers


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_maps_are_causal_distributions(tok, norm):
    model = tiny_gpt(norm)
    model.train()  # attention_maps switches to eval for the call, and back
    ids = tok.encode(TEXT)[:20]
    maps = attention_maps(model, ids)
    assert model.training
    assert maps.shape == (2, 2, 20, 20)
    assert maps.dtype == torch.float32 and maps.device.type == "cpu"
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 20), atol=1e-5, rtol=0)
    assert torch.equal(maps.triu(diagonal=1), torch.zeros_like(maps))  # exactly 0, not just small
    assert causal_leak(maps) == 0.0
    assert not maps.requires_grad


def test_prompt_longer_than_the_context_is_a_user_error(tok):
    with pytest.raises(GptlabError, match="block_size=32"):
        attention_maps(tiny_gpt(), tok.encode(TEXT)[:33])


def test_head_summary_names_hand_made_heads():
    T = 8
    uniform = torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]
    maps = torch.stack([torch.stack([prev_token_map(T), first_token_map(T)]), torch.stack([torch.eye(T), uniform])])
    summary = head_summary(maps)
    assert [(s["layer"], s["head"]) for s in summary] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [s["label"] for s in summary] == ["previous-token head", "first-token head", "self head", ""]
    assert summary[0]["top_offset"] == 1 and summary[0]["top_offset_share"] == pytest.approx(1.0)
    assert summary[1]["first_token"] and not summary[0]["first_token"]
    assert summary[0]["entropy_bits"] == pytest.approx(0.0)  # one key per row
    assert summary[3]["entropy_bits"] == pytest.approx(np.mean(np.log2(np.arange(2, T + 1))), abs=1e-6)

    text = format_summary(summary, causal_leak(maps))
    assert len(text.splitlines()) == 5
    assert "layer 0 head 0" in text and "previous-token head" in text
    assert text.splitlines()[-1] == "causal mask: largest weight above the diagonal = 0 (ok)"


def test_a_leak_above_the_diagonal_is_reported_loudly():
    leaky = first_token_map(4)[None, None].clone()
    leaky[0, 0, 1, 3] = 0.25
    assert causal_leak(leaky) == 0.25
    assert "BROKEN" in format_summary(head_summary(leaky), causal_leak(leaky)).splitlines()[-1]


def test_top_predictions(tok):
    ids = tok.encode(TEXT)[:10]
    top = top_predictions(tiny_gpt(), ids, tok, k=5)
    assert len(top) == 10 and all(len(row) == 5 for row in top)
    for row in top:
        probs = [p for _, p in row]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(isinstance(name, str) and name for name, _ in row)


# -- labels


def test_token_labels_char(tok):
    assert token_labels(tok, tok.encode("a b\n")) == ["a", "␣", "b", "\\n"]
    assert token_labels(tok, tok.encode("中😀")) == ["中", "😀"]
    odd = CharTokenizer(["\x00", "\t", "\u200b"])
    assert token_labels(odd, [0, 1, 2]) == ["\\x00", "\\t", "\\u200b"]


def test_token_labels_bytes_of_a_character_show_as_hex():
    bpe = ByteLevelBPE({i: bytes([i]) for i in range(256)}, merges=[])  # bytes only: "中" is three tokens
    ids = bpe.encode(" 中")
    assert token_labels(bpe, ids) == ["␣", "<0xe4>", "<0xb8>", "<0xad>"]


# -- pictures


def test_grid_and_layer_images():
    T = 8
    maps = torch.stack([torch.stack([prev_token_map(T), first_token_map(T)])] * 3)  # 3 layers, 2 heads
    grid = grid_image(maps)
    cell = 128  # each map is upscaled to about 128 pixels
    assert grid.dtype == np.uint8 and grid.shape == (3 * cell + 2 * 4, 2 * cell + 4, 3)
    assert tuple(grid[cell + 1, 5]) == (160, 160, 160)  # the gray gap between layers
    assert tuple(grid[2, cell - 3]) == VIRIDIS[0]  # the masked upper triangle: the darkest colour
    assert tuple(grid[2, 2]) == VIRIDIS[-1]  # a weight of 1: the brightest
    layers = layer_images(maps)
    assert len(layers) == 3 and all(img.shape == (cell, 2 * cell + 4, 3) and img.dtype == np.uint8 for img in layers)
    assert grid_image(maps, scale=2, gap=1).shape == (3 * 16 + 2, 2 * 16 + 1, 3)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # IHDR: width, height


def test_save_png_grows_with_layers(tok, tmp_path):
    pytest.importorskip("matplotlib")
    ids = tok.encode(NASTY)
    labels = token_labels(tok, ids)
    sizes = {}
    for n_layer in (1, 3):
        maps = attention_maps(tiny_gpt(n_layer=n_layer), ids)
        path = save_png(maps, labels, tmp_path / f"{n_layer}.png", title="t", dpi=50)
        sizes[n_layer] = png_size(path)
    assert sizes[3][1] > sizes[1][1] * 2 and sizes[3][0] == sizes[1][0]


def test_save_png_without_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    for name in ["matplotlib", *(m for m in sys.modules if m.startswith("matplotlib."))]:
        monkeypatch.setitem(sys.modules, name, None)  # any import of it, or of a part already loaded, now fails
    with pytest.raises(GptlabError, match=re.escape('pip install -e ".[viz]"')):
        save_png(first_token_map(3)[None, None], ["a", "b", "c"], tmp_path / "x.png")


# -- the HTML page


class PageParser(HTMLParser):
    """Collects what the tests check: script tags, the JSON data, the token strip, and any external reference."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict] = []
        self.data = ""
        self.tokens: list[str] = []
        self.links: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "script":
            self.scripts.append(a)
            self._in = "data" if a.get("id") == "data" else "script"
        elif tag == "span" and a.get("class") == "tok":
            self._in = "tok"
            self.tokens.append("")

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "data":
            self.data += data
        elif self._in == "tok":
            self.tokens[-1] += data


@pytest.fixture(scope="module")
def page(tok, tmp_path_factory):
    ids = tok.encode(NASTY)
    model = tiny_gpt()
    labels = token_labels(tok, ids)
    path = tmp_path_factory.mktemp("html") / "attention.html"
    save_html(attention_maps(model, ids), labels, top_predictions(model, ids, tok), path, title=NASTY)
    return path, labels


def test_html_is_self_contained_and_survives_a_nasty_prompt(page):
    path, labels = page
    text = path.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"<script[^>]*\bsrc", text, re.I)
    assert text.count("</script>") == 2  # the data block and the code: the prompt's </script> stayed inert
    parser = PageParser()
    parser.feed(text)
    parser.close()
    assert len(parser.scripts) == 2 and parser.links == []
    assert parser.tokens == labels  # the strip holds every label, HTML-escaped in the file
    data = json.loads(parser.data)
    assert data["tokens"] == labels
    assert np.array(data["maps"]).shape == (2, 2, len(labels), len(labels))
    assert len(data["top5"]) == len(labels) and len(data["top5"][0]) == 5
    assert "<title>&lt;/script&gt;&lt;b&gt;&quot;hi&quot;" in text  # the title is escaped too


def test_html_needs_a_label_per_token(tmp_path):
    with pytest.raises(ValueError, match="2 token labels for maps of 3 tokens"):
        save_html(first_token_map(3)[None, None], ["a", "b"], None, tmp_path / "x.html")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium")
def test_html_renders_in_a_browser(page, tmp_path):
    path, labels = page
    url = path.resolve().as_uri() + "#layer=1&head=-1&query=3"  # the mean over layer 1's heads, token 3 pinned
    flags = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900",
    ]  # fmt: skip
    shot = tmp_path / "shot.png"
    run = subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), run.stderr[-2000:]
    assert shot.stat().st_size > 8_000  # a blank 1200x900 page compresses to a few KB at most

    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert 'data-rendered="yes"' in dom  # the script ran to its end
    assert "mean over heads" in dom  # the head menu it builds
    assert re.search(r'class="tok query"[^>]*data-i="3"|data-i="3"[^>]*class="tok query"', dom)
    assert re.search(r'class="tok future"[^>]*data-i="4"|data-i="4"[^>]*class="tok future"', dom)
    assert dom.count("<tr>") == 5  # the top-5 predictions after token 3
