"""The model card: the facts that travel with a weights file, above all its label order.

A weights file without a card is refused: a label order is never assumed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from triage.catalogue import BY_SLUG, REFERENCE_LABEL_ORDER

from .preprocess import DECODINGS, INPUT_SIZE, PREPROCESSING, SCALINGS, InputSpec


def card_path(weights: Path) -> Path:
    """best_resnet152.h5 -> best_resnet152.card.json beside it."""
    weights = Path(weights)
    return weights.with_name(weights.stem + ".card.json")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ModelCard:
    labels: list[str]
    version: str
    weights_sha256: str
    trained: bool
    architecture: str = "resnet152"
    input_size: int = INPUT_SIZE
    preprocessing: str = PREPROCESSING
    decoding: str = "full"  # "reduced": JPEGs decoded at a reduced DCT scale (model.preprocess.DECODINGS)
    temperature: float = 1.0
    notes: str = ""
    extra: dict = field(default_factory=dict)  # dataset summary, metrics, split hashes

    def __post_init__(self):
        unknown = [label for label in self.labels if label not in BY_SLUG]
        if unknown:
            raise ValueError(f"model card names unknown classes: {unknown}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("model card repeats a class in its label order")
        if self.preprocessing not in SCALINGS:
            raise ValueError(f"unsupported preprocessing {self.preprocessing!r}; known: {', '.join(SCALINGS)}")
        if self.decoding not in DECODINGS:
            raise ValueError(f"unsupported decoding {self.decoding!r}; known: {', '.join(DECODINGS)}")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.input_size, self.preprocessing, self.decoding)

    @property
    def model_version(self) -> str:
        """What an analysis row records: the card's version plus the weights' fingerprint."""
        return f"{self.version}@{self.weights_sha256[:12]}"

    def save(self, weights: Path) -> Path:
        path = card_path(weights)
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, weights: Path) -> "ModelCard":
        path = card_path(weights)
        if not path.exists():
            raise FileNotFoundError(f"No model card at {path}: a weights file must travel with its label "
                                    f"order. For the published reference weights run: "
                                    f"python -m model.card --reference {weights}")
        try:
            fields = json.loads(path.read_text())
            return cls(**fields)
        except (json.JSONDecodeError, TypeError) as exc:
            # A hand-edited or truncated card: say which file, not "unexpected keyword argument".
            raise ValueError(f"model card {path} is not valid: {exc}") from exc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a model card beside a weights file.")
    parser.add_argument("weights", type=Path)
    parser.add_argument("--reference", action="store_true",
                        help="the published DERMOSAN best_resnet152.h5 (alphabetical folder order, trained)")
    parser.add_argument("--labels", help="comma-separated class slugs in the file's output order")
    parser.add_argument("--version", default=None)
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.reference:
        labels, version = list(REFERENCE_LABEL_ORDER), args.version or "dermosan-resnet152"
    elif args.labels:
        labels, version = args.labels.split(","), args.version or args.weights.stem
    else:
        parser.error("give --reference or --labels")
    card = ModelCard(labels=labels, version=version, weights_sha256=file_sha256(args.weights),
                     trained=True, temperature=args.temperature)
    print(card.save(args.weights))


if __name__ == "__main__":
    main()
