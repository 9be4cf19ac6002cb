"""Loss curves of runs: read from their TensorBoard logs, drawn as one PNG (val/loss and train/loss against steps
and against wall time, a line per run labelled by its overrides; an RL run's reward and held-out exact match in a
third panel); a lever study's arms as bars. Needs matplotlib (the `viz` extra)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from gptlab.errors import GptlabError

if TYPE_CHECKING:  # matplotlib is imported only when a picture is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

TAGS = ("val/loss", "train/loss")
RL_TAGS = ("val/exact_match", "rl/reward")  # objective=grpo's: what it is rewarded, and what it gets right


@dataclass
class Curves:
    """One run's logged scalars: tag -> (steps, seconds since its first event, values)."""

    label: str
    series: dict[str, tuple[list[int], list[float], list[float]]]


def read_curves(log_dir: Path, label: str) -> Curves:
    """The TAGS of one TensorBoard log folder (every event file in it, in order)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    chatter = logging.getLogger("tensorboard")  # "No path found after ..." for every log read, at INFO
    level = chatter.level
    chatter.setLevel(logging.WARNING)
    try:
        events.Reload()
    finally:
        chatter.setLevel(level)
    points = {tag: events.Scalars(tag) for tag in TAGS + RL_TAGS if tag in events.Tags()["scalars"]}
    start = min((p[0].wall_time for p in points.values() if p), default=0.0)  # the run's first logged step
    series = {tag: ([p.step for p in ps], [p.wall_time - start for p in ps], [p.value for p in ps])
              for tag, ps in points.items()}
    return Curves(label, series)


def figure(width: float, height: float):
    """A matplotlib Figure drawn with Agg alone: no global backend, no window."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise GptlabError('the plot needs matplotlib: pip install -e ".[viz]"') from None
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_ablation_bars(names: list[str], means: list[float], half_spreads: list[float], verdicts: list[str],
                       path: Path, title: str = "") -> Path:
    """One bar per arm of a lever study, its mean val/loss with the seeds' spread as an error bar, coloured by
    verdict; the first arm (the baseline) as a dashed line."""
    fig = figure(9, 0.42 * len(names) + 1.4)
    ax = fig.subplots()
    colors = {"pays": "C2", "hurts": "C3", "noise": "C7", "": "C0"}
    rows = list(range(len(names)))[::-1]  # the first arm on top
    ax.barh(rows, means, xerr=half_spreads, color=[colors[v] for v in verdicts], capsize=3)
    ax.set_yticks(rows, [f"{n}  ({v})" if v else n for n, v in zip(names, verdicts)], fontsize="small")
    low, high = min(m - s for m, s in zip(means, half_spreads)), max(m + s for m, s in zip(means, half_spreads))
    ax.set_xlim(low - 0.25 * (high - low) - 1e-3, high + 0.1 * (high - low) + 1e-3)
    ax.axvline(means[0], color="k", ls="--", lw=1)
    ax.set(xlabel="val/loss, mean over seeds (error bar: half the spread; green pays, red hurts, grey noise)")
    ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


MARKERS_BELOW = 20  # a line with fewer points gets a marker on each: one point alone has no line to show
LEGEND_ROWS = 20  # runs per legend column; a big sweep's legend gets more columns beside the panels
MISSING = {  # what a panel says when no run logged a tag, and why it may not have yet
    "val/loss": "no val/loss yet: logged at each validation, every trainer.val_check_interval steps",
    "train/loss": "no train/loss yet: logged every trainer.log_every_n_steps steps",
}
NO_LOSS = "no val/loss or train/loss logged"


def has_points(runs: list[Curves], tags: tuple[str, ...]) -> bool:
    """Does any run hold at least one point of any of `tags`?"""
    return any(run.series.get(tag, ([],))[0] for run in runs for tag in tags)


def draw_line(ax: Axes, xs: list, ys: list[float], color: str, width: float, alpha: float,
              label: Optional[str] = None) -> Line2D:
    """One line, with a marker on each point where it has few: a short run's one or two points stay visible."""
    marker = "o" if len(xs) < MARKERS_BELOW else None
    (line,) = ax.plot(xs, ys, color=color, lw=width, alpha=alpha, label=label, marker=marker,
                      markersize=2.5 * width + 2)
    return line


def note_missing(ax: Axes, runs: list[Curves], tags: tuple[str, ...], rl: bool) -> None:
    """Say in the panel which of its tags no run logged, rather than leave blank axes unexplained."""
    missing = [t for t in tags if not has_points(runs, (t,))]
    if rl and "train/loss" in missing and len(missing) < len(tags):
        missing.remove("train/loss")  # an RL run logs rl/loss, not train/loss: nothing is missing
    if not missing:
        return
    text = "\n".join(MISSING.get(t, f"no {t} logged") for t in missing)
    if len(missing) < len(tags):  # above the panel: a note over the curves would hide some of them
        ax.set_title(text, fontsize="small", color="0.35")
        return
    text = NO_LOSS if tags == TAGS else text
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize="small", color="0.35")


def add_legend(fig: Figure, handles: list[Line2D], base_width: float) -> None:
    """The runs' legend beside the panels (never over a curve or a label), the figure widened to hold it."""
    if not handles:
        return
    ncols = -(-len(handles) // LEGEND_ROWS)
    legend = fig.legend(handles=handles, loc="outside right upper", fontsize="small", ncols=ncols)
    fig.draw_without_rendering()  # lays the legend out, so its width is known
    fig.set_figwidth(base_width + legend.get_window_extent().width / fig.dpi)


def draw_curves(runs: list[Curves], title: str = "") -> Figure:
    """The Figure `save_curves` writes (returned unsaved, so its lines and legend can be examined): two panels,
    val/loss (thick) and train/loss (thin, faint) against steps and against wall time; RL runs add a third, their
    held-out exact match (thick) and mean reward (thin) against steps."""
    rl = has_points(runs, RL_TAGS)
    width = 18 if rl else 12
    fig = figure(width, 4.8)
    panels = fig.subplots(1, 3 if rl else 2)
    by_step, by_time = panels[:2]
    by_time.sharey(by_step)
    handles = []
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        drawn = []
        for tag, lw, alpha in (("train/loss", 0.8, 0.35), ("val/loss", 2.0, 1.0)):  # val drawn over train
            if run.series.get(tag, ([],))[0]:
                steps, seconds, values = run.series[tag]
                drawn.append(draw_line(by_step, steps, values, color, lw, alpha, label=run.label))
                draw_line(by_time, seconds, values, color, lw, alpha)
        if rl:
            for tag, lw, alpha in (("rl/reward", 0.8, 0.35), ("val/exact_match", 2.0, 1.0)):
                if run.series.get(tag, ([],))[0]:
                    steps, _, values = run.series[tag]
                    drawn.append(draw_line(panels[2], steps, values, color, lw, alpha, label=run.label))
        if drawn:
            handles.append(max(drawn, key=lambda line: line.get_linewidth()))  # one entry a run: its thickest line
    for ax in (by_step, by_time):
        note_missing(ax, runs, TAGS, rl)
    by_step.set(xlabel="step", ylabel="loss (nats per token; thick: val, thin: train)")
    by_time.set(xlabel="wall time of training (s)")
    if rl:
        note_missing(panels[2], runs, RL_TAGS, rl)
        panels[2].set(xlabel="step", ylabel="thick: held-out exact match; thin: mean reward")
    for ax in panels:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    add_legend(fig, handles, width)
    return fig


def save_curves(runs: list[Curves], path: Path, title: str = "") -> Path:
    """`draw_curves` written to `path` as a PNG."""
    fig = draw_curves(runs, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
