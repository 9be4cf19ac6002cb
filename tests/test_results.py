"""The results files the bench scripts write (scripts/results.py) and the pages rendered from them
(scripts/render_results.py): every figure on a page comes from a file, with the machine and the command."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import render_results  # noqa: E402
import results  # noqa: E402

CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
ZEN4 = {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "17", "model name": "AMD EPYC",
        "flags": "fpu sse4_2 avx avx2 avx512f avx512_bf16 avx512_vnni"}
XEON = {"vendor_id": "GenuineIntel", "cpu family": "6", "model": "143",
        "model name": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "flags": "avx avx2 avx512f avx512_bf16 amx_bf16"}


@pytest.fixture
def no_caps(monkeypatch):
    for var in CAPS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU's kind, even on a GPU machine


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    """A results folder of its own, records from a fixed machine and command."""
    folder = tmp_path / "results"
    monkeypatch.setenv("GPTLAB_RESULTS_DIR", str(folder))
    monkeypatch.setattr(results, "machine", lambda: {"kind": "amd-epyc-zen4-avx512bf16", "torch": "2.13.0",
                                                     "description": "AMD EPYC (Zen 4: family 25 model 17), 2 cores"})
    monkeypatch.setattr(sys, "argv", [str(REPO / "scripts" / "bench_generate.py"), "--dtype", "float32"])
    for var in CAPS:
        monkeypatch.delenv(var, raising=False)
    return folder


def test_machine_says_what_this_machine_is(no_caps):
    m = results.machine()
    for field in ("kind", "description", "cpu", "isa", "bf16_units", "cores", "torch", "python", "gpu",
                  "aten_capability"):
        assert field in m, field
    assert m["kind"] and m["kind"] == results._slug(m["kind"]) and "capped" not in m["kind"]
    assert isinstance(m["bf16_units"], bool) and m["cores"] >= 1 and m["torch"] == torch.__version__
    assert m["aten_capability"] == torch.backends.cpu.get_cpu_capability()


def test_a_capped_isa_is_a_kind_of_its_own_without_bf16_units(no_caps, monkeypatch):
    monkeypatch.setattr(results, "_cpuinfo", lambda: dict(ZEN4))
    own = results.machine()
    assert own["kind"] == "amd-epyc-zen4-avx512bf16" and own["bf16_units"]
    assert own["description"] == "AMD EPYC (Zen 4: family 25 model 17), 2 cores, AVX512-BF16, no AMX".replace(
        "2 cores", f"{own['cores']} cores")
    for var, value in CAPS.items():
        monkeypatch.setenv(var, value)
    capped = results.machine()
    assert capped["kind"] == "amd-epyc-zen4-avx512bf16-capped-avx2" and not capped["bf16_units"]
    assert capped["description"].endswith("; reproduced: ISA capped at AVX2 by ATEN_CPU_CAPABILITY=avx2 "
                                          "ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2")
    assert results.command(["scripts/bench_serve.py"]) == ("ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 "
                                                           "MKL_ENABLE_INSTRUCTIONS=AVX2 python scripts/bench_serve.py")


def test_kinds_of_cpus_and_gpus(no_caps, monkeypatch):
    monkeypatch.setattr(results, "_cpuinfo", lambda: dict(XEON))
    xeon = results.machine()
    assert xeon["kind"] == "intel-xeon-amx" and xeon["bf16_units"]
    assert xeon["description"].startswith("Intel Xeon Platinum 8481C (family 6 model 143), ")
    assert [results.amd_core(25, m) for m in (0x01, 0x11, 0x61, 0xA0)] == ["Zen 3", "Zen 4", "Zen 4", "Zen 4"]
    assert results.amd_core(26, 0x02) == "Zen 5" and results.amd_core(21, 1) is None
    assert results.cap_level({}) == (None, [])
    assert results.cap_level({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"})[0] == "amx"
    assert results.cap_level({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "avx2"})[0] == "avx2"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H100 80GB HBM3")
    gpu = results.machine()
    assert gpu["kind"] == "nvidia-h100" and gpu["gpu"] == "NVIDIA H100 80GB HBM3"
    assert "; host Intel Xeon" in gpu["description"]


def test_record_writes_replaces_its_own_and_keeps_the_others(results_dir, monkeypatch):
    table = {"columns": ["shape", "tokens/s"], "rows": [["small", "1,231 tok/s"]]}
    path = results.record("generate", table, key="float32", last_line="ratio: 1.16")
    assert path == results_dir / "amd-epyc-zen4-avx512bf16.json"
    results.record("generate", {**table, "rows": [["small", "190 tok/s"]]}, key="bfloat16", last_line="ratio: 0.86")
    results.record("tokenizer", {"columns": ["a"], "rows": [["1"]]}, last_line="x")
    results.record("generate", {**table, "rows": [["small", "1,300 tok/s"]]}, key="float32", last_line="ratio: 1.2")
    data = json.loads(path.read_text())
    assert list(data["records"]) == ["generate:bfloat16", "generate:float32", "tokenizer"]
    rec = data["records"]["generate:float32"]
    assert rec["rows"] == [["small", "1,300 tok/s"]] and rec["last_line"] == "ratio: 1.2" and rec["key"] == "float32"
    assert rec["command"] == "python scripts/bench_generate.py --dtype float32"
    assert rec["date"].endswith("+00:00") and rec["machine"]["kind"] == data["machine"]["kind"]
    assert data["records"]["generate:bfloat16"]["rows"] == [["small", "190 tok/s"]]
    assert data["records"]["tokenizer"]["key"] is None
    assert [p.name for p in results_dir.iterdir()] == [path.name]  # no temporary file left

    # a write that fails half way leaves the file as it was (the new text goes to a file beside it first)
    before = path.read_text()
    monkeypatch.setattr(results, "dumps", lambda data: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        results.record("tokenizer", {"columns": ["a"], "rows": [["2"]]}, last_line="y")
    assert path.read_text() == before and json.loads(before)
    with pytest.raises(ValueError, match="2 columns"):
        results.record("generate", {"columns": ["a", "b"], "rows": [["only one"]]}, last_line="z")


def test_a_bench_run_by_a_test_records_only_where_the_test_says(results_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(results, "REPO", tmp_path)  # were the guard to fail, into tmp_path/results, not the repo's
    monkeypatch.delenv("GPTLAB_RESULTS_DIR")
    assert results.record("serve", {"columns": ["a"], "rows": [["1"]]}, last_line="x") is None
    assert not (tmp_path / "results").exists()


def test_the_renderer_fills_the_blocks_and_nothing_else(results_dir, tmp_path):
    results.record("generate", {"columns": ["shape", "gptlab / transformers"], "rows": [["small", "**1.16**"]]},
                   key="float32", last_line="kv-cache tokens/s ratio gptlab/hf: 1.16")
    results.record("serve", {"columns": ["errors"], "rows": [["0"]]}, key="small-float32",
                   last_line="errors: 0\nbatched/single tokens/s: 6.26")
    page = tmp_path / "README.md"
    text = ("# Title\n\nBefore | not a table.\n\n<!-- results: generate -->\nstale text\n<!-- /results -->\n"
            "middle\n<!-- results: serve:gpt2-bfloat16 run: python scripts/bench_serve.py --shape gpt2 -->\n"
            "<!-- /results -->\n<!-- results: rl -->\n<!-- /results -->\n"
            "```\n<!-- results: generate -->\n<!-- /results -->\n```\nafter\n")
    page.write_text(text)
    args = ["--root", str(tmp_path), "--results", str(results_dir)]
    assert render_results.main(["--check", *args]) == 1 and page.read_text() == text
    assert render_results.main(args) == 0
    out = page.read_text()
    assert out.startswith("# Title\n\nBefore | not a table.\n\n<!-- results: generate -->\n\n*AMD EPYC")
    assert "stale text" not in out and "\nmiddle\n" in out and out.endswith("```\nafter\n")
    assert ("torch 2.13.0; " in out and ": `python scripts/bench_generate.py --dtype float32`*\n\n"
            "| shape | gptlab / transformers |\n|---|---|\n| small | **1.16** |\n\n"
            "Last line: `kv-cache tokens/s ratio gptlab/hf: 1.16`\n\n<!-- /results -->\n") in out
    assert "Not yet measured on any machine: run `python scripts/bench_serve.py --shape gpt2`" in out
    assert "Not yet measured on any machine: run `python scripts/bench_rl.py`" in out
    assert out.count("<!-- results: generate -->\n<!-- /results -->") == 1  # the example in the code block
    assert "errors: 0" not in out  # serve's record is another key
    assert render_results.main(["--check", *args]) == 0  # rendering twice changes nothing

    page.write_text("<!-- results: generate -->\nno end\n")
    with pytest.raises(SystemExit, match="no `<!-- /results -->`"):
        render_results.main(args)


def test_the_pages_are_rendered_from_the_repos_results(monkeypatch):
    """After a benchmark run: `python scripts/render_results.py`, and commit results/ with the pages."""
    monkeypatch.delenv("GPTLAB_RESULTS_DIR", raising=False)
    assert render_results.main(["--check", "--root", str(REPO), "--results", str(REPO / "results")]) == 0
