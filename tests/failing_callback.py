"""A Lightning callback that fails on purpose, on one rank only: how a lone rank's crash is tested."""

import lightning as L


class FailOnRank(L.Callback):
    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            raise RuntimeError(f"boom on rank {self.rank}")
