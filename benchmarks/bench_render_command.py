"""End-to-end speed of ``magicbokeh render`` as a user meets it: one whole process per run.

For each scene, the 12 MP command

    python -m magicbokeh render photo.png -o out.png --engine physical --depth d.npy \\
        --focus-disparity F --aperture 32

runs as a subprocess: wall time, CPU time (user + system) and peak RSS of the process. The
same command then runs under a small wrapper process that notes when each phase starts and
ends, giving the split: start-up (interpreter, imports, argument and output checks), decode
(reading the photo), depth (reading the depth file), engine, encode (image and sidecar), and
the rest. Scenes:

* ``friendly``: the photo-like scene of ``bench_physical.py`` (mostly in focus, focus 0.75);
* ``defocused``: ``bench_physical.py``'s textured photo whose disparity ramps from 0.2 to 0.8
  across the frame, with a subject at 0.95 in focus, so almost every pixel is strongly blurred
  (r = 5..24 px).

Also: ``magicbokeh --help`` and ``magicbokeh render --help``; the encode phase for PNG, JPEG
and TIFF outputs; and what the chosen PNG and TIFF settings cost in file size against the
previous ones (measured in-process on the rendered image).

``--baseline REV`` runs the same commands with the package as of git revision REV (exported
with ``git archive`` into a temporary folder and put first on ``PYTHONPATH``), interleaved with
the current runs so that both meet the same machine load. Wall times on a shared machine are
noisy: every row is the median of ``--runs`` runs, and the 1-minute load average is printed.

Usage (from the repository root): ``python benchmarks/bench_render_command.py [--runs N]
[--baseline REV] [--markdown OUT.md]``
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIZE = (3024, 4032)  # 12 MP, height x width
PHASES = ("start-up", "decode", "depth", "engine", "encode", "rest")
CORES = min(os.cpu_count() or 1, 2)  # the engine's worker threads (torch's default here)


# ------------------------------------------------------------------------------------ scenes
def scene_arrays(name: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray, float]:
    """A scene of ``bench_physical.py`` as arrays: (``H×W×3`` sRGB, ``H×W`` disparity, focus)."""
    sys.path.insert(0, str(HERE))
    from bench_physical import SCENES

    image, disparity, focus = SCENES[name](height, width)
    return image[0].permute(1, 2, 0).numpy(), disparity[0, 0].numpy(), focus


def write_scenes(folder: Path) -> dict[str, tuple[Path, Path, float]]:
    """Photo PNG (8-bit) and disparity .npy of each scene; name → (photo, depth, focus)."""
    import cv2

    scenes = {}
    for name in ("friendly", "defocused"):
        rgb, depth, focus = scene_arrays(name, *SIZE)
        photo, depth_file = folder / f"{name}.png", folder / f"{name}.npy"
        codes = np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
        cv2.imwrite(str(photo), np.ascontiguousarray(codes[..., ::-1]))
        np.save(depth_file, np.ascontiguousarray(depth, dtype=np.float32))
        scenes[name] = (photo, depth_file, focus)
    return scenes


# ---------------------------------------------------------------------------------- processes
def render_args(photo: Path, depth: Path, focus: float, out: Path) -> list[str]:
    return [
        "render",
        str(photo),
        "-o",
        str(out),
        "--engine",
        "physical",
        "--depth",
        str(depth),
        "--focus-disparity",
        f"{focus:g}",
        "--aperture",
        "32",
        "--overwrite",
        "-q",
    ]


def timed_process(command: list[str], env: dict, cwd: Path) -> dict:
    """Wall, CPU (user + system) and peak RSS of one process, taken from its own rusage.

    The process finds its start time (epoch seconds) in ``$BENCH_START``.
    """
    env = dict(env, BENCH_START=repr(time.time()))
    start = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    out, err = process.stdout.read(), process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{err.decode()}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_gb": usage.ru_maxrss / 2**20,
        "stdout": out.decode(),
    }


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Runs ``patches[name](module)`` right after module ``name`` is first imported, so the
    command under test imports everything in its own order (and its own threads)."""

    def __init__(self, patches: dict) -> None:
        self.patches = patches

    def find_spec(self, name: str, path: object, target: object = None) -> object:
        if name not in self.patches:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run_module, patch = spec.loader.exec_module, self.patches[name]

        def exec_module(module: object) -> None:
            run_module(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


def child_split(argv: list[str]) -> None:
    """Run the CLI in this process, noting when each phase starts and ends (epoch seconds).

    Phases: start-up (process start to the call of the API's ``render``), decode (reading the
    photo; the current command decodes while it imports, so this may overlap start-up),
    depth, engine, encode (image and sidecar), rest. CPU seconds are the process's.
    """
    t0 = float(os.environ["BENCH_START"])
    marks: dict[str, tuple[float, float, float]] = {}  # phase → (start, end, CPU seconds)

    def timed(phase: str, name: str) -> Callable:
        def patch(module: object) -> None:
            original = getattr(module, name)

            def wrapper(*args: object, **kwargs: object) -> object:
                start, cpu = time.time(), time.process_time()
                try:
                    return original(*args, **kwargs)
                finally:
                    marks[phase] = (start, time.time(), time.process_time() - cpu)

            setattr(module, name, wrapper)

        return patch

    patches = {
        "magicbokeh.io.images": timed("decode", "load_image"),
        "magicbokeh.depth.resolve": timed("depth", "load_depth"),
        "magicbokeh.api": lambda module: (
            timed("render", "render")(module),
            timed("engine", "render_physical")(module),
        ),
        "magicbokeh.commands.render": timed("encode", "write_outputs"),
    }
    sys.meta_path.insert(0, _PatchAfterImport(patches))
    try:  # what the command does first when run as a program (versions that have it)
        from magicbokeh.allocator import tune_allocator

        tune_allocator()
    except ImportError:
        pass
    from magicbokeh.cli import main

    code = main(argv)
    end, cpu = time.time(), time.process_time()
    render_start = marks["render"][0]
    phases = {"start-up": render_start - t0, "decode": marks["decode"][1] - marks["decode"][0]}
    waited = max(0.0, marks["decode"][1] - max(render_start, marks["decode"][0]))
    for phase in ("depth", "engine", "encode"):
        phases[phase] = marks[phase][1] - marks[phase][0]
    phases["total"] = end - t0
    phases["rest"] = phases["total"] - phases["start-up"] - waited
    phases["rest"] -= sum(phases[p] for p in ("depth", "engine", "encode"))
    phases["cpu"] = cpu
    phases["engine cpu"] = marks["engine"][2]
    print(json.dumps({"code": code, **phases}))


def export_revision(revision: str, folder: Path) -> Path:
    """``src/`` of the package at git ``revision`` unpacked under ``folder``; returns src/."""
    root = HERE.parent
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", "--format=tar", revision, "src"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder / "src"


# ------------------------------------------------------------------------------------ reports
def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine_line() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (
        f"{os.cpu_count()} CPUs ({cpu}), torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}"
    )


def load() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def encoder_costs(image_path: Path) -> list[str]:
    """Time and size of the chosen lossless encoders against the previous settings."""
    import tifffile
    from PIL import Image

    from magicbokeh.io.png import encode_threads, write_png

    codes = np.asarray(Image.open(image_path).convert("RGB"))
    settings = {
        "PNG, Pillow default (zlib level 6)": ("png", {"compress_level": 6}),
        "PNG, Pillow, zlib level 1, run-length strategy (before)": (
            "png",
            {"compress_level": 1, "compress_type": zlib.Z_RLE},
        ),
        f"PNG, write_png: Paeth, zlib 1 + run-length, {encode_threads()} threads (now)": (
            "write_png",
            {},
        ),
        "TIFF, zlib level 6 (before)": ("tif", {"compression": "zlib"}),
        "TIFF, zlib level 1 + horizontal predictor (now)": (
            "tif",
            {"compression": "zlib", "compressionargs": {"level": 1}, "predictor": True},
        ),
        "JPEG, quality 95, 4:4:4 (unchanged)": ("jpg", {"quality": 95, "subsampling": 0}),
    }
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, (kind, options) in settings.items():
            walls, cpus, size = [], [], 0
            for _ in range(3):
                buffer = io.BytesIO()
                start, cpu = time.perf_counter(), time.process_time()
                if kind == "tif":
                    tifffile.imwrite(buffer, codes, photometric="rgb", **options)
                elif kind == "write_png":
                    write_png(Path(folder) / "out.png", codes)
                else:
                    Image.fromarray(codes).save(
                        buffer, format="PNG" if kind == "png" else "JPEG", **options
                    )
                walls.append(time.perf_counter() - start)
                cpus.append(time.process_time() - cpu)
                written = Path(folder) / "out.png"
                size = written.stat().st_size if kind == "write_png" else buffer.tell()
            rows.append(f"| {label} | {min(walls):.2f} | {min(cpus):.2f} | {size / 1e6:.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per row (median reported)")
    parser.add_argument("--baseline", metavar="REV", help="also run the package at git REV")
    parser.add_argument("--markdown", type=Path, help="write the report to this file")
    parser.add_argument("--quick", action="store_true", help="1 MP scenes, one run: a smoke test")
    parser.add_argument("--child-split", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_split:
        child_split(args.child_split)
        return

    global SIZE
    if args.quick:
        SIZE, args.runs = (864, 1152), 1
    work = Path(tempfile.mkdtemp(prefix="bench-render-"))
    versions = {"now": None}
    if args.baseline:
        versions[f"baseline {args.baseline}"] = export_revision(args.baseline, work / "baseline")
    envs = {}
    for name, src in versions.items():
        env = dict(os.environ)
        if src is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).strip(
                os.pathsep
            )
        envs[name] = env
    print("writing the scenes ...", flush=True)
    scenes = write_scenes(work)
    lines = [
        f"Machine: {machine_line()}.",
        f"Load average (1/5/15 min) at the start: {load()}.",
        "",
    ]

    # --help
    lines += ["## Start-up: help", "", "| command | version | median wall s |", "|---|---|---|"]
    for words in (["--help"], ["render", "--help"]):
        for name, env in envs.items():
            walls = [
                timed_process([sys.executable, "-m", "magicbokeh", *words], env, work)["wall"]
                for _ in range(args.runs)
            ]
            lines.append(f"| `magicbokeh {' '.join(words)}` | {name} | {median(walls):.2f} |")
            print(lines[-1], flush=True)

    # whole command and split, interleaved over versions
    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    loads: dict[str, list[float]] = {}
    for scene, (photo, depth, focus) in scenes.items():
        for _ in range(args.runs):
            for name, env in envs.items():
                out = work / f"out-{scene}.png"
                cli = render_args(photo, depth, focus, out)
                row = results.setdefault((scene, name), {})
                loads.setdefault(scene, []).append(os.getloadavg()[0])
                plain = timed_process([sys.executable, "-m", "magicbokeh", *cli], env, work)
                for key in ("wall", "cpu", "rss_gb"):
                    row.setdefault(key, []).append(plain[key])
                split_cmd = [sys.executable, __file__, "--child-split", *cli]
                split = json.loads(timed_process(split_cmd, env, work)["stdout"].splitlines()[-1])
                for phase in PHASES:
                    row.setdefault(phase, []).append(split[phase])
                engine_cpu = split["engine cpu"]
                row.setdefault("estimate", []).append(
                    split["cpu"] - engine_cpu + engine_cpu / CORES
                )
        print(f"{scene}: done (load {load()})", flush=True)
    lines += [
        "",
        f"## The whole command, {SIZE[1]}×{SIZE[0]} PNG in and out, K = 32",
        "",
        "Median of the runs; wall/CPU/RSS from plain runs, the split from wrapped runs.",
        "",
        "| scene | version | wall s | CPU s | peak RSS GB | "
        + " | ".join(PHASES)
        + " | load (1 min) |",
        "|---|---|---|---|---|" + "---|" * len(PHASES) + "---|",
    ]
    for (scene, name), row in results.items():
        phases = " | ".join(f"{median(row[p]):.2f}" for p in PHASES)
        lines.append(
            f"| {scene} | {name} | {median(row['wall']):.2f} | {median(row['cpu']):.2f} | "
            f"{median(row['rss_gb']):.2f} | {phases} | {median(loads[scene]):.1f} |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "Decode runs beside start-up in the current version (the photo is decoded while torch",
        "and the engines load), so there the phases overlap; `rest` is what is left of the wall",
        "time after start-up, the part of decoding not hidden behind it, depth, engine and",
        "encode. Wall time on an idle machine, estimated from the wrapped runs' CPU seconds:",
        f"everything but the engine on one core, the engine on {CORES} (process CPU minus engine",
        f"CPU, plus engine CPU / {CORES}; overlap not credited). Not given for a baseline whose",
        "engine splits each small op across torch's threads: on a busy machine those threads",
        "spin while they wait for each other, and their CPU seconds say nothing about an idle",
        "machine.",
        "",
        "| scene | version | estimated idle wall s |",
        "|---|---|---|",
    ]
    for (scene, name), row in results.items():
        if name == "now":
            lines.append(f"| {scene} | {name} | {median(row['estimate']):.2f} |")
            print(lines[-1], flush=True)

    # output formats
    photo, depth, focus = scenes["defocused"]
    lines += [
        "",
        "## Output formats (defocused scene, current version)",
        "",
        "| output | wall s | encode s | file MB |",
        "|---|---|---|---|",
    ]
    for suffix in (".png", ".jpg", ".tif"):
        out = work / f"format{suffix}"
        walls, encodes = [], []
        for _ in range(args.runs):
            cli = render_args(photo, depth, focus, out)
            walls.append(
                timed_process([sys.executable, "-m", "magicbokeh", *cli], envs["now"], work)["wall"]
            )
            split_cmd = [sys.executable, __file__, "--child-split", *cli]
            split = json.loads(
                timed_process(split_cmd, envs["now"], work)["stdout"].splitlines()[-1]
            )
            encodes.append(split["encode"])
        lines.append(
            f"| {suffix[1:].upper()} | {median(walls):.2f} | {median(encodes):.2f} | "
            f"{out.stat().st_size / 1e6:.1f} |"
        )
        print(lines[-1], flush=True)

    lines += [
        "",
        "## Lossless encoder settings (rendered defocused image, in-process, best of 3)",
        "",
        "| encoder | wall s | CPU s | file MB |",
        "|---|---|---|---|",
        *encoder_costs(work / "out-defocused.png"),
        "",
        f"Load average at the end: {load()}.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.markdown:
        args.markdown.write_text(report)


if __name__ == "__main__":
    main()
