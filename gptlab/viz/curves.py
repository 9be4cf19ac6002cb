"""Loss curves of runs: read from their TensorBoard logs, drawn as one PNG (val/loss and train/loss against steps
and against wall time, a line per run labelled by its overrides; an RL run's reward and held-out exact match in a
third panel); a lever study's arms as bars. Needs matplotlib (the `viz` extra)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from gptlab.errors import GptlabError

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


def save_curves(runs: list[Curves], path: Path, title: str = "") -> Path:
    """Two panels, val/loss (thick) and train/loss (thin, faint) against steps and against wall time; RL runs add a
third, their held-out exact match (thick) and mean reward (thin) against steps."""
    rl = any(tag in run.series for run in runs for tag in RL_TAGS)
    fig = figure(18 if rl else 12, 4.8)
    panels = fig.subplots(1, 3 if rl else 2)
    by_step, by_time = panels[:2]
    by_time.sharey(by_step)
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        for tag, width, alpha in (("train/loss", 0.8, 0.35), ("val/loss", 2.0, 1.0)):
            if tag in run.series:
                steps, seconds, values = run.series[tag]
                label = run.label if tag == "val/loss" else None
                by_step.plot(steps, values, color=color, lw=width, alpha=alpha, label=label)
                by_time.plot(seconds, values, color=color, lw=width, alpha=alpha)
        if rl:
            for tag, width, alpha in (("rl/reward", 0.8, 0.35), ("val/exact_match", 2.0, 1.0)):
                if tag in run.series:
                    panels[2].plot(run.series[tag][0], run.series[tag][2], color=color, lw=width, alpha=alpha)
    if rl:
        panels[2].set(xlabel="step", ylabel="thick: held-out exact match; thin: mean reward")
        panels[2].grid(alpha=0.3)
    by_step.set(xlabel="step", ylabel="loss (nats per token; thick: val, thin: train)")
    by_time.set(xlabel="wall time of training (s)")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    if runs:
        by_step.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
