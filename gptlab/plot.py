"""Loss curves of a run or of every run below a folder (a sweep): `gptlab plot outputs/multirun/...` (or dir=).

Writes one PNG, val/loss and train/loss against steps and against wall time, a line per run labelled by its
overrides (its TensorBoard name), to `<dir>/plot.png` or out=FILE; nothing logged yet is an error, and no PNG.
Needs matplotlib (the `viz` extra)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from gptlab import cli
from gptlab.config import to_spec, unescape
from gptlab.errors import GptlabError
from gptlab.rundir import RunDir
from gptlab.viz.curves import RL_TAGS, TAGS, Curves, has_points, read_curves, save_curves


@dataclass
class PlotConfig:
    """python -m gptlab.plot: the loss curves of the runs in a folder."""

    dir: str = MISSING  # a run dir, or any folder above runs (a sweep, outputs/)
    out: Optional[str] = None  # the PNG to write; None: <dir>/plot.png


ConfigStore.instance().store(name="plot_schema", node=PlotConfig)


def overrides(run: RunDir) -> list[str]:
    """The command-line overrides the run was started with (Hydra's record), or [] if it has none."""
    record = run.record / "overrides.yaml"
    return [unescape(str(o)) for o in OmegaConf.load(record)] if record.is_file() else []


def runs_below(folder: Path) -> list[Curves]:
    """Every TensorBoard log of the runs at or below `folder`, labelled by what sets its run apart: the overrides
    that not all the runs share (a sweep's: its swept values), else the log's name."""
    logs = sorted(p for p in folder.glob(f"**/{RunDir(folder).logs.name}/*") if p.is_dir())
    given = [overrides(RunDir(log.parent.parent)) for log in logs]
    shared = set.intersection(*map(set, given)) if len(given) > 1 else set()
    labels = [" ".join(o for o in g if o not in shared) or log.name or log.parent.parent.name
              for g, log in zip(given, logs)]
    return [read_curves(log, label) for log, label in zip(logs, labels)]


def nothing_to_draw(folder: Path, runs: list[Curves]) -> Optional[str]:
    """Why `runs` give no curve at all (the error's one line), or None when there is something to draw."""
    if not runs:
        return f"no run with TensorBoard logs at or below {folder}: give a run dir or a sweep folder"
    if has_points(runs, TAGS + RL_TAGS):
        return None
    which = "its run" if len(runs) == 1 else f"its {len(runs)} runs"
    return (f"no loss values under {folder}: {which} logged nothing yet (a run logs train/loss every "
            f"trainer.log_every_n_steps steps, val/loss at each validation, every trainer.val_check_interval "
            f"steps): plot it again once it has, or lower those settings for short runs")


def plot(folder: Path, out: Optional[Path] = None) -> Path:
    """Draw the runs at or below `folder` to `out` (default <folder>/plot.png); nothing to draw is an error,
    and then no PNG is written (blank axes would look like a broken plot)."""
    runs = runs_below(folder)
    problem = nothing_to_draw(folder, runs)
    if problem:
        raise GptlabError(problem)
    return save_curves(runs, out or folder / "plot.png", title=str(folder))


def run(node: DictConfig) -> Path:
    cfg = to_spec(PlotConfig, node, "plot")
    folder = Path(cfg.dir).expanduser()
    if not folder.is_dir():
        raise GptlabError(f"dir={folder} is not a folder: give a run dir or a sweep folder under outputs/")
    path = plot(folder, Path(cfg.out).expanduser() if cfg.out else None)
    print(f"written     {path}")
    return path


main = cli.entry(run, "plot", ("dir", "out"), PlotConfig, "Loss curves of the runs in a folder, as one PNG.",
                 "RUN_OR_SWEEP_DIR (or dir=...) [out=FILE.png]", positional="dir")

if __name__ == "__main__":
    main()
