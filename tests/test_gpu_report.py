"""scripts/gpu_report.py checks itself on a CPU (--dry-run): every step runs at a tiny size in its own process,
the figures are read from each step's output, and one report says how each step went."""

import importlib.util
import os
import subprocess
import sys

from conftest import REPO

STEPS = ("tests", "train", "cli", "generate", "generate-static", "levers", "eval", "serve")


def test_the_dry_run_runs_every_step_and_writes_one_report(tmp_path, cache_dir):
    out = tmp_path / "report"
    p = subprocess.run([sys.executable, "scripts/gpu_report.py", "--dry-run", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    report = (out / "report.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ") and
            line.split("|")[1].strip() in STEPS}
    assert p.returncode == 0, report + p.stderr[-2000:]
    assert set(rows) == set(STEPS) and all("| ok |" in row for row in rows.values())
    # the figures each step exists for were found in its output
    for step, figures in {"tests": ["skipped"], "train": ["plain tokens/s", "lightning MFU %", "lightning/plain"],
                          "cli": ["tokens/s", "MFU %"], "generate": ["batch 1 tokens/s", "batch 8 gptlab/hf"],
                          "levers": ["levers/baseline", "muon/baseline"], "eval": ["gptlab/hf"],
                          "serve": ["errors 0", "batched/single"]}.items():
        for figure in figures:
            assert figure in rows[step], (step, figure, rows[step])
    assert "NOT met" in report or "met" in report  # each target is judged
    assert (out / "train.log").is_file() and "report:" in p.stdout


def test_a_failing_or_hanging_step_is_reported_and_the_next_still_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_report", REPO / "scripts" / "gpu_report.py")
    gpu_report = sys.modules["gpu_report"] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
    spec.loader.exec_module(gpu_report)
    py = sys.executable
    steps = [gpu_report.Step("broken", "exits 3", [py, "-c", "print('boom'); raise SystemExit(3)"], 30,
                             gpu_report.read_pytest),
             gpu_report.Step("hangs", "sleeps", [py, "-c", "import time; time.sleep(60)"], 1, gpu_report.read_pytest),
             gpu_report.Step("fine", "passes", [py, "-c", "print('3 passed, 1 skipped in 0.1s')"], 30,
                             gpu_report.read_pytest, {"passed": (">=", 4.0)})]
    outcomes = [gpu_report.run(step, tmp_path, {"PATH": os.environ.get("PATH", "")}) for step in steps]
    assert [o.status for o in outcomes] == ["failed (exit 3)", "timed out (1 s)", "ok"]
    assert outcomes[0].tail == ["boom"] and outcomes[2].figures == {"passed": 3.0, "skipped": 1.0}
    report = gpu_report.report(outcomes, "dry-run", 1.0)
    assert "boom" in report and "passed >= 4: NOT met" in report
