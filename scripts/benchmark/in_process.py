"""The model measured inside this process, on preprocessed tensors: the limit (compiled forward pass),
the reference way (one model.predict per image), what Grad-CAM adds, and reduced precision."""
from __future__ import annotations

import gc
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scripts.benchmark.arguments import network_threads, pipeline_batch, reduced_precisions


def ensure_model(args) -> Path:
    """The weights file to measure: --model, or the demo model built once into the work folder."""
    if args.model is not None:
        return args.model
    path = args.workdir / "models" / f"demo_{args.backbone}.keras"
    if not path.exists() or not path.with_name(path.stem + ".card.json").exists():
        from model.demo import build_demo_model

        print(f"building the demo {args.backbone} model (random weights) in {path} ...", flush=True)
        build_demo_model(path, args.backbone)
    return path


def network_inputs(paths: list[Path], spec) -> np.ndarray:
    """The photographs as the worker feeds them to this model (its card's size and scaling)."""
    from triage.imaging import decode_rgb

    return np.stack([spec.tensor(decode_rgb(p.read_bytes())) for p in paths])


def tiled(tensors: np.ndarray, count: int) -> np.ndarray:
    reps = -(-count // len(tensors))
    return np.concatenate([tensors] * reps)[:count]


@dataclass
class Timed:
    images_per_s: float
    seconds: list[float]  # each call's wall time
    cpu_ms: float  # this process's CPU time per image, all threads


def rate(run, images_per_call: int, calls: int) -> Timed:
    """Images per second over `calls` calls after one untimed call (tracing, first-shape kernels).

    The CPU time per image comes with it: on a machine shared with other work the wall-clock rate
    drops, but the CPU an image costs barely moves, so it tells what the cores would allow."""
    run()
    seconds = []
    cpu = time.process_time()
    for _ in range(calls):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    cpu_ms = (time.process_time() - cpu) * 1000 / (images_per_call * calls)
    return Timed(images_per_call * calls / sum(seconds), seconds, cpu_ms)


def paired(runs: dict, images_per_call: dict | int, calls: dict | int) -> dict:
    """Each run timed in turn, call by call, after one untimed call each, so that a busy spell on a
    shared machine hits every run alike and the ratios between them stay fair. A Timed per run: images
    per second by its median call, and this process's CPU per image over its own calls (one run at a
    time). `images_per_call` and `calls`: one number for all, or one per run (a run with fewer calls
    drops out of the turns when they are done)."""
    per_call = images_per_call if isinstance(images_per_call, dict) else dict.fromkeys(runs, images_per_call)
    wanted = calls if isinstance(calls, dict) else dict.fromkeys(runs, calls)
    for run in runs.values():
        run()
    seconds: dict = {name: [] for name in runs}
    cpu: dict = dict.fromkeys(runs, 0.0)
    for turn in range(max(wanted.values())):
        for name, run in runs.items():
            if turn < wanted[name]:
                start, cpu_start = time.perf_counter(), time.process_time()
                run()
                seconds[name].append(time.perf_counter() - start)
                cpu[name] += time.process_time() - cpu_start
    return {name: Timed(per_call[name] / float(np.median(values)), values,
                        cpu[name] * 1000 / (per_call[name] * len(values))) for name, values in seconds.items()}


CONFIRMED = 3  # the sweep's fastest arrangements measured again, side by side
CONFIRM_S = 3.0  # ... each for about this long (at least three calls)


def measure_limit(classifier, tensors: np.ndarray, batch_sizes: list[int], min_images: int,
                  streams: list[int]) -> dict:
    """The fastest the network alone goes: every batch size, and each also as that many passes at once
    on as many threads (the worker runs forward_lanes passes side by side; the limit must include the
    best such arrangement, or the pipeline would be measured against less than the cores can do).

    The sweep gives each arrangement one short run (half a second for Lite0), and on a shared machine a
    run that short can land in a fast or a slow spell: the best of a dozen is partly the luckiest (the
    same Lite0 limit measured 110-137 images/s in ten runs of one morning, while the pipeline's own
    rate moved only within 63-67). So the sweep's three fastest are measured again, call by call in
    turn for about three seconds each, so that a spell hits all three alike, and the limit is the
    fastest of those by its median call; the sweep's best is kept beside it (`sweep_best`)."""
    timed: dict[tuple[int, int], Timed] = {}
    runs = {}
    with ThreadPoolExecutor(max(streams)) as pool:  # TensorFlow lets go of the GIL while it computes
        for size in batch_sizes:
            batch = tiled(tensors, size)
            for n in streams:
                def passes(n=n, batch=batch):
                    return list(pool.map(classifier.predict, [batch] * n)) if n > 1 else classifier.predict(batch)

                runs[size, n] = passes
                timed[size, n] = rate(passes, size * n, max(3, -(-min_images // (size * n))))
                print(f"  limit: batch {size} x {n} at once: {timed[size, n].images_per_s:.2f} images/s", flush=True)
        swept = max(timed, key=lambda key: timed[key].images_per_s)
        finalists = sorted(timed, key=lambda key: -timed[key].images_per_s)[:CONFIRMED]
        confirmed = paired({key: runs[key] for key in finalists}, {(size, n): size * n for size, n in finalists},
                           {(size, n): max(3, round(CONFIRM_S * timed[size, n].images_per_s / (size * n)))
                            for size, n in finalists})
    best = max(confirmed, key=lambda key: confirmed[key].images_per_s)
    print("  limit confirmed: " + ", ".join(f"{k[0]} x {k[1]}: {t.images_per_s:.2f}" for k, t in confirmed.items()),
          flush=True)
    single = {size: t for (size, n), t in timed.items() if n == 1}
    return {"images_per_s": confirmed[best].images_per_s, "best_batch": best[0], "best_streams": best[1],
            "cpu_ms": confirmed[best].cpu_ms,
            "sweep_best": {"images_per_s": timed[swept].images_per_s, "batch": swept[0], "streams": swept[1],
                           "cpu_ms": timed[swept].cpu_ms},
            "confirmed": {f"{size}x{n}": t.images_per_s for (size, n), t in confirmed.items()},
            "by_batch_size": {size: t.images_per_s for size, t in single.items()},
            "by_arrangement": {f"{size}x{n}": t.images_per_s for (size, n), t in timed.items()},
            "batch1_forward_ms": float(np.median(single[1].seconds) * 1000)}


def measure_reference(model, tensors: np.ndarray, count: int) -> dict:
    """The reference app's way: model.predict on one image at a time."""
    position = iter(range(count + 1))  # one more for the untimed first call, which builds predict's function

    def one() -> None:
        model.predict(tensors[next(position) % len(tensors)][None], verbose=0)

    timed = rate(one, 1, count)
    print(f"  reference: {timed.images_per_s:.2f} images/s", flush=True)
    return {"images_per_s": timed.images_per_s, "cpu_ms": timed.cpu_ms, "images": count}


def measure_explanation(classifier, tensors: np.ndarray, size: int) -> dict:
    """What Grad-CAM adds per image: its gradient-carrying pass and the PNG overlays, against a plain pass."""
    from model.gradcam import GradCam

    explainer = GradCam(classifier)
    batch = tiled(tensors, size)
    maps = explainer.scores_and_maps(batch)[1]
    speed = paired({"forward": lambda: classifier.predict(batch),
                    "gradient": lambda: explainer.scores_and_maps(batch),
                    "overlays": lambda: explainer.overlays(batch, maps)}, size, 5)
    forward, with_maps, overlays = (speed[name].images_per_s for name in ("forward", "gradient", "overlays"))
    extra = 1000 / with_maps - 1000 / forward + 1000 / overlays
    print(f"  explanation: Grad-CAM pass {1000 / with_maps:.1f} ms per image against the forward pass's "
          f"{1000 / forward:.1f} ms, overlays {1000 / overlays:.1f} ms", flush=True)
    return {"batch": size, "forward_ms": 1000 / forward, "gradient_pass_ms": 1000 / with_maps,
            "overlay_ms": 1000 / overlays, "extra_ms": extra}


def measure_precision(path: Path, reference, tensors: np.ndarray, size: int, precision: str) -> dict:
    """Speed of a reduced precision against float32 at the limit's batch size, and their agreement."""
    from model.loader import load_classifier

    reduced = load_classifier(path, precision)
    batch = tiled(tensors, size)
    speed = {name: timed.images_per_s for name, timed in paired(
        {"float32": lambda: reference.predict(batch), precision: lambda: reduced.predict(batch)}, size, 5).items()}
    want = np.concatenate([reference.predict(tensors[i:i + size]) for i in range(0, len(tensors), size)])
    got = np.concatenate([reduced.predict(tensors[i:i + size]) for i in range(0, len(tensors), size)])
    del reduced
    result = {"precision": precision, "images_per_s": speed[precision], "float32_images_per_s": speed["float32"],
              "speedup": speed[precision] / speed["float32"],
              "top1_identical": float((want.argmax(1) == got.argmax(1)).mean()),
              "max_probability_difference": float(np.abs(want - got).max()), "images": len(tensors)}
    print(f"  {precision}: {speed[precision]:.2f} images/s (float32 {speed['float32']:.2f})", flush=True)
    return result


def measure_model(path: Path, sample: list[Path], args) -> dict:
    """Everything measured inside this process, on preprocessed tensors: limit, reference, extras."""
    from model.loader import load_classifier

    classifier = load_classifier(path, threads_per_pass=network_threads(args))
    tensors = network_inputs(sample, classifier.input_spec)
    out = {"version": classifier.version, "architecture": classifier.card.architecture,
           "trained": classifier.trained, "on_gpu": classifier.on_gpu, "input_size": classifier.input_size}
    out["limit"] = measure_limit(classifier, tensors, args.batch_sizes, args.min_images, args.limit_streams)
    out["reference"] = measure_reference(classifier.model, tensors, args.reference_images)
    out["explanation"] = measure_explanation(classifier, tensors, pipeline_batch(args))
    out["precision"] = [measure_precision(path, classifier, tensors, out["limit"]["best_batch"], p)
                        for p in reduced_precisions(args, classifier.on_gpu)]
    del classifier
    release_tensorflow()
    return out


def release_tensorflow() -> None:
    # The pipeline's worker needs the cores and memory; this process keeps only idle threads.
    import keras

    keras.backend.clear_session()
    gc.collect()
