"""`gptlab plot`: the loss curves of a real sweep's runs as one PNG, and a multirun's own summary.png."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")


def test_a_sweep_plots_its_runs_and_plot_reads_any_folder(tmp_path, cache_dir):
    env = {**os.environ, "GPTLAB_CACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "ignore"}
    for inherited in ("HYDRA_FULL_ERROR", "GPTLAB_TRACEBACK", "GPTLAB_SWEEP_JOB"):
        env.pop(inherited, None)
    args = ["-m", "model=nano", "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
            "data.batch_size=4", "sample_tokens=0", "callbacks.text_samples.max_new_tokens=5", "optim.lr=1e-3,3e-3"]
    r = subprocess.run([sys.executable, "-m", "gptlab.train", *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert (sweep / "summary.png").stat().st_size > 10_000 and "curves: " in r.stdout

    r = subprocess.run([sys.executable, "-m", "gptlab", "plot", str(sweep), f"out={tmp_path / 'curves.png'}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and (tmp_path / "curves.png").stat().st_size > 10_000, r.stderr[-2000:]
    from gptlab.plot import runs_below

    runs = runs_below(sweep)
    assert sorted(run.label for run in runs) == ["optim.lr=0.001", "optim.lr=0.003"]
    assert all(run.series["val/loss"][0] == [3, 6] for run in runs)  # steps of the two validations

    r = subprocess.run([sys.executable, "-m", "gptlab.plot", f"dir={tmp_path / 'outputs' / 'nothing'}"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: dir=") and not (tmp_path / "plot.png").exists()


def write_run(run_dir, scalars: dict[str, list[tuple[int, float]]]):
    """A run dir as training leaves it for `gptlab plot`: tensorboard/<name>/ holding the given tag -> (step, value)
    points (none at all: an event file with no scalars, as a run that has logged nothing yet leaves)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tensorboard" / run_dir.name))  # the log's name: the run's label
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()
    return run_dir


def drawn_figure(folder):
    """The Figure `gptlab plot folder` would save, laid out as saving lays it out."""
    from gptlab.plot import runs_below
    from gptlab.viz.curves import draw_curves

    fig = draw_curves(runs_below(folder), title=str(folder))
    fig.draw_without_rendering()
    return fig


def plot_main(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    """`python -m gptlab.plot ARGV` run in this process (no interpreter to start): its exit status and stderr."""
    from gptlab import cli
    from gptlab.plot import main

    monkeypatch.setattr(sys, "argv", ["gptlab.plot", *argv])
    monkeypatch.setattr(cli, "COMMAND", cli.COMMAND)  # set by the call: put back afterwards
    for name in ("HYDRA_FULL_ERROR", "GPTLAB_TRACEBACK", "GPTLAB_COMMAND"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    code = 0
    try:
        main()
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def test_a_short_run_gets_markers_and_the_legend_stays_off_the_axes(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "0", {"train/loss": [(1, 4.0)], "val/loss": [(1, 4.1)]})  # one point a curve
    write_run(sweep / "1", {"train/loss": [(s, 5.0 - s / 50) for s in range(0, 100, 2)],
                            "val/loss": [(1, 4.5), (50, 4.0)]})
    fig = drawn_figure(sweep)
    by_step, by_time = fig.axes[:2]
    for ax in (by_step, by_time):
        lines = [ln for ln in ax.get_lines() if len(ln.get_xdata())]
        single = [ln for ln in lines if len(ln.get_xdata()) == 1]
        assert len(single) == 2 and all(ln.get_marker() not in (None, "", "None") for ln in single)
        long = [ln for ln in lines if len(ln.get_xdata()) == 50]  # run 1's train/loss: a line shows itself
        assert len(long) == 1 and long[0].get_marker() in (None, "", "None")

    (legend,) = fig.legends
    assert len(legend.get_texts()) == 2  # one entry a run
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:  # tight bbox: the axes with their tick labels and axis labels
        assert not box.overlaps(ax.get_tightbbox(renderer)), ax.get_xlabel()
    assert box.x1 <= fig.bbox.x1 + 1  # and inside the figure, not cut off


def test_a_big_sweep_legend_fits_beside_the_panels(tmp_path):
    sweep = tmp_path / "sweep"
    for i in range(30):
        write_run(sweep / f"{i}", {"val/loss": [(10, 4.0 + i / 10)]})
    fig = drawn_figure(sweep)
    renderer = fig.canvas.get_renderer()
    box = fig.legends[0].get_window_extent(renderer)
    assert len(fig.legends[0].get_texts()) == 30 and fig.get_figwidth() > 12  # widened to hold it
    assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1 - 1, box.y1 - 1)
    assert not any(box.overlaps(ax.get_tightbbox(renderer)) for ax in fig.axes)


def test_a_panel_without_data_says_so_and_the_rest_is_drawn(tmp_path):
    run = write_run(tmp_path / "run", {"train/loss": [(0, 5.0), (10, 4.0)]})  # no validation yet
    fig = drawn_figure(run)
    notes = [ax.get_title() for ax in fig.axes[:2]]  # above the panel, off the curve
    assert all("no val/loss" in n and "trainer.val_check_interval" in n for n in notes)
    assert all(len(ax.get_lines()) == 1 for ax in fig.axes[:2])

    rl = write_run(tmp_path / "rl", {"rl/reward": [(0, 0.1), (5, 0.3)], "val/exact_match": [(0, 0.0)]})
    fig = drawn_figure(rl)
    assert len(fig.axes) == 3 and len(fig.axes[2].get_lines()) == 2  # RL's own panel: drawn
    assert all("no val/loss or train/loss" in ax.texts[0].get_text() for ax in fig.axes[:2])
    assert not fig.axes[2].texts and not fig.axes[2].get_title()


@pytest.mark.parametrize("scalars", [{}, {"val/ppl": [(0, 50.0)]}], ids=["no scalars", "no loss"])
def test_nothing_to_draw_is_one_error_line_and_no_png(tmp_path, monkeypatch, capsys, scalars):
    sweep = tmp_path / "sweep"
    for i in range(2):
        write_run(sweep / f"{i}", scalars)
    code, err = plot_main(monkeypatch, capsys, str(sweep))
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: no loss values under {sweep}: its 2 runs logged nothing yet")
    assert "trainer.log_every_n_steps" in line and "trainer.val_check_interval" in line
    assert not list(tmp_path.rglob("*.png"))


def test_a_folder_without_tensorboard_logs_is_one_error_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty" / "run").mkdir(parents=True)
    code, err = plot_main(monkeypatch, capsys, str(tmp_path / "empty"))
    assert code == 2 and err.strip() == (f"error: no run with TensorBoard logs at or below {tmp_path / 'empty'}: "
                                         "give a run dir or a sweep folder")
    assert not list(tmp_path.rglob("*.png"))


def test_plot_writes_the_png_of_a_run_with_one_point(tmp_path, monkeypatch, capsys):
    run = write_run(tmp_path / "run", {"val/loss": [(3, 4.2)]})
    code, err = plot_main(monkeypatch, capsys, str(run), f"out={tmp_path / 'one.png'}")
    assert code == 0 and (tmp_path / "one.png").stat().st_size > 10_000, err
