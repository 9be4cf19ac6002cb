"""Local tasks for the LM Evaluation Harness, over the last tenth of Tiny Shakespeare (the text the runs hold out
for validation): one of each kind a task can be, as the harness's YAML over JSONL files. Nothing downloads.

    python scripts/make_lm_tasks.py outputs/tasks/                  # writes its .yaml and .jsonl files there
    gptlab eval ckpt_path=RUN_DIR tasks=shakespeare_next_line,shakespeare_ppl include_path=outputs/tasks/

- shakespeare_next_line (multiple_choice): a line of a speech, and four candidates for the line after it (the
  true one and three lines from elsewhere in the text); acc and acc_norm (the harness's length-normalised acc).
- shakespeare_ppl (loglikelihood_rolling): whole speeches; word and byte perplexity, bits per byte.
- shakespeare_complete (generate_until): the first words of a line, the rest of it to be written (until the line
  ends); exact_match.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TASKS = ("shakespeare_next_line", "shakespeare_ppl", "shakespeare_complete")


def speeches(text: str) -> list[list[str]]:
    """The text's speeches (a speaker's name line, then its lines, up to a blank line), as lists of lines."""
    return [[ln for ln in block.splitlines() if ln.strip()] for block in text.split("\n\n") if block.strip()]


def make(text: str, out: Path, n: int = 200, seed: int = 0) -> list[str]:
    """Write the three tasks (n documents each at most) into out; return their names."""
    rng = random.Random(seed)
    held_out = text[int(len(text) * 0.9):]
    talk = [s for s in speeches(held_out) if len(s) >= 3]  # a name line and at least two lines of verse
    lines = [ln for s in talk for ln in s[1:] if len(ln) > 20]
    choice = []
    for s in talk[:n]:
        k = rng.randrange(1, len(s) - 1)
        wrong = rng.sample([ln for ln in lines if ln != s[k + 1]], 3)
        options = [s[k + 1], *wrong]
        rng.shuffle(options)
        choice.append({"context": "\n".join(s[:k + 1]) + "\n", "choices": options, "gold": options.index(s[k + 1])})
    ppl = [{"text": "\n".join(s) + "\n"} for s in talk[:n]]
    complete = []
    for ln in rng.sample(lines, min(n, len(lines))):
        cut = ln.rfind(" ", 0, len(ln) // 2)
        if cut > 0:
            complete.append({"prompt": ln[:cut], "rest": ln[cut:]})
    out.mkdir(parents=True, exist_ok=True)
    data = {"shakespeare_next_line": choice, "shakespeare_ppl": ppl, "shakespeare_complete": complete}
    for name, rows in data.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    def source(name: str) -> str:  # the task's data: its JSONL file, by absolute path
        data = json.dumps(str((out / f"{name}.jsonl").resolve()))
        return f"dataset_path: json\ndataset_kwargs:\n  data_files: {data}\ntest_split: train\n"

    (out / "shakespeare_next_line.yaml").write_text(
        f"task: shakespeare_next_line\n{source('shakespeare_next_line')}output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{gold}}"\n'
        "target_delimiter: \"\"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n", encoding="utf-8")
    (out / "shakespeare_ppl.yaml").write_text(
        f"task: shakespeare_ppl\n{source('shakespeare_ppl')}output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n  - metric: word_perplexity\n'
        "  - metric: byte_perplexity\n  - metric: bits_per_byte\n", encoding="utf-8")
    (out / "shakespeare_complete.yaml").write_text(
        f"task: shakespeare_complete\n{source('shakespeare_complete')}output_type: generate_until\n"
        'doc_to_text: "{{prompt}}"\ndoc_to_target: "{{rest}}"\ntarget_delimiter: ""\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 24\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n", encoding="utf-8")
    return list(TASKS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the folder to write the tasks into (include_path=)")
    ap.add_argument("--n", type=int, default=200, help="documents per task, at most")
    ap.add_argument("--text", type=Path, default=None, help="the text (default: Tiny Shakespeare)")
    args = ap.parse_args()
    if args.text is None:
        from gptlab.data.sources import SHAKESPEARE, find_or_download

        args.text = find_or_download(SHAKESPEARE.file, SHAKESPEARE.url, SHAKESPEARE.sha256, None)
    names = make(args.text.read_text(encoding="utf-8"), args.out, args.n)
    print(f"wrote {', '.join(names)} into {args.out}: gptlab eval ckpt_path=RUN_DIR tasks={','.join(names)} "
          f"include_path={args.out}")


if __name__ == "__main__":
    main()
