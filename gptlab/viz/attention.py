"""Attention maps of a GPT: what each head of each layer looks at, for one prompt.

    maps = attention_maps(model, ids)            # (n_layer, n_head, T, T); row t = where token t looks
    print(format_summary(head_summary(maps), causal_leak(maps)))
    save_html(maps, token_labels(tok, ids), top_predictions(model, ids, tok), "attention.html", "my prompt")

Row t of a map holds the weights query t gives to keys 0..t; it sums to 1 and everything right of the
diagonal (the future) must be exactly 0. Pictures colour a weight w by sqrt(w) on a viridis ramp, so the
small weights of a diffuse head still show; the masked triangle stays the darkest colour.
"""

from __future__ import annotations

import html
import json
import math
import re
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from gptlab.errors import GptlabError
from gptlab.model.engine import inference

PathLike = Union[str, Path]
Predictions = list[list[tuple[str, float]]]

GAMMA = 0.5  # colour follows weight ** GAMMA
# matplotlib's viridis sampled at 9 evenly spaced points: perceptually uniform, readable in grayscale
VIRIDIS = [(68, 1, 84), (71, 45, 123), (59, 82, 139), (44, 114, 142), (33, 145, 140),
           (40, 174, 128), (94, 201, 98), (173, 220, 48), (253, 231, 37)]  # fmt: skip
GAP_GRAY = 160  # the gap between maps in grid images
CELL_PX = 128  # grid images upscale each map to about this many pixels a side
MOST = 0.5  # a head "mostly" does something when more than half of its mass does it


# -- the numbers


def _batch(model: torch.nn.Module, ids: Sequence[int]) -> torch.Tensor:
    """ids as a (1, T) tensor on the model's device, checked against the model's context."""
    block = model.config.block_size
    if len(ids) == 0:
        raise GptlabError("attention maps need a prompt of at least one token")
    if len(ids) > block:
        raise GptlabError(f"the prompt is {len(ids)} tokens; the model sees at most block_size={block}: shorten it")
    device = next(model.parameters()).device
    return torch.tensor([list(ids)], dtype=torch.long, device=device)


def attention_maps(model: torch.nn.Module, ids: Sequence[int]) -> torch.Tensor:
    """Attention weights of every layer and head for one prompt: (n_layer, n_head, T, T), float32 on CPU."""
    x = _batch(model, ids)
    with inference(model):
        maps = model.attention_weights(x)  # one (1, nh, T, T) per layer
    return torch.stack([m[0] for m in maps]).float().cpu()


def top_predictions(model: torch.nn.Module, ids: Sequence[int], tokenizer, k: int = 5) -> Predictions:
    """For each position, the model's k likeliest next tokens as (label, probability), likeliest first."""
    x = _batch(model, ids)
    with inference(model):
        logits, _ = model(x)
    probs, top = logits[0].float().softmax(-1).topk(min(k, logits.size(-1)), dim=-1)
    uniq = sorted(set(top.flatten().tolist()))
    names = dict(zip(uniq, token_labels(tokenizer, uniq)))  # each distinct id decoded once
    return [[(names[i], p) for i, p in zip(row_ids, row_p)] for row_ids, row_p in zip(top.tolist(), probs.tolist())]


def causal_leak(maps: torch.Tensor) -> float:
    """The largest weight strictly above the diagonal: how much any token looks into its future (must be 0.0)."""
    return float(maps.triu(diagonal=1).abs().max()) if maps.size(-1) > 1 else 0.0


def head_summary(maps: torch.Tensor) -> list[dict]:
    """What each head does, one dict per (layer, head) in order:

    entropy_bits     mean entropy of its rows: 0 = always one token, log2(t+1) = uniform over the past
    top_offset       the offset it attends to most on average (0 = itself, 1 = previous token, ...)
    top_offset_share the average share of a row's weight at that offset
    first_token_mass the average weight on token 0; first_token: whether that is most of it
    label            "previous-token head", "first-token head", "self head" or ""

    Row 0 can only look at itself, so it is left out when there are other rows.
    """
    L, H, T, _ = maps.shape
    start = 1 if T > 1 else 0  # the rows that have a choice
    rows = maps[:, :, start:, :].double()  # (L, H, R, T)
    entropy = -(rows * torch.log2(rows.clamp_min(1e-30))).sum(-1).mean(-1)  # 0 log 0 = 0
    first_mass = rows[..., 0].mean(-1)
    # share[d]: weight at offset d (key t-d for query t), summed over the rows and averaged per row
    share = torch.stack([maps.double().diagonal(offset=-d, dim1=-2, dim2=-1)[..., start if d == 0 else 0 :].sum(-1)
                         for d in range(T)], dim=-1) / (T - start)  # (L, H, T)
    best_share, best = share.max(-1)
    out = []
    for l in range(L):
        for h in range(H):
            s = share[l, h]
            label = ("previous-token head" if T > 1 and s[1] > MOST else "first-token head" if first_mass[l, h] > MOST
                     else "self head" if s[0] > MOST else "")
            out.append(dict(layer=l, head=h, entropy_bits=float(entropy[l, h]), top_offset=int(best[l, h]),
                            top_offset_share=float(best_share[l, h]), first_token_mass=float(first_mass[l, h]),
                            first_token=bool(first_mass[l, h] > MOST), label=label))
    return out


def format_summary(summary: list[dict], leak: float) -> str:
    """One line per head, then the causal-mask check."""
    names = {0: "itself", 1: "previous"}
    lines = []
    for s in summary:
        where = names.get(s["top_offset"], f"{s['top_offset']} back")
        lines.append(f"layer {s['layer']} head {s['head']}: entropy {s['entropy_bits']:4.2f} bits, "
                     f"looks most at offset {s['top_offset']} ({where}, {s['top_offset_share']:.0%}), "
                     f"first token {s['first_token_mass']:.0%}" + (f"  <- {s['label']}" if s["label"] else ""))
    lines.append("causal mask: largest weight above the diagonal = 0 (ok)" if leak == 0.0 else
                 f"CAUSAL MASK BROKEN: largest weight above the diagonal = {leak:.3g} "
                 "(must be exactly 0: tokens are looking at their future)")
    return "\n".join(lines)


# -- pictures without matplotlib (TensorBoard's add_image, quick looks)


def _ramp(n: int = 256) -> np.ndarray:
    """(n, 3) uint8 colour table interpolated between the VIRIDIS anchors."""
    anchors = np.array(VIRIDIS, dtype=np.float64)
    x = np.linspace(0, len(anchors) - 1, n)
    table = np.stack([np.interp(x, np.arange(len(anchors)), anchors[:, c]) for c in range(3)], axis=1)
    return table.round().astype(np.uint8)


_RAMP = _ramp()


def _colorize(m: np.ndarray, scale: int) -> np.ndarray:
    """(T, T) weights -> (T*scale, T*scale, 3) uint8."""
    idx = (np.clip(m, 0.0, 1.0) ** GAMMA * (len(_RAMP) - 1)).round().astype(np.int64)
    return _RAMP[idx].repeat(scale, axis=0).repeat(scale, axis=1)


def _join(images: list[np.ndarray], gap: int, axis: int) -> np.ndarray:
    """Images side by side (axis=1) or stacked (axis=0), with gray bars of `gap` pixels between."""
    shape = list(images[0].shape)
    shape[axis] = gap
    bar = np.full(shape, GAP_GRAY, dtype=np.uint8)
    parts = [p for img in images for p in (bar, img)][1:]
    return np.concatenate(parts, axis=axis)


def layer_images(maps: torch.Tensor, scale: Optional[int] = None, gap: int = 4) -> list[np.ndarray]:
    """One (H, W, 3) uint8 image per layer, its heads side by side (for add_image(dataformats="HWC"))."""
    m = maps.detach().float().cpu().numpy()
    scale = scale or max(1, CELL_PX // m.shape[-1])
    return [_join([_colorize(head, scale) for head in layer], gap, axis=1) for layer in m]


def grid_image(maps: torch.Tensor, scale: Optional[int] = None, gap: int = 4) -> np.ndarray:
    """All maps in one (H, W, 3) uint8 image: a row per layer, heads side by side."""
    return _join(layer_images(maps, scale, gap), gap, axis=0)


# -- PNG with labels (matplotlib)


def shorten(label: str, n: int = 10) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def save_png(maps: torch.Tensor, token_labels: Sequence[str], path: PathLike, title: str = "", dpi: int = 110) -> Path:
    """A grid of layers x heads with the tokens on both axes and a colorbar. Needs matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import PowerNorm
        from matplotlib.figure import Figure
    except ImportError:
        raise GptlabError('the PNG needs matplotlib: pip install -e ".[viz]"') from None
    L, H, T, _ = maps.shape
    _check_labels(token_labels, T)
    cell = min(7.5, max(3.0, 0.115 * T))  # inches a map: ~0.1 inch per label keeps 64 tokens readable
    fig = Figure(figsize=(H * cell + 1.4, L * cell + (0.6 if title else 0.2)), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, set on this figure only: no global backend switch, no window
    axes = fig.subplots(L, H, squeeze=False)
    norm = PowerNorm(gamma=GAMMA, vmin=0.0, vmax=1.0)
    step = math.ceil(T / 64)  # more than 64 tokens: label every step-th one
    ticks = list(range(0, T, step))
    names = [shorten(token_labels[i]) for i in ticks]
    font = min(8.0, max(4.0, 0.75 * cell * 72 / len(ticks)))  # points: three quarters of a label's room
    image = None
    for l in range(L):
        for h in range(H):
            ax = axes[l][h]
            image = ax.imshow(maps[l, h].float().cpu().numpy(), cmap="viridis", norm=norm, interpolation="nearest")
            ax.set_title(f"layer {l} head {h}", fontsize=9)
            ax.set_xticks(ticks, names, rotation=90, fontsize=font)
            ax.set_yticks(ticks, names, fontsize=font)
            ax.tick_params(length=1, pad=1)
            if h == 0:
                ax.set_ylabel("query (looking)", fontsize=8)
            if l == L - 1:
                ax.set_xlabel("key (looked at)", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.6 if L <= 2 else 0.3, aspect=30, label="attention weight")
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # CJK or emoji labels: the default font shows a box, not an error
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        fig.savefig(path, dpi=dpi)
    return path


# -- labels


_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "␣"}


def _readable(text: str) -> str:
    """A token's text, visible: whitespace spelled out, control characters escaped, stray bytes as hex."""
    out = []
    for c in text:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif "\udc80" <= c <= "\udcff":  # a byte that is not a whole UTF-8 character (surrogateescape)
            out.append(f"<0x{ord(c) - 0xDC00:02x}>")
        elif not c.isprintable():
            out.append(c.encode("unicode_escape").decode("ascii"))
        else:
            out.append(c)
    return "".join(out) or "∅"


def token_labels(tokenizer, ids: Sequence[int]) -> list[str]:
    """A readable label per token: "␣the", "\\n", "<0xe6>" for a piece of a multi-byte character."""
    to_bytes = getattr(tokenizer, "decode_bytes", None)  # byte-level tokenizers: exact bytes, no U+FFFD
    labels = []
    for i in ids:
        i = int(i)
        try:
            text = to_bytes([i]).decode("utf-8", errors="surrogateescape") if to_bytes else tokenizer.decode([i])
        except (ValueError, IndexError, KeyError):
            text = None
        labels.append(_readable(text) if text is not None else f"<id {i}>")
    return labels


def _check_labels(labels: Sequence, T: int, what: str = "token labels") -> None:
    if len(labels) != T:
        raise ValueError(f"{len(labels)} {what} for maps of {T} tokens")


# -- one self-contained HTML page


def _script_json(data: object) -> str:
    """JSON safe inside <script>: no "<" (so no "</script>" or "<!--"), no "&", no JS line separators."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for c in "<>&\u2028\u2029":
        text = text.replace(c, f"\\u{ord(c):04x}")
    return text


def save_html(maps: torch.Tensor, token_labels: Sequence[str], top5: Optional[Predictions], path: PathLike,
              title: str = "attention") -> Path:
    """One HTML file, nothing fetched: pick a layer and head (or the mean over heads), see the map, and
    hover or click a token to see where it looks and what the model predicts after it."""
    L, H, T, _ = maps.shape
    _check_labels(token_labels, T)
    if top5 is not None:
        _check_labels(top5, T, "prediction lists")
    data = {"tokens": list(token_labels), "colors": VIRIDIS, "gamma": GAMMA,
            "maps": np.round(maps.detach().double().cpu().numpy(), 4).tolist(),  # 4 decimals keep the file small
            "top5": None if top5 is None else [[[str(n), round(float(p), 4)] for n, p in row] for row in top5]}
    strip = "".join(f'<span class="tok" data-i="{i}">{html.escape(t)}</span>' for i, t in enumerate(token_labels))
    parts = {"TITLE": html.escape(title), "INFO": f"{T} tokens, {L} layers &times; {H} heads", "TOKENS": strip,
             "DATA": _script_json(data)}
    # one pass, so text put in (a prompt holding "__DATA__") is never replaced again
    page = re.sub(r"__(TITLE|INFO|TOKENS|DATA)__", lambda m: parts[m.group(1)], _PAGE)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #222; background: #fafafa; }
  h1 { font-size: 18px; margin: 0; }
  h2 { font-size: 14px; margin: 14px 0 6px; }
  .info, .hint, #hover { color: #666; font-size: 13px; }
  .controls { display: flex; gap: 18px; align-items: center; margin: 10px 0 14px; }
  .main { display: flex; gap: 28px; align-items: flex-start; flex-wrap: wrap; }
  canvas { background: #fff; border: 1px solid #ccc; display: block; }
  #hover { font-family: ui-monospace, monospace; min-height: 1.5em; margin-top: 4px; }
  .side { flex: 1 1 300px; max-width: 560px; }
  #strip { display: flex; flex-wrap: wrap; gap: 3px; }
  .tok { font-family: ui-monospace, monospace; padding: 2px 4px; border: 1px solid #ddd;
         border-radius: 3px; cursor: pointer; white-space: pre; }
  .tok.query { outline: 2px solid #d62728; }
  .tok.future { color: #bbb; background: none; }
  #top td { padding: 1px 8px 1px 0; font-family: ui-monospace, monospace; }
  .bar { height: 10px; background: #21918c; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<div class="info">__INFO__</div>
<div class="controls">
  <label>layer <select id="layer"></select></label>
  <label>head <select id="head"></select></label>
  <span class="hint">hover a token or a row of the map to see where it looks; click to pin it</span>
</div>
<div class="main">
  <div><canvas id="map"></canvas><div id="hover"></div></div>
  <div class="side">
    <h2>tokens <span class="hint">(colour: how much the outlined token looks at each one)</span></h2>
    <div id="strip">__TOKENS__</div>
    <h2 id="qtitle"></h2>
    <table id="top"></table>
  </div>
</div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const T = D.tokens.length, H = D.maps[0].length;
const $ = (id) => document.getElementById(id);
const toks = Array.from(document.querySelectorAll("#strip .tok"));
const canvas = $("map"), ctx = canvas.getContext("2d");
let layer = 0, head = 0, query = T - 1, pinned = false, M = null;  // head -1: mean over heads

// the colours of the PNG: viridis, by weight ** gamma
function level(w) { return Math.pow(Math.min(Math.max(w, 0), 1), D.gamma); }
function color(w) {
  const c = D.colors, x = level(w) * (c.length - 1), i = Math.min(Math.floor(x), c.length - 2), f = x - i;
  return "rgb(" + [0, 1, 2].map((k) => Math.round(c[i][k] + f * (c[i + 1][k] - c[i][k]))).join(",") + ")";
}
function short(s) { return s.length > 8 ? s.slice(0, 7) + "\\u2026" : s; }

function choose() {  // the T x T map shown: one head, or the mean of the layer's heads
  const hs = D.maps[layer];
  M = head >= 0 ? hs[head] : hs[0].map((row, i) => row.map((_, j) => hs.reduce((s, h) => s + h[i][j], 0) / H));
  draw();
  showQuery();
}

const G = { margin: 0, cell: 0 };  // canvas geometry, for hit tests
function draw() {
  const cell = Math.max(2, Math.min(28, Math.floor(540 / T)));
  const step = Math.ceil(10 / cell), font = Math.min(12, Math.max(9, cell - 2)) + "px monospace";
  ctx.font = font;  // room for the longest label shown
  const margin = 10 + Math.ceil(Math.max(...D.tokens.map((t) => ctx.measureText(short(t)).width)));
  const size = margin + T * cell + 2, dpr = window.devicePixelRatio || 1;
  Object.assign(G, { margin, cell });
  canvas.width = size * dpr; canvas.height = size * dpr;
  canvas.style.width = size + "px"; canvas.style.height = size + "px";
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, size, size);
  for (let i = 0; i < T; i++)
    for (let j = 0; j < T; j++) {
      ctx.fillStyle = color(M[i][j]);
      ctx.fillRect(margin + j * cell, margin + i * cell, cell, cell);
    }
  ctx.fillStyle = "#333"; ctx.font = font; ctx.textBaseline = "middle";
  for (let i = 0; i < T; i += step) {
    const mid = margin + i * cell + cell / 2;
    ctx.textAlign = "right"; ctx.fillText(short(D.tokens[i]), margin - 4, mid);  // queries, left
    ctx.save(); ctx.translate(mid, margin - 4); ctx.rotate(-Math.PI / 2);  // keys, top
    ctx.textAlign = "left"; ctx.fillText(short(D.tokens[i]), 0, 0); ctx.restore();
  }
  ctx.strokeStyle = "#d62728"; ctx.lineWidth = 2;  // the selected query's row
  ctx.strokeRect(margin, margin + query * cell, T * cell, cell);
}

function showQuery() {
  const row = M[query];
  toks.forEach((el, j) => {
    el.classList.toggle("query", j === query);
    el.classList.toggle("future", j > query);
    el.style.background = j > query ? "" : color(row[j]);
    el.style.color = j > query ? "" : level(row[j]) < 0.6 ? "#fff" : "#000";
    el.title = j > query ? "future: masked" : "weight " + row[j].toFixed(3);
  });
  $("qtitle").textContent = "after \\u201c" + D.tokens[query] + "\\u201d (position " + query + ") the model predicts";
  const table = $("top");
  table.textContent = "";
  for (const [name, p] of (D.top5 ? D.top5[query] : [])) {
    const tr = table.insertRow(), bar = document.createElement("div");
    tr.insertCell().textContent = name;
    tr.insertCell().textContent = (100 * p).toFixed(1) + "%";
    bar.className = "bar"; bar.style.width = Math.max(1, Math.round(200 * p)) + "px";
    tr.insertCell().appendChild(bar);
  }
  if (!D.top5) table.insertRow().insertCell().textContent = "(no predictions in this file)";
}

function setQuery(i, pin) {
  if (pin !== undefined) pinned = pin;
  query = i; draw(); showQuery();
}

toks.forEach((el, i) => {
  el.addEventListener("mouseenter", () => { if (!pinned) setQuery(i); });
  el.addEventListener("click", () => setQuery(i, !(pinned && query === i)));
});
function cellAt(ev) {
  const r = canvas.getBoundingClientRect();
  const i = Math.floor((ev.clientY - r.top - G.margin) / G.cell);
  const j = Math.floor((ev.clientX - r.left - G.margin) / G.cell);
  return i >= 0 && i < T && j >= 0 && j < T ? [i, j] : null;
}
canvas.addEventListener("mousemove", (ev) => {
  const c = cellAt(ev);
  $("hover").textContent = c ? "\\u201c" + D.tokens[c[0]] + "\\u201d (" + c[0] + ") \\u2192 \\u201c" + D.tokens[c[1]] +
    "\\u201d (" + c[1] + "): " + M[c[0]][c[1]].toFixed(3) : "";
  if (c && !pinned && c[0] !== query) setQuery(c[0]);
});
canvas.addEventListener("click", (ev) => { const c = cellAt(ev); if (c) setQuery(c[0], !(pinned && query === c[0])); });

for (let l = 0; l < D.maps.length; l++) $("layer").add(new Option("layer " + l, l));
for (let h = 0; h < H; h++) $("head").add(new Option("head " + h, h));
$("head").add(new Option("mean over heads", -1));
// a view can be linked to: page.html#layer=1&head=-1&query=5 (head -1: the mean over heads)
const P = new URLSearchParams(location.hash.slice(1));
function pick(key, lo, hi, fallback) {
  const v = Number(P.get(key) ?? fallback);
  return Number.isInteger(v) ? Math.min(hi, Math.max(lo, v)) : fallback;
}
layer = pick("layer", 0, D.maps.length - 1, 0);
head = pick("head", -1, H - 1, 0);
query = pick("query", 0, T - 1, T - 1);
pinned = P.has("query"); $("layer").value = layer; $("head").value = head;
$("layer").addEventListener("change", (ev) => { layer = +ev.target.value; choose(); });
$("head").addEventListener("change", (ev) => { head = +ev.target.value; choose(); });
choose();
document.body.dataset.rendered = "yes";  // a marker for tests: the script ran to the end
</script>
</body>
</html>
"""
