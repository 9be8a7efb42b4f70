"""Writing a trained network as the files the worker loads: `.h5` and `.keras`, each with its own card.

A card names the SHA-256 of its weights file, and the two formats are different files, so each needs
its own card; the card sits beside its file under the same stem (`card_path`), which is why the two
formats go to separate folders: RUN/h5/best_resnet152.h5 and RUN/keras/best_resnet152.keras.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from .card import ModelCard, file_sha256

FORMATS = ("h5", "keras")


def exported_path(run_dir: Path, backbone: str, fmt: str) -> Path:
    return run_dir / fmt / f"best_{backbone}.{fmt}"


def export_model(model, run_dir: Path, card: ModelCard) -> list[Path]:
    """Save `model` in both formats and write each file's card (a copy of `card` with its SHA-256)."""
    written = []
    for fmt in FORMATS:
        path = exported_path(run_dir, card.architecture, fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written under another name and renamed, so a worker never sees half a file under the real name.
        tmp = path.with_name(".building-" + path.name)
        with _quiet_absl():
            model.save(tmp)
        tmp.replace(path)
        write_card(path, card)
        written.append(path)
    return written


def write_card(path: Path, card: ModelCard) -> Path:
    fields = {**card.__dict__, "weights_sha256": file_sha256(path)}
    return ModelCard(**fields).save(path)


@contextmanager
def _quiet_absl():
    # Keras logs HDF5 as "legacy" on every save; it is the format the published reference uses, so we
    # offer it on purpose and the warning would only alarm the user.
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
