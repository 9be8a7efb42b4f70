"""What a training run leaves after every epoch, so that it can resume after an interruption.

Each epoch writes, in this order: the model with its optimizer state (`epoch-NNN.keras`), the best
weights so far if this epoch improved the validation loss (`best-epoch-NNN.weights.h5`), the epoch's
row of the training log, and last `state.json`, which names those files and holds the
learning-rate scheduler's counters. Only the state file commits an epoch (it is replaced atomically),
so a run killed at any moment resumes from the last epoch that was complete, with nothing lost and
nothing counted twice.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras

LOG_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds")


@dataclass
class RunState:
    epochs_done: int = 0
    checkpoint: str = ""  # file name of the model + optimizer after the last complete epoch
    best_weights: str = ""  # file name of the weights of the epoch with the lowest validation loss
    best_epoch: int = 0  # 1-based
    best_val_loss: float = math.inf
    learning_rate: float = 0.0  # for the next epoch
    plateau: dict = field(default_factory=dict)  # ReduceLROnPlateau's wait, best and cooldown counters

    @classmethod
    def load(cls, folder: Path) -> "RunState | None":
        path = folder / "state.json"
        if not path.exists():
            return None
        fields = json.loads(path.read_text())
        fields["best_val_loss"] = math.inf if fields["best_val_loss"] is None else fields["best_val_loss"]
        return cls(**fields)

    def save(self, folder: Path) -> None:
        fields = asdict(self)
        fields["best_val_loss"] = None if math.isinf(self.best_val_loss) else self.best_val_loss
        tmp = folder / "state.json.tmp"
        tmp.write_text(json.dumps(fields, indent=2) + "\n")
        tmp.replace(folder / "state.json")


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(fh)]


def write_log(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, LOG_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


class EpochCheckpoint(keras.callbacks.Callback):
    """Commits each epoch as described above; on a resumed run, restores the scheduler's counters.

    Must come after ReduceLROnPlateau in the callback list: its state is saved once that callback has
    seen the epoch, and restored after that callback has reset itself at the start of training.
    """

    def __init__(self, folder: Path, log_path: Path, state: RunState, plateau: keras.callbacks.ReduceLROnPlateau):
        super().__init__()
        self.folder = folder
        self.log_path = log_path
        self.state = state
        self.plateau = plateau
        self._started = 0.0
        self._epoch_lr = 0.0

    def on_train_begin(self, logs=None):
        if self.state.plateau:
            self.plateau.wait = self.state.plateau["wait"]
            self.plateau.best = self.state.plateau["best"]
            self.plateau.cooldown_counter = self.state.plateau["cooldown_counter"]
        # A row logged for an epoch whose state was never committed is dropped: that epoch runs again.
        write_log(self.log_path, [r for r in read_log(self.log_path) if r["epoch"] <= self.state.epochs_done])

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()
        self._epoch_lr = current_learning_rate(self.model)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        number = epoch + 1
        old = (self.state.checkpoint, self.state.best_weights)
        checkpoint = f"epoch-{number:03d}.keras"
        self.model.save(self.folder / checkpoint)
        val_loss = float(logs.get("val_loss", math.inf))
        best_weights, best_epoch, best_loss = self.state.best_weights, self.state.best_epoch, self.state.best_val_loss
        if val_loss < best_loss:
            best_weights, best_epoch, best_loss = f"best-epoch-{number:03d}.weights.h5", number, val_loss
            self.model.save_weights(self.folder / best_weights)
        rows = [r for r in read_log(self.log_path) if r["epoch"] < number]
        rows.append({"epoch": number, "loss": logs.get("loss"), "accuracy": logs.get("accuracy"),
                     "val_loss": logs.get("val_loss"), "val_accuracy": logs.get("val_accuracy"),
                     "learning_rate": self._epoch_lr, "seconds": round(time.perf_counter() - self._started, 3)})
        write_log(self.log_path, rows)
        self.state = RunState(epochs_done=number, checkpoint=checkpoint, best_weights=best_weights,
                              best_epoch=best_epoch, best_val_loss=best_loss,
                              learning_rate=current_learning_rate(self.model),
                              plateau={"wait": self.plateau.wait,
                                       "best": None if self.plateau.best is None else float(self.plateau.best),
                                       "cooldown_counter": self.plateau.cooldown_counter})
        self.state.save(self.folder)
        for name in old:  # superseded files go only once the new state names their successors
            if name and name not in (checkpoint, best_weights):
                (self.folder / name).unlink(missing_ok=True)


def current_learning_rate(model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
