"""The lever study's report: after a multirun over `lever=[...]` lists with repeated seeds (experiment=ablation),
`<sweep dir>/ablation.md`, one row per arm with val/loss's mean and spread over the seeds, tokens/s, parameters
and the change against its reference, and `ablation.png`, the same as bars.

An arm adding levers to the recipe is compared with the baseline (`lever=[]`); an arm that is the fullest arm
less one lever is compared with the fullest arm, so its change is what that lever is worth inside the whole.
A change smaller than the seeds' spread is reported as noise, not as a gain."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from gptlab.config import unescape
from gptlab.errors import GptlabError
from gptlab.viz.curves import save_ablation_bars

KEY = "lever"


@dataclass
class Arm:
    levers: tuple[str, ...]
    losses: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # training tokens/s of each seed's run
    params: Optional[int] = None
    steps: Optional[int] = None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.losses)

    @property
    def spread(self) -> float:
        """max - min over the seeds: with 2 seeds, the whole disagreement."""
        return max(self.losses) - min(self.losses)

    @property
    def override(self) -> str:
        return f"{KEY}=[{','.join(self.levers)}]"


def levers_of(overrides: list[str]) -> Optional[tuple[str, ...]]:
    for o in map(unescape, overrides):
        if o.startswith(f"{KEY}="):
            return tuple(v.strip() for v in o.split("=", 1)[1].strip("[]").split(",") if v.strip())
    return None


def arms(rows: list[dict]) -> list[Arm]:
    """The finished jobs of a sweep, grouped by their lever lists (the seed and nothing else apart)."""
    found: dict[tuple[str, ...], Arm] = {}
    for r in rows:
        levers = levers_of(r.get("overrides", []))
        if levers is None or r.get("status") != "ok" or r.get("val/loss") is None:
            continue
        arm = found.setdefault(levers, Arm(levers))
        arm.losses.append(r["val/loss"])
        if r.get("perf/run_tokens_per_s"):
            arm.rates.append(r["perf/run_tokens_per_s"])
        arm.params, arm.steps = r.get("params") or arm.params, r.get("steps") or arm.steps
    return list(found.values())


def is_study(rows: list[dict]) -> bool:
    """A sweep over lever lists in which some arm ran with more than one seed."""
    return any(len(a.losses) > 1 for a in arms(rows))


@dataclass
class Line:
    name: str
    arm: Arm
    reference: Optional[Arm]  # what its change is measured against

    @property
    def delta(self) -> Optional[float]:
        return None if self.reference is None else self.arm.mean - self.reference.mean

    @property
    def verdict(self) -> str:
        """pays / hurts / noise: the lever's effect, against the seeds' spread of both arms."""
        if self.reference is None or self.delta is None:
            return ""
        noise = max(self.arm.spread, self.reference.spread)
        added = set(self.arm.levers) > set(self.reference.levers)
        gain = -self.delta if added else self.delta  # removing a lever that pays makes the loss go up
        return "pays" if gain > noise else "hurts" if gain < -noise else "noise"


def lines(study: list[Arm]) -> list[Line]:
    """The arms in reading order: baseline, each addition (best first), the fullest arm, each removal. With a
    two-lever recipe an arm is both (the recipe less muon is qk_norm alone): it is read both ways."""
    base = next((a for a in study if not a.levers), None)
    longest = max(len(a.levers) for a in study)
    fullest = [a for a in study if len(a.levers) == longest]
    full = fullest[0] if len(fullest) == 1 and longest > 1 else None  # a recipe of one lever is its "+" arm
    out = [Line("baseline", base, None)] if base else []
    adds = [a for a in study if a.levers and a is not full and (full is None or len(a.levers) == 1
                                                                  or not _removal(a, full))]
    out += sorted((Line(f"+ {' + '.join(a.levers)}", a, base) for a in adds), key=lambda ln: ln.arm.mean)
    if full is not None:
        out.append(Line(f"all: {' + '.join(full.levers)}", full, base))
        removals = [a for a in study if _removal(a, full)]
        out += sorted((Line(f"all - {(set(full.levers) - set(a.levers)).pop()}", a, full) for a in removals),
                      key=lambda ln: -ln.arm.mean)
    return out


def _removal(arm: Arm, full: Arm) -> bool:
    return len(full.levers) > 1 and len(arm.levers) == len(full.levers) - 1 and set(arm.levers) < set(full.levers)


def markdown(study: list[Arm], drawn: list[Line], title: str) -> str:
    """The table of `drawn` (lines(study)), one row per line."""
    seeds = max(len(a.losses) for a in study)
    out = [f"# {title}", "", f"val/loss: mean over {seeds} seeds, ± half their spread (max - min); Δ: the change "
           "against the arm in brackets; verdict: the change beyond the larger spread of the two.", "",
           "| arm | val/loss | Δ | verdict | tokens/s | parameters | steps | override |",
           "|---|---|---|---|---|---|---|---|"]
    base = next((ln.arm for ln in drawn if not ln.arm.levers and ln.arm.rates), None)
    for ln in drawn:
        a = ln.arm
        ref = "" if ln.reference is None else " (baseline)" if not ln.reference.levers else " (all)"
        delta = "" if ln.delta is None else f"{ln.delta:+.4f}{ref}"
        rate = f"{statistics.fmean(a.rates):,.0f}" if a.rates else ""
        if rate and base is not None and a is not base:  # the lever's time cost, as a speed ratio
            rate += f" ({statistics.fmean(a.rates) / statistics.fmean(base.rates):.2f}x)"
        params = f"{a.params / 1e6:.3f}M" if a.params else ""
        out.append(f"| {ln.name} | {a.mean:.4f} ± {a.spread / 2:.4f} | {delta} | {ln.verdict} | {rate} | {params} "
                   f"| {a.steps or ''} | `{a.override}` |")
    return "\n".join(out) + "\n"


def write(sweep_dir: Path, rows: list[dict]) -> tuple[Path, Optional[Path]]:
    """ablation.md, and ablation.png when matplotlib is there; the paths written."""
    study = arms(rows)
    drawn = lines(study)
    md = sweep_dir / "ablation.md"
    md.write_text(markdown(study, drawn, f"Lever ablation: {sweep_dir}"), encoding="utf-8")
    try:
        png = save_ablation_bars([ln.name for ln in drawn], [ln.arm.mean for ln in drawn],
                                 [ln.arm.spread / 2 for ln in drawn], [ln.verdict for ln in drawn],
                                 sweep_dir / "ablation.png", title=str(sweep_dir))
    except GptlabError:  # no matplotlib: the table alone
        return md, None
    return md, png
