"""A run's folder: the one place that knows where a run keeps what.

    <run>/                       outputs/<date>/<time>/, or a sweep's <sweep>/<job>/
      .hydra/                    Hydra's record: the composed config and the command's overrides
      train.log                  what the run printed, start to end (its starts appended; gptlab.runlog)
      checkpoints/best.ckpt      lowest val/loss so far (ModelCheckpoint, conf/callbacks/default.yaml)
      checkpoints/last.ckpt      the latest step: what a resume starts from
      checkpoints/eval-*.json    gptlab eval's results, beside the checkpoint they score
      tensorboard/<version>/     the TensorBoard log (conf/logger/tensorboard.yaml; gptlab plot reads it)
      inspect/                   gptlab inspect's attention maps
      checkpoints/merged.ckpt    a LoRA run with lora.merge=true: best.ckpt's adapters folded into the weights
      hf/                        gptlab export's Hugging Face folder (when no out= is given)
      hf-lora/base, hf-lora/adapter   gptlab export adapter=true: the base's folder and the PEFT adapter beside it
      model-<type>.gguf          gptlab export format=gguf type=<type>: one file for llama.cpp
      result.json                the run's final figures (a sweep gathers them)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

from gptlab.errors import GptlabError

PathLike = Union[str, Path]
RECORD = ".hydra"  # Hydra's output_subdir


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def of(cls, path: PathLike) -> RunDir:
        """The run a folder or a checkpoint file belongs to (a checkpoint sits in <run>/checkpoints/)."""
        p = Path(path).expanduser()
        if p.is_file() or p.suffix == ".ckpt":
            p = p.parent
        return cls(p.parent if p.name == "checkpoints" else p)

    checkpoints = property(lambda self: self.path / "checkpoints")
    logs = property(lambda self: self.path / "tensorboard")
    output_log = property(lambda self: self.path / "train.log")  # what it printed: Hydra's job log, named by the job
    best = property(lambda self: self.checkpoints / "best.ckpt")
    last = property(lambda self: self.checkpoints / "last.ckpt")
    merged = property(lambda self: self.checkpoints / "merged.ckpt")  # lora.merge=true: best.ckpt, adapters folded in
    record = property(lambda self: self.path / RECORD)
    hydra_record = property(lambda self: self.record / "hydra.yaml")  # Hydra's own settings and the choices made
    inspections = property(lambda self: self.path / "inspect")
    export = property(lambda self: self.path / "hf")
    export_adapter = property(lambda self: self.path / "hf-lora")  # adapter=true: base/ and adapter/
    result = property(lambda self: self.path / "result.json")

    def is_run(self) -> bool:
        return self.checkpoints.is_dir()

    def gguf(self, type: str) -> Path:
        """gptlab export format=gguf's file of that tensor type (f32, f16, q8_0)."""
        return self.path / f"model-{type}.gguf"

    @staticmethod
    def evaluation(checkpoint: Path, data: str) -> Path:
        """Where gptlab eval writes its result for `checkpoint` scored on `data` (a short name)."""
        return checkpoint.with_name(f"eval-{checkpoint.stem}-{data}.json")


def find_checkpoint(path: PathLike, last_first: bool = False) -> Path:
    """A .ckpt file as is; a run dir -> its best.ckpt, else its last.ckpt (last_first: the other way round,
    which is what a resume wants). A folder holding the files directly (checkpoints/ itself) works too."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.is_dir():
        raise GptlabError(f"checkpoint {p} does not exist: give a .ckpt file or a run dir under outputs/")
    run = RunDir(p)
    names = (run.best.name, run.last.name)[:: -1 if last_first else 1]
    for folder in (run.checkpoints, p):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise GptlabError(f"no checkpoint in {p}: expected checkpoints/{' or checkpoints/'.join(names)} inside it")
