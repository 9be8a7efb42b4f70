"""Throughput benchmark: the model's limit, the reference app's way, and our pipeline end to end.

Run by hand with `python -m scripts.benchmark` (`--help` for the usage and what is measured; that text is
arguments.py's docstring). Modules: arguments (command line, the pipeline's settings), photos (the
generated photographs), in_process (the model measured in this process), system (Redis, web, worker),
runs (the pipeline runs), report (targets and the printed table); `main` here ties them together.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from scripts.benchmark.arguments import network_threads, parse_args
from scripts.benchmark.in_process import ensure_model, measure_model
from scripts.benchmark.photos import MAX_MEGAPIXELS, MIN_MEGAPIXELS, SCENES, PhotoSet, photo_bytes, scene_size
from scripts.benchmark.report import machine_info, render, targets
from scripts.benchmark.runs import measure_pipeline

__all__ = ["MAX_MEGAPIXELS", "MIN_MEGAPIXELS", "SCENES", "PhotoSet", "main", "photo_bytes", "scene_size"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = {"machine": machine_info()}
    from model.loader import configure_tensorflow

    configure_tensorflow(network_threads(args))  # before anything runs: TensorFlow takes it only then
    model_path = ensure_model(args)
    photos = PhotoSet(args.workdir / "photos")
    total = args.images + args.idle_samples + args.load_images
    print(f"generating {total} photos (0.5-4 MP, cached in {photos.folder}) ...", flush=True)
    photos.paths(0, total)
    print("measuring the model in this process ...", flush=True)
    result["model"] = measure_model(model_path, photos.paths(0, args.sample_images), args)
    result["pipeline"] = measure_pipeline(model_path, photos, args)
    result["machine"]["load_average_end"] = os.getloadavg()[0]
    result["targets"] = targets(result)
    print()
    print(render(result))
    out = args.json or Path(result["pipeline"]["run_dir"]) / "benchmark.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"\nfigures written to {out}")
    return 0
