"""One results file per machine kind, written by the benchmark scripts themselves.

Each bench script ends with `record(bench, table, last_line=...)`: the table it printed (columns, rows of cells
formatted as it printed them), its last line, the exact command and the machine, into results/<kind>.json at the
repo root (GPTLAB_RESULTS_DIR overrides the folder). scripts/render_results.py renders the pages' tables from
these files, so no figure in the docs is typed by hand and each says where it came from.

    {"machine": {...}, "records": {"generate:float32": {"bench": "generate", "key": "float32", "date": ...,
                                   "command": "python scripts/bench_generate.py --dtype float32", "machine": {...},
                                   "columns": [...], "rows": [[...], ...], "last_line": ..., "notes": ...}}}

The kind names what decides the figures: the CPU (vendor, line, microarchitecture for AMD, its widest matrix
units) or the GPU. A run with the ISA capped by ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA / MKL_ENABLE_INSTRUCTIONS
(how this project reproduces a CPU without bf16 units on one with them) is a kind of its own: "...-capped-avx2".
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Optional

REPO = Path(__file__).resolve().parents[1]
CAP_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")

# x86 ISA levels, narrowest first: what a CPU has, or what a cap leaves of it
LEVELS = ("default", "avx", "avx2", "avx512", "avx512bf16", "amx")
LEVEL_NAMES = {"default": "no AVX", "avx": "AVX", "avx2": "AVX2", "avx512": "AVX-512", "avx512bf16": "AVX512-BF16",
               "amx": "AMX"}
ISA_TEXT = {"amx": "AVX512-BF16, AMX", "avx512bf16": "AVX512-BF16, no AMX", "avx512": "AVX-512, no bf16 units",
            "avx2": "AVX2, no bf16 units", "avx": "AVX, no bf16 units", "default": "no AVX, no bf16 units"}


def results_dir() -> Path:
    return Path(os.environ.get("GPTLAB_RESULTS_DIR") or REPO / "results")


# --- the machine ------------------------------------------------------------------------------------------


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none, e.g. macOS)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    return fields


def amd_core(family: int, model: int) -> Optional[str]:
    """AMD's microarchitecture from cpuid's family and model (the name alone often says only "AMD EPYC")."""
    if family == 25:  # 0x19: Zen 3 (Milan, Vermeer, Cezanne, Rembrandt) unless one of Zen 4's model ranges
        zen4 = 0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0x90 <= model <= 0xAF
        return "Zen 4" if zen4 else "Zen 3"
    if family == 26:
        return "Zen 5"
    if family == 23:
        return "Zen 2" if model >= 0x30 else "Zen"
    return None


def _clean(name: str) -> str:
    """"Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz" -> "Intel Xeon Platinum 8480+"."""
    name = re.sub(r"\((R|TM|tm)\)|@.*$|\b\d+-Core Processor\b|\bProcessor\b|\bCPU\b", " ", name)
    return " ".join(name.split())


def _int(text: Optional[str]) -> Optional[int | str]:
    return int(text) if text and text.isdigit() else text


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cap_level(env: Optional[dict] = None) -> tuple[Optional[str], list[str]]:
    """The ISA level the cap variables leave (None: none set) and the settings, as `NAME=value`."""
    env = os.environ if env is None else env
    levels, settings = [], []
    for var in CAP_VARS:
        value = env.get(var, "").strip()
        if not value:
            continue
        settings.append(f"{var}={value}")
        v = value.upper()
        if var == "ATEN_CPU_CAPABILITY":
            level = {"DEFAULT": "default", "AVX2": "avx2", "AVX512": "avx512"}.get(v)
        elif "AMX" in v or v in ("ALL", "DEFAULT") or v in ("AVX512_E4", "AVX512_E5"):
            level = "amx"
        elif "BF16" in v or "FP16" in v or v == "AVX512_E3":
            level = "avx512bf16"
        elif v.startswith(("AVX512", "AVX10")):
            level = "avx512"
        elif v.startswith("AVX2"):
            level = "avx2"
        elif v.startswith("AVX"):
            level = "avx"
        else:  # SSE41, SSE4_2
            level = "default"
        if level:
            levels.append(level)
    return (min(levels, key=LEVELS.index) if levels else None), settings


def machine() -> dict:
    """What this machine is, for a results file: its kind (the file's name), a description, and the facts."""
    import torch

    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    name = _clean(info.get("model name") or platform.processor() or platform.machine())
    family, model = info.get("cpu family"), info.get("model")
    arch = ""
    if info.get("vendor_id") == "AuthenticAMD" and family and model and model.isdigit():
        arch = amd_core(int(family), int(model)) or ""
    where = f"{arch}: " if arch else ""
    cpu = f"{name} ({where}family {family} model {model})" if family and model else name

    if platform.machine().lower() in ("x86_64", "amd64", "i686") or "vendor_id" in info:  # x86
        own = next(lv for lv, f in (("amx", "amx_bf16"), ("avx512bf16", "avx512_bf16"), ("avx512", "avx512f"),
                                    ("avx2", "avx2"), ("avx", "avx"), ("default", "")) if not f or f in flags)
        cap, settings = cap_level()  # ATEN_CPU_CAPABILITY=avx512 alone counts as dropping bf16 too: close enough
        isa = own if cap is None or LEVELS.index(cap) >= LEVELS.index(own) else cap
        bf16 = isa in ("avx512bf16", "amx")
        isa_text = ISA_TEXT[own]
    else:  # Arm (Features: bf16), or no /proc/cpuinfo
        own = isa = "bf16" if "bf16" in flags else (platform.machine() or "unknown").lower()
        settings, bf16 = [], "bf16" in flags
        isa_text = "BF16" if bf16 else "no bf16 units"
    kind = "-".join(filter(None, [_slug(" ".join(name.split()[:2])), _slug(arch.replace(" ", "")), _slug(own)]))
    description = f"{cpu}, {cores} cores, {isa_text}"
    if isa != own:
        kind += f"-capped-{isa}"
        description += f"; reproduced: ISA capped at {LEVEL_NAMES[isa]} by {' '.join(settings)}"

    facts = {"kind": kind, "description": description, "cpu": name, "cpu_family": _int(family),
             "cpu_model": _int(model), "arch": arch or None, "isa": isa, "cpu_isa": own, "bf16_units": bf16,
             "isa_cap": settings, "aten_capability": torch.backends.cpu.get_cpu_capability(), "cores": cores,
             "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
             "gpu": None}
    if torch.cuda.is_available():  # a GPU machine: the GPU decides the figures, the CPU is its host
        gpu = torch.cuda.get_device_name(0)
        facts["gpu"] = gpu
        facts["cuda"] = torch.version.cuda
        facts["kind"] = "-".join(w for w in _slug(gpu).split("-")
                                 if not re.fullmatch(r"\d+gb|hbm\d*e?|pcie|sxm\d*|nvl", w))
        facts["description"] = f"{gpu} (CUDA {torch.version.cuda}); host {description}"
    return facts


# --- the command ------------------------------------------------------------------------------------------


def command(argv: Optional[list[str]] = None, env: Optional[dict] = None) -> str:
    """The command as one types it in the repo: the ISA caps set, python, the script relative to the repo, the args."""
    argv = list(sys.argv if argv is None else argv)
    env = os.environ if env is None else env
    script = Path(argv[0]).resolve() if argv and argv[0] else None
    if script is not None and script.is_relative_to(REPO):
        argv[0] = script.relative_to(REPO).as_posix()
    caps = [f"{var}={shlex.quote(env[var])}" for var in CAP_VARS if env.get(var, "").strip()]
    return " ".join([*caps, "python", shlex.join(argv)])


# --- the file ---------------------------------------------------------------------------------------------


def add_flag(parser: argparse.ArgumentParser) -> None:
    """Every bench script's --no-record."""
    parser.add_argument("--no-record", action="store_true",
                        help="do not write the results into results/<machine kind>.json (GPTLAB_RESULTS_DIR)")


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def dumps(data: dict) -> str:
    """JSON, one line per cell list (columns, each row): a rerun's diff shows the rows that changed."""
    text = json.dumps(data, indent=1, ensure_ascii=False)
    string = r'"(?:[^"\\]|\\.)*"'
    return re.sub(rf"\[\n\s*({string}(?:,\n\s*{string})*)\n\s*\]",
                  lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text) + "\n"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Two benches finishing at once must not drop each other's record (read, change, write)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record(bench: str, table: dict, *, last_line: str, key: Optional[str] = None,
           notes: str = "") -> Optional[Path]:
    """Write (or replace) this bench's record, keyed bench[:key], in results/<machine kind>.json; returns the path.

    table: {"columns": [...], "rows": [[...], ...]}, each cell a string as the bench printed it. last_line: the
    bench's last line (several lines: its last lines). key: which variant of the bench (e.g. the dtype).
    Under the test suite (a bench run at a tiny size by a test) nothing is written unless GPTLAB_RESULTS_DIR names
    a folder: such figures are no results, and the repo's results/ must match its pages."""
    if "PYTEST_CURRENT_TEST" in os.environ and not os.environ.get("GPTLAB_RESULTS_DIR"):
        print(f"not recorded ({bench}): run by the test suite, and GPTLAB_RESULTS_DIR names no folder",
              file=sys.stderr)
        return None
    columns = [str(c) for c in table["columns"]]
    rows = [[str(c) for c in row] for row in table["rows"]]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"{bench}: a row of {len(row)} cells under {len(columns)} columns: {row}")
    key = re.sub(r"\s+", "_", key.strip()) if key else None  # a marker names it: no spaces
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    facts = machine()
    entry = {"bench": bench, "key": key,
             "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
             "command": command(), "machine": facts, "columns": columns, "rows": rows,
             "last_line": last_line, "notes": notes}
    path = folder / f"{facts['kind']}.json"
    with _locked(folder):
        records = load(path).get("records", {}) if path.is_file() else {}
        records[f"{bench}:{key}" if key else bench] = entry
        data = {"machine": facts, "records": dict(sorted(records.items()))}
        # a new file beside it, then renamed over it: a reader never sees half a file
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=folder, prefix=f".{path.name}.",
                                         delete=False) as f:
            f.write(dumps(data))
        os.chmod(f.name, 0o644)  # as any file the user writes, not a temporary file's 0600
        os.replace(f.name, path)
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    sys.stdout.flush()  # after the bench's own lines, where both go to one place
    print(f"recorded {entry['bench']}{':' + key if key else ''} in {shown}", file=sys.stderr)
    return path
