"""Throughput benchmark: the model's limit, the reference app's way, and our pipeline end to end.

Run by hand, on a quiet machine (figures from a busy one say little):

    python -m scripts.benchmark                                  # ResNet152, random weights, 2,000 photos
    python -m scripts.benchmark --backbone tiny --images 20      # a quick check that everything runs
    python -m scripts.benchmark --model /models/best_resnet152.h5   # a real weights file with its card

Measured side by side in one run, on the same model:
 1. the limit: the compiled forward pass on preprocessed tensors, at its best batch size;
 2. the reference way: one `model.predict` call per image, as the reference app classifies;
 3. the pipeline: real JPEG files (0.5 to 4 megapixels) uploaded over HTTP, through Redis and the
    worker, until the last analysis is in the database.
Also latency from upload to stored result (idle, and under a steady load), the worker's memory,
where the time goes, and reduced precision against float32. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scripts.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", choices=("resnet152", "efficientnet-lite0", "tiny"), default="resnet152",
                   help="demo model to build (random weights) when --model is not given")
    p.add_argument("--model", type=Path, help="an existing weights file with its .card.json")
    p.add_argument("--images", type=int, default=2000, help="photos in the end-to-end throughput run")
    p.add_argument("--idle-samples", type=int, default=20, help="single uploads on an idle system")
    p.add_argument("--load-images", type=int, default=200, help="uploads in the steady-load run")
    p.add_argument("--load-share", type=float, default=0.7,
                   help="steady load as a share of the measured pipeline throughput")
    p.add_argument("--sample-images", type=int, default=32, help="photos for the in-process measurements")
    p.add_argument("--reference-images", type=int, default=48, help="images for the model.predict loop")
    p.add_argument("--min-images", type=int, default=64, help="images per batch size when finding the limit")
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32", help="batch sizes tried for the limit")
    p.add_argument("--limit-streams", default="1,2", help="forward passes at once tried for the limit")
    p.add_argument("--precisions", default=None,
                   help="reduced precisions compared with float32 (default: bfloat16, and mixed_float16 on a GPU)")
    p.add_argument("--files-per-request", type=int, default=20, help="files per upload request")
    p.add_argument("--uploaders", type=int, default=2, help="upload requests in flight at once")
    # The pipeline's own settings, defaulting to what the worker would use.
    p.add_argument("--batch-max-size", type=int, default=None)
    p.add_argument("--batch-max-wait-ms", type=int, default=None)
    p.add_argument("--decode-threads", type=int, default=None)
    p.add_argument("--prefetch", choices=("on", "off"), default=None)
    p.add_argument("--forward-lanes", type=int, default=None)
    p.add_argument("--network-threads", type=int, default=None,
                   help="threads per forward pass, in the worker and in this process's own measurements")
    p.add_argument("--precision", default="float32", help="the worker's precision in the pipeline runs")
    p.add_argument("--explanations", action="store_true", help="pipeline with Grad-CAM on (the targets assume off)")
    p.add_argument("--workdir", type=Path, default=ROOT / "var" / "benchmark",
                   help="models and photos are cached here; each run gets its own folder")
    p.add_argument("--json", type=Path, default=None, help="where to write the figures (default: in the run folder)")
    p.add_argument("--keep", action="store_true", help="keep the run's database and image store")
    args = p.parse_args(argv)
    # Batch 1 gives the latency target; the pipeline's own batch size shows what batching alone costs.
    args.batch_sizes = sorted({1, pipeline_batch(args), *(int(b) for b in args.batch_sizes.split(",") if b.strip())})
    args.limit_streams = sorted({1, *(int(n) for n in args.limit_streams.split(",") if n.strip())})
    return args


def pipeline_overrides(args) -> dict:
    """The worker settings given on the command line (the others are the worker's defaults)."""
    return {k: v for k, v in dict(
        batch_max_size=args.batch_max_size, batch_max_wait_ms=args.batch_max_wait_ms,
        decode_threads=args.decode_threads, forward_lanes=args.forward_lanes, network_threads=args.network_threads,
        prefetch=None if args.prefetch is None else args.prefetch == "on").items() if v is not None}


def network_threads(args) -> int:
    """Threads per forward pass as the pipeline's worker will set them, so the limit is measured alike."""
    from triage.settings import Settings
    from worker.runtime import threads_per_pass

    return threads_per_pass(Settings(**pipeline_overrides(args)))


def pipeline_batch(args) -> int:
    """The largest batch the pipeline's worker will run (its setting, unless given here)."""
    from triage.settings import Settings

    return args.batch_max_size or Settings().batch_max_size


def reduced_precisions(args, on_gpu: bool) -> list[str]:
    if args.precisions is not None:
        return [p for p in args.precisions.split(",") if p.strip()]
    return ["bfloat16", "mixed_float16"] if on_gpu else ["bfloat16"]

