"""Build a model with random weights and its card, marked untrained, for demos and tests."""
from __future__ import annotations

import argparse
from pathlib import Path

from triage.catalogue import REFERENCE_LABEL_ORDER

from .card import ModelCard, file_sha256
from .network import BACKBONES


def build_demo_model(out: Path, backbone: str = "resnet152", seed: int = 0,
                     labels: list[str] | tuple[str, ...] = REFERENCE_LABEL_ORDER) -> ModelCard:
    """A model with random weights whose card names `labels` (catalogue slugs), in that output order:
    by default the reference's ten, or e.g. a six-class PAD-UFES-20 set."""
    from .loader import configure_tensorflow

    configure_tensorflow()
    import keras

    from .network import build_model

    keras.utils.set_random_seed(seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = build_model(backbone, num_classes=len(labels))
    tmp = out.with_name(".building-" + out.name)
    model.save(tmp)
    tmp.replace(out)
    card = ModelCard(labels=list(labels), version=f"demo-{backbone}-untrained",
                     weights_sha256=file_sha256(out), trained=False, architecture=backbone,
                     preprocessing=BACKBONES[backbone].scaling, decoding="reduced",
                     notes="Random weights: outputs are meaningless. Built for demonstration and testing.")
    card.save(out)
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="weights file to write (.keras or .h5)")
    parser.add_argument("--backbone", choices=tuple(BACKBONES), default="resnet152")
    parser.add_argument("--labels", default=",".join(REFERENCE_LABEL_ORDER),
                        help="comma-separated class slugs in output order (default: the reference's ten)")
    args = parser.parse_args(argv)
    if args.out is None:
        from triage.settings import get_settings

        args.out = get_settings().model_path
    card = build_demo_model(args.out, args.backbone, labels=args.labels.split(","))
    print(f"wrote {args.out} ({card.model_version}, untrained)")


if __name__ == "__main__":
    main()
