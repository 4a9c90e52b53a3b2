"""Multi-Bird render throughput: the renderer and the Beam job against a plain per-image loop.

    python -m benchmarks.multibird_render [--seconds S] [--job_images N]

Cases, each in its own subprocess so that its peak resident memory is its own:

- `loop`: the baseline, a plain single-process loop that applies the same rules one image at a
  time. For Hard it draws the 192x192 checkerboard for every image,
  rotates it with `skimage.transform.rotate` (bilinear) and crops the centre;
- `renderer`: `multibird.SceneRenderer.render`, which computes the rotated checkerboard only at
  the 48x48 output pixels;
- `job-1`, `job-2`: the whole `split-data multidigit` job (render, PNG, serialize, shard,
  manifest) on the FnApiRunner with 1 and 2 worker processes (multi_processing), timed from
  launch to manifest.

Sprites are the embedded digit sprites (Multi-Digit): speed does not depend on what the sprites
show, and CUB needs a download. The loop's and the renderer's images are compared on the first
images: the benchmark stops if they differ by more than 1 (uint8 rounding of the same value).

The loop and the renderer render for a fixed time in one process. A job renders a fixed number
of images, and its rows leave out its start-up, measured as a job of no images. Images per
CPU-second (user and system time of the case's process and, for a job, its worker processes)
is the per-core rate, which other load on the machine disturbs less than wall time. Peak memory
is the case's maximum resident set size, plus the largest of its worker processes' for a job.
Growth is the peak's rise after the first 100 images (loop, renderer) or over the start-up job
(jobs): how memory grows with the number of images.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from preprocessing import multibird

CASES = ("loop", "renderer", "job-1", "job-2")
VARIANTS = multibird.VARIANTS
CHECK_IMAGES = 50
RENDER_CHUNK = 100


def naive_background(layout: multibird.Layout) -> np.ndarray:
    """Draw the background the plain way: a solid fill, or rotate a full 192x192 board."""
    from skimage import transform

    if layout.colours.shape[0] == 1:
        return np.full(multibird.IMAGE_SHAPE, layout.colours[0], np.uint8)
    size, cell = multibird.CHECKERBOARD_SIZE, multibird.CELL_SIZE
    cells = np.arange(size) // cell
    board = layout.colours[(cells[:, None] + cells[None, :]) % 2].astype(np.float64) / 255
    rotated = transform.rotate(board, layout.angle, order=1)
    start = (size - multibird.CANVAS_SIZE) // 2
    crop = rotated[start:start + multibird.CANVAS_SIZE, start:start + multibird.CANVAS_SIZE]
    return np.rint(crop * 255).astype(np.uint8)


def naive_render(renderer: multibird.SceneRenderer, sprites: np.ndarray, opaque: np.ndarray,
                 index: int) -> tuple[np.ndarray, int]:
    layout = renderer.layout(index)
    canvas = naive_background(layout)
    multibird.paste_sprites(canvas, layout, sprites, opaque)
    return canvas, layout.count


def _peak_memory_mb(include_children: bool) -> float:
    # ru_maxrss is in KiB on Linux.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if include_children:
        peak += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak / 1024


def _cpu_seconds(include_children: bool) -> float:
    """Return the user and system CPU time of this process, and of its finished children if asked."""
    who = [resource.RUSAGE_SELF] + ([resource.RUSAGE_CHILDREN] if include_children else [])
    return sum(resource.getrusage(target).ru_utime + resource.getrusage(target).ru_stime for target in who)


def _time_renders(render, seconds: float) -> dict:
    """Render images 0, 1, ... in chunks until `seconds` have passed; return the measurements."""
    images = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    peak_after_first_chunk = None
    while time.perf_counter() - start < seconds:
        for index in range(images, images + RENDER_CHUNK):
            render(index)
        images += RENDER_CHUNK
        if peak_after_first_chunk is None:
            peak_after_first_chunk = _peak_memory_mb(False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _peak_memory_mb(False)
    return {"images": images, "wall": wall, "cpu": cpu, "peak_mb": peak, "growth_mb": peak - peak_after_first_chunk}


def _run_case(case: str, variant: str, amount: float) -> dict:
    """Run one case in this process: `amount` is seconds for the loop and renderer, images for a job."""
    if case in ("loop", "renderer"):
        sprites = multibird.DigitSprites(seed=0).load("train")
        renderer = multibird.SceneRenderer(0, "train", variant, sprites)
        opaque = multibird.opaque_pixels(sprites)
        for index in range(CHECK_IMAGES):
            difference = np.abs(naive_render(renderer, sprites, opaque, index)[0].astype(int)
                                - renderer.render(index)[0].astype(int)).max()
            if difference > 1:
                raise SystemExit(f"image {index}: the loop and the renderer differ by {difference}")
        if case == "loop":
            return _time_renders(lambda index: naive_render(renderer, sprites, opaque, index), amount)
        return _time_renders(renderer.render, amount)

    from preprocessing import cli

    images = int(amount)
    workers = case.split("-")[1]
    with tempfile.TemporaryDirectory() as output:
        argv = ["multidigit", "--variant", variant, "--output", output, "--num_shards", "4",
                "--train_size", str(images), "--test_size", "0", "--unseen_size", "0",
                "--runner", "FnApiRunner", "--direct_num_workers", workers,
                "--direct_running_mode", "multi_processing"]
        start = time.perf_counter()
        status = cli.main(argv)
        wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"split-data {' '.join(argv)} failed with status {status}")
    # The whole child process counts: imports and start-up are measured by the job of no images.
    return {"images": images, "wall": wall, "cpu": _cpu_seconds(True), "peak_mb": _peak_memory_mb(True)}


def _measure(case: str, variant: str, amount: float) -> dict:
    command = [sys.executable, "-m", "benchmarks.multibird_render", "--case", case, "--variant", variant,
               "--amount", str(amount)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _net(result: dict, startup: dict | None) -> dict:
    """Return a job's measurements less those of its start-up, or the measurements unchanged."""
    if startup is None:
        return result
    return {**result, "wall": result["wall"] - startup["wall"], "cpu": result["cpu"] - startup["cpu"],
            "growth_mb": result["peak_mb"] - startup["peak_mb"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="seconds of rendering per variant for the loop and for the renderer")
    parser.add_argument("--job_images", type=int, default=40000, help="training images per Beam job")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--amount", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.case:  # A child process: one measurement, printed as JSON on the last line.
        print(json.dumps(_run_case(args.case, args.variant, args.amount)))
        return 0

    startup = {case: _measure(case, "easy", 0) for case in ("job-1", "job-2")}
    amounts = {"loop": args.seconds, "renderer": args.seconds, "job-1": args.job_images, "job-2": args.job_images}
    print(f"Multi-Bird render benchmark, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    print()
    print("| variant | case | images | wall s | CPU s | images/s | images/CPU-s | vs loop (CPU) | peak MB | growth MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case, result in startup.items():
        print(f"| - | {case} start-up | 0 | {result['wall']:.1f} | {result['cpu']:.1f} | | | |"
              f" {result['peak_mb']:.0f} | |")
    for variant in VARIANTS:
        results = {case: _net(_measure(case, variant, amount), startup.get(case)) for case, amount in amounts.items()}
        loop_rate = results["loop"]["images"] / results["loop"]["cpu"]
        for case, result in results.items():
            wall_rate, cpu_rate = result["images"] / result["wall"], result["images"] / result["cpu"]
            print(f"| {variant} | {case} | {result['images']} | {result['wall']:.1f} | {result['cpu']:.1f} |"
                  f" {wall_rate:,.0f} | {cpu_rate:,.0f} | {cpu_rate / loop_rate:.1f}x | {result['peak_mb']:.0f} |"
                  f" {result['growth_mb']:.0f} |")
        scaling = results["job-1"]["wall"] / results["job-2"]["wall"]
        print(f"| {variant} | job-2 / job-1 | | | | {scaling:.2f}x | | | | |")
    print()
    print(f"Load average {os.getloadavg()[0]:.1f} at the end. Job rows are net of the start-up rows.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
