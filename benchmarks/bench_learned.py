"""Speed and memory benchmark of the learned engine at full Stable Diffusion 2.1-base size.

All networks have random weights built from the SD2.1-base configs below (nothing is downloaded):
the speed of a network does not depend on its weight values. Reports, per 512×512 tile:

* the time of each part of :class:`~magicbokeh.model.network.MagicBokehNetwork` (VAE encode,
  defocus embedding + ControlNet, UNet, VAE decode), of one whole network forward and of the
  whole :class:`~magicbokeh.pipeline.MagicBokehPipeline` call on a 512×512 image (one tile);
  peak memory during inference (process RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU);
* float32 against bfloat16: time and the difference of the decoded tile;
* the "glue overhead": the pipeline's time per tile against the sum of stock diffusers parts
  measured in the same run, (a) the stock SD2.1 UNet2DConditionModel (mid block, cross-attention
  on a dummy 77×1024 text embedding) with a stock ControlNetModel, and (b) the pruned UNet and
  ControlNet of this package with diffusers' plain attention processors and no LoRA; both with a
  stock AutoencoderKL;
* the focus-mask attention processor against diffusers' ``AttnProcessor2_0`` on the UNet's
  attention layer sizes, in isolation;
* the pipeline's own work (defocus, cropping, blending, colour fix) on a 12 MP photo with a
  stand-in network, the tile counts of a 4032×3024 photo in released and fast tiling, and the
  implied time per 12 MP photo.

Each configuration runs in a fresh subprocess; peak RSS is the process's VmHWM, reset after the
models are built (``/proc/self/clear_refs``), so it is weights + activations of inference.

Usage::

    python benchmarks/bench_learned.py [--markdown docs/benchmarks_learned.md]
    python benchmarks/bench_learned.py --device cuda --dtype bf16 --markdown OUT.md

``--dtype`` (fp32 or bf16) is the precision of the stock-part comparison and of the attention
test. The learned network always runs in float32 and in bfloat16, each as built (peft LoRA
layers) and with the SR LoRA merged into the base weights (``MagicBokehNetwork.merge_sr_lora``).
``--markdown`` replaces the block between the ``<!-- results:start -->`` and
``<!-- results:end -->`` markers of the file (created if absent).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_physical import add_texture  # noqa: E402

TILE = 512
PHOTO = (3024, 4032)
FOCUS = 0.75
APERTURE = 16.0
SEED = 0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": DOWN,
    "up_block_types": UP,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20, 20),
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
}
CONTROLNET = {
    "in_channels": 4,
    "down_block_types": DOWN,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20, 20),
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "conditioning_embedding_out_channels": (16, 32, 96, 256),
}
VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
}
VARIANTS = ("fp32", "bf16", "fp32+merged", "bf16+merged")
"""Learned-network runs: dtype, and "+merged" for the SR LoRA folded into the base weights."""
ATTENTION_LAYERS = ((320, 5, 64), (640, 10, 32), (1280, 20, 16))
"""(channels, heads, latent side) of the up blocks' self-attention layers at a 512 tile."""


# ------------------------------------------------------------------------------ measurements
class Meter:
    """Wall-clock timing and peak memory on one device (synchronising CUDA around each mark)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def reset_peak(self) -> None:
        """Start a new peak-memory window (CUDA allocator stats, or the process's VmHWM)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            pass

    def peak_gb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return _proc_status_gb("VmHWM")


def _proc_status_gb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _weights_gb(*modules: torch.nn.Module) -> float:
    total = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
    return total / 2**30


def _median_parts(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def make_tile(height: int, width: int, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic scene: (image 1×3×H×W sRGB in [0, 1], disparity 1×1×H×W in [0, 1]).

    A textured background on a disparity ramp and an elliptic subject at disparity ``FOCUS``,
    so the focus mask has both in-focus and out-of-focus tokens.
    """
    gen = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0.0, 1.0, height)[:, None]
    xs = torch.linspace(0.0, 1.0, width)[None, :]
    image = torch.stack([0.3 + 0.3 * xs * ys, 0.3 + 0.2 * ys + 0 * xs, 0.5 - 0.2 * ys + 0 * xs])
    image = add_texture(image, gen, 0.15)
    disparity = (0.1 + 0.5 * ys**2).expand(height, width).clone()
    subject = ((((ys - 0.55) / 0.3) ** 2 + ((xs - 0.45) / 0.2) ** 2) < 1).float()
    image = image * (1 - subject) + subject * torch.tensor([0.8, 0.4, 0.3])[:, None, None]
    disparity = disparity * (1 - subject) + FOCUS * subject
    return image.clamp(0, 1)[None], disparity[None, None].contiguous()


# -------------------------------------------------------------------------------- networks
def build_network(seed: int = SEED) -> Any:
    """The full-size MagicBokehNetwork (float32, CPU) with random weights and the released
    LoRA recipe; LoRA up-projections and ControlNet zero convolutions get small random values so
    that every branch contributes to the output."""
    from diffusers import AutoencoderKL

    from magicbokeh.model.lora import unet_lora_target_recipe, vae_lora_target_recipe
    from magicbokeh.model.network import MagicBokehNetwork
    from magicbokeh.model.unet import MagicBokehUNet

    with torch.device("meta"):
        encoder, decoder = unet_lora_target_recipe(MagicBokehUNet(**UNET))
        vae_targets = vae_lora_target_recipe(AutoencoderKL.from_config(VAE))
    torch.manual_seed(seed)
    net = MagicBokehNetwork(
        unet_config=UNET,
        controlnet_config=CONTROLNET,
        vae_config=VAE,
        scheduler_config=SCHEDULER,
        rank_unet=4,
        rank_vae=4,
        rank_bokeh=8,
        unet_lora_encoder_modules=encoder,
        unet_lora_decoder_modules=decoder,
        vae_lora_encoder_modules=vae_targets,
    ).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if "lora_B" in name or name.endswith("_lora.1.weight") or "controlnet_down" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.01)
    return net


def _timed_method(obj: Any, name: str, meter: Meter, record: dict[str, float]) -> None:
    """Replace ``obj.name`` by a wrapper adding its wall time to ``record[name]``."""
    method = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = meter.now()
        out = method(*args, **kwargs)
        record[name] = record.get(name, 0.0) + meter.now() - start
        return out

    setattr(obj, name, wrapper)


def _timed_module(
    module: torch.nn.Module, key: str, meter: Meter, record: dict[str, float], keep: dict
) -> None:
    """Forward hooks adding the module's wall time to ``record[key]``; keeps its last output."""
    starts: list[float] = []
    module.register_forward_pre_hook(lambda *_: starts.append(meter.now()))

    def done(_module: torch.nn.Module, _args: Any, output: Any) -> None:
        record[key] = record.get(key, 0.0) + meter.now() - starts.pop()
        keep[key] = output

    module.register_forward_hook(done)


def worker_learned(args: argparse.Namespace) -> dict:
    """Time the MagicBokehPipeline on one 512 tile, with every network part timed inside it."""
    from magicbokeh.pipeline import MagicBokehPipeline

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    meter = Meter(device)
    start = time.perf_counter()
    net = build_network()
    merged = net.merge_sr_lora() if args.merge_lora else 0
    pipe = MagicBokehPipeline(net).to(device=device, dtype=dtype)
    build_s = time.perf_counter() - start
    record: dict[str, float] = {}
    keep: dict[str, Any] = {}
    for name in ("encode", "embed_defocus", "decode"):
        _timed_method(net, name, meter, record)
    _timed_module(net.controlnet, "controlnet", meter, record, keep)
    _timed_module(net.unet, "unet", meter, record, keep)
    _timed_module(net, "network", meter, record, keep)
    image, disparity = make_tile(TILE, TILE)
    meter.reset_peak()
    runs = []
    with torch.inference_mode():
        for i in range(args.warmup + args.repeats):
            record.clear()
            begin = meter.now()
            pipe(image, disparity, FOCUS, aperture=APERTURE, mode="fast", progress=False)
            total = meter.now() - begin
            if i >= args.warmup:
                runs.append({**record, "pipeline": total})
    parts = _median_parts(runs)
    parts["controlnet"] += parts.pop("embed_defocus")
    if args.save_output:
        torch.save(keep["network"].float().cpu(), args.save_output)
    return {
        "device": str(device),
        "dtype": args.dtype,
        "merged_lora_layers": merged,
        "build_s": build_s,
        "times": parts,
        "runs": runs,
        "weights_gb": _weights_gb(net),
        "peak_gb": meter.peak_gb(),
    }


def _stock_inputs(device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    image, disparity = make_tile(TILE, TILE)
    defocus = (disparity - FOCUS).abs() * (APERTURE / 32) * 2 - 1
    return {
        "image": (image * 2 - 1).to(device, dtype),
        "cond": defocus.repeat(1, 3, 1, 1).to(device, dtype),
        "text": torch.randn(1, 77, 1024, generator=torch.Generator().manual_seed(SEED)).to(
            device, dtype
        ),
        "t": torch.full((1,), 999, dtype=torch.long, device=device),
    }


def _time_passes(
    parts: list[tuple[str, Callable[[dict], Any]]], meter: Meter, warmup: int, repeats: int
) -> list[dict[str, float]]:
    """Run the parts in order ``warmup + repeats`` times; each part reads/writes a shared dict."""
    runs = []
    for i in range(warmup + repeats):
        state: dict[str, Any] = {}
        times = {}
        for name, step in parts:
            begin = meter.now()
            step(state)
            times[name] = meter.now() - begin
        if i >= warmup:
            runs.append(times)
    return runs


def worker_stock(args: argparse.Namespace) -> dict:
    """Stock diffusers SD2.1 parts: VAE encode/decode, ControlNetModel, UNet2DConditionModel."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    meter = Meter(device)
    torch.manual_seed(SEED)
    start = time.perf_counter()
    vae = AutoencoderKL.from_config(VAE).eval()
    unet = UNet2DConditionModel(**UNET).eval()
    controlnet = ControlNetModel(**CONTROLNET).eval()
    for module in (vae, unet, controlnet):
        torch.nn.Module.to(module, device=device, dtype=dtype)
    build_s = time.perf_counter() - start
    x = _stock_inputs(device, dtype)
    sf = VAE["scaling_factor"]

    def encode(s: dict) -> None:
        s["z"] = vae.encode(x["image"]).latent_dist.mode() * sf

    def run_controlnet(s: dict) -> None:
        s["down"], s["mid"] = controlnet(
            s["z"], x["t"], x["text"], controlnet_cond=x["cond"], return_dict=False
        )

    def run_unet(s: dict) -> None:
        s["eps"] = unet(
            s["z"],
            x["t"],
            x["text"],
            down_block_additional_residuals=s["down"],
            mid_block_additional_residual=s["mid"],
            return_dict=False,
        )[0]

    def decode(s: dict) -> None:
        s["out"] = vae.decode(s["eps"] / sf).sample

    meter.reset_peak()
    with torch.inference_mode():
        runs = _time_passes(
            [("encode", encode), ("controlnet", run_controlnet), ("unet", run_unet)]
            + [("decode", decode)],
            meter,
            args.warmup,
            args.repeats,
        )
    return {
        "device": str(device),
        "dtype": args.dtype,
        "build_s": build_s,
        "times": _median_parts(runs),
        "runs": runs,
        "weights_gb": _weights_gb(vae, unet, controlnet),
        "peak_gb": meter.peak_gb(),
        "processors": sorted({type(p).__name__ for p in unet.attn_processors.values()}),
    }


def worker_pruned(args: argparse.Namespace) -> dict:
    """The pruned UNet and ControlNet of this package, no LoRA, diffusers' plain processors."""
    from diffusers.models.attention_processor import Attention

    from magicbokeh.model.controlnet import MagicBokehControlNet
    from magicbokeh.model.unet import MagicBokehUNet

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    meter = Meter(device)
    torch.manual_seed(SEED)
    start = time.perf_counter()
    unet = MagicBokehUNet(**UNET).eval()
    controlnet = MagicBokehControlNet(**CONTROLNET).eval()
    for module in (unet, controlnet):
        torch.nn.Module.to(module, device=device, dtype=dtype)
    build_s = time.perf_counter() - start
    x = _stock_inputs(device, dtype)
    z = torch.randn(1, 4, TILE // 8, TILE // 8, generator=torch.Generator().manual_seed(SEED))
    z = z.to(device, dtype)

    def run_controlnet(s: dict) -> None:
        s["res"] = controlnet(z, x["t"], controlnet.embed_condition(x["cond"]))

    def run_unet(s: dict) -> None:
        s["eps"] = unet(z, x["t"], down_block_additional_residuals=s["res"], focus_mask=None)

    meter.reset_peak()
    with torch.inference_mode():
        runs = _time_passes(
            [("controlnet", run_controlnet), ("unet", run_unet)], meter, args.warmup, args.repeats
        )
    processors = {type(m.processor).__name__ for m in unet.modules() if isinstance(m, Attention)}
    return {
        "device": str(device),
        "dtype": args.dtype,
        "build_s": build_s,
        "times": _median_parts(runs),
        "runs": runs,
        "weights_gb": _weights_gb(unet, controlnet),
        "peak_gb": meter.peak_gb(),
        "processors": sorted(processors),
    }


def worker_attention(args: argparse.Namespace) -> dict:
    """FocusMaskAttnProcessor (with and without mask) vs AttnProcessor2_0, one layer at a time."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from magicbokeh.model.mask_attention import FocusMaskAttnProcessor
    from magicbokeh.model.unet import focus_attention_bias

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    meter = Meter(device)
    _, disparity = make_tile(TILE, TILE)
    in_focus = (disparity - FOCUS).abs() * (APERTURE / 32) <= 0.1
    repeats = max(5, 2 * args.repeats + 1)
    rows = []
    torch.manual_seed(SEED)
    for channels, heads, side in ATTENTION_LAYERS:
        layer = Attention(channels, heads=heads, dim_head=channels // heads, out_bias=True).eval()
        torch.nn.Module.to(layer, device=device, dtype=dtype)
        tokens = torch.randn(1, side * side, channels, device=device, dtype=dtype)
        focus = FocusMaskAttnProcessor(channels, rank=8).to(device=device, dtype=dtype)
        with torch.no_grad():
            for pair in (focus.to_q_lora, focus.to_k_lora, focus.to_v_lora, focus.to_out_lora):
                pair[1].weight.normal_(0, 0.01)
        mask = in_focus.to(device)
        cases: dict[str, Callable[[], Any]] = {
            "plain": lambda layer=layer, t=tokens: AttnProcessor2_0()(layer, t),
            "focus_no_mask": lambda layer=layer, t=tokens, p=focus: p(layer, t),
            "focus_bias_build": lambda m=mask, s=side: focus_attention_bias(m, (s, s), dtype),
            "focus_masked": lambda layer=layer, t=tokens, p=focus, m=mask, s=side: p(
                layer, t, focus_bias=focus_attention_bias(m, (s, s), dtype)
            ),
        }
        times = {}
        with torch.inference_mode():
            for name, call in cases.items():
                samples = []
                for i in range(repeats + 2):
                    begin = meter.now()
                    call()
                    if i >= 2:
                        samples.append(meter.now() - begin)
                times[name] = statistics.median(samples)
        rows.append({"channels": channels, "heads": heads, "tokens": side * side, **times})
    return {"device": str(device), "dtype": args.dtype, "layers": rows}


class _StandInNetwork(torch.nn.Module):
    """Returns its input tile: lets the pipeline's own work be timed without the network."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1, device=device))

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    def forward(self, image: torch.Tensor, defocus: torch.Tensor, focus_mask: Any) -> torch.Tensor:
        return image.clone()


def worker_glue(args: argparse.Namespace) -> dict:
    """The pipeline's own work on a 12 MP photo (stand-in network), released and fast modes."""
    from magicbokeh.pipeline import MagicBokehPipeline

    device = torch.device(args.device)
    meter = Meter(device)
    pipe = MagicBokehPipeline(_StandInNetwork(device))  # type: ignore[arg-type]
    image, disparity = make_tile(*PHOTO)
    out = {}
    with torch.inference_mode():
        for mode in ("released", "fast"):
            samples, tiles = [], 0
            for i in range(args.repeats + 1):
                begin = meter.now()
                result = pipe(image, disparity, FOCUS, aperture=APERTURE, mode=mode, progress=False)
                if i:
                    samples.append(meter.now() - begin)
                tiles = result.tile_count
            out[mode] = {"seconds": statistics.median(samples), "tiles": tiles}
    return {"device": str(device), "glue": out}


WORKERS = {
    "learned": worker_learned,
    "stock": worker_stock,
    "pruned": worker_pruned,
    "attention": worker_attention,
    "glue": worker_glue,
}


# ---------------------------------------------------------------------------- orchestration
def _run_worker(args: argparse.Namespace, name: str, dtype: str, *extra: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--dtype", dtype]
    cmd += ["--device", args.device, "--threads", str(args.threads)]
    cmd += ["--warmup", str(args.warmup), "--repeats", str(args.repeats), *extra]
    print(f"[bench_learned] {name} {dtype} ...", file=sys.stderr, flush=True)
    begin = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"worker {name} {dtype} failed")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    result["wall_s"] = time.perf_counter() - begin
    print(f"[bench_learned]   done in {result['wall_s']:.0f} s", file=sys.stderr, flush=True)
    return result


def _cpu_model() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            model = value.strip()
        elif key.strip() == "Flags":
            flags = value.split()
    return model, flags


def _machine(args: argparse.Namespace) -> dict:
    model, flags = _cpu_model()
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "avx_vnni")
    info = {
        "cpu": model,
        "cores": os.cpu_count(),
        "threads": args.threads,
        "bf16_flags": {flag: flag in flags for flag in wanted},
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "date": datetime.date.today().isoformat(),
        "load_avg": os.getloadavg()[0],
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _tile_counts() -> dict[str, int]:
    from magicbokeh.pipeline import FAST_TILE_OVERLAP, tile_positions
    from magicbokeh.tiling import plan_tiles

    height, width = PHOTO
    return {
        "released 512/stride 256": len(tile_positions(height, width)),
        "fast 512/overlap 96": plan_tiles(height, width, 512, FAST_TILE_OVERLAP).count,
        "fast 768/overlap 96": plan_tiles(height, width, 768, FAST_TILE_OVERLAP).count,
    }


def _f(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def _report(res: dict) -> str:
    """Markdown tables of all measurements, with target verdicts computed from the numbers."""
    m, learned, lines = res["machine"], res["learned"], []
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["bf16_flags"].items())
    memory_kind = "max allocated" if res["device"].startswith("cuda") else "peak RSS"
    lines += [
        f"Run: {m['date']}, {m['cpu']} ({m['cores']} cores, {m['threads']} torch threads), "
        f"torch {m['torch']} (CPU capability {m['cpu_capability']}), diffusers "
        f"{m.get('diffusers', '?')}, device {res['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else "")
        + f", 1-min load average at start {m['load_avg']:.1f}. "
        f"Warm-up {res['warmup']}, repeats {res['repeats']} (median). "
        f"Whole benchmark: {res['total_s'] / 60:.1f} min.",
        "",
        f"CPU flags: {flags}.",
        "",
        "### Per 512×512 tile: the learned network (MagicBokehPipeline, fast mode, one tile)",
        "",
        "| variant | VAE encode s | ControlNet s | UNet s | VAE decode s | network forward s "
        f"| pipeline total s | weights GB | {memory_kind} GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in learned.items():
        t = r["times"]
        lines.append(
            f"| {name} | {_f(t['encode'])} | {_f(t['controlnet'])} | {_f(t['unet'])} | "
            f"{_f(t['decode'])} | {_f(t['network'])} | {_f(t['pipeline'])} | "
            f"{_f(r['weights_gb'])} | {_f(r['peak_gb'])} |"
        )
    merged_layers = learned["fp32+merged"]["merged_lora_layers"]
    lines += [
        "",
        "ControlNet includes the defocus embedding. The network forward also includes ᾱ "
        "arithmetic and clamping; the pipeline total adds the defocus map, cropping, blending "
        'and the colour fix for the one tile. "+merged": the SR LoRA of the UNet and the VAE '
        f"encoder folded into the base weights in float32 before the cast ({merged_layers} peft "
        "layers; `MagicBokehNetwork.merge_sr_lora`); the bokeh LoRA of the focus attention stays "
        "a separate branch.",
        "",
        "### float32 vs bfloat16",
        "",
        "| part | fp32 s | bf16 s | speed-up | fp32+merged s | bf16+merged s | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    fp32, bf16 = learned["fp32"]["times"], learned["bf16"]["times"]
    fp32m, bf16m = learned["fp32+merged"]["times"], learned["bf16+merged"]["times"]
    for part in ("encode", "controlnet", "unet", "decode", "network", "pipeline"):
        lines.append(
            f"| {part} | {_f(fp32[part])} | {_f(bf16[part])} | {_f(fp32[part] / bf16[part])}× | "
            f"{_f(fp32m[part])} | {_f(bf16m[part])} | {_f(fp32m[part] / bf16m[part])}× |"
        )
    speedup = fp32["network"] / bf16["network"]
    lines += [
        "",
        f"bf16 speed-up of the network forward: {_f(speedup)}× (merged: "
        f"{_f(fp32m['network'] / bf16m['network'])}×) — target ≥ 1.8×: "
        f"{'met' if speedup >= 1.8 else 'missed'}.",
        "",
        "Decoded tile (network output, clamped to [−1, 1]) of each variant vs fp32, same random "
        "weights and input:",
        "",
        "| variant | max abs diff | mean abs diff | max, 8-bit levels | mean, 8-bit levels "
        "| PSNR dB ([−1, 1] range) |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in res["diff"].items():
        lines.append(
            f"| {name} | {d['max']:.2e} | {d['mean']:.2e} | {d['max'] * 127.5:.2f} | "
            f"{d['mean'] * 127.5:.3f} | {d['psnr']:.1f} |"
        )
    ref_std = next(iter(res["diff"].values()))["ref_std"]
    stock, pruned = res["stock"]["times"], res["pruned"]["times"]
    stock_sum = sum(stock.values())
    pruned_sum = stock["encode"] + pruned["controlnet"] + pruned["unet"] + stock["decode"]
    ours = {name: learned[name]["times"] for name in (res["dtype"], res["dtype"] + "+merged")}

    def part_sum(t: dict[str, float]) -> float:
        return t["encode"] + t["controlnet"] + t["unet"] + t["decode"]

    def cells(key: str) -> str:
        return " | ".join(_f(t[key]) for t in ours.values())

    lines += [
        "",
        f"(Standard deviation of the fp32 tile: {ref_std:.3f}.)",
        "",
        f"### Glue overhead ({res['dtype']})",
        "",
        f"| part | MagicBokeh {' | MagicBokeh '.join(ours)} | stock SD2.1 "
        "| pruned, plain processors, no LoRA |",
        "|---|---|---|---|---|",
        f"| VAE encode s | {cells('encode')} | {_f(stock['encode'])} | "
        f"{_f(stock['encode'])} (stock VAE) |",
        f"| ControlNet s | {cells('controlnet')} | {_f(stock['controlnet'])} | "
        f"{_f(pruned['controlnet'])} |",
        f"| UNet s | {cells('unet')} | {_f(stock['unet'])} | {_f(pruned['unet'])} |",
        f"| VAE decode s | {cells('decode')} | {_f(stock['decode'])} | "
        f"{_f(stock['decode'])} (stock VAE) |",
        f"| sum of parts s | {' | '.join(_f(part_sum(t)) for t in ours.values())} | "
        f"{_f(stock_sum)} | {_f(pruned_sum)} |",
        f"| network forward s | {cells('network')} | | |",
        f"| pipeline total s | {cells('pipeline')} | | |",
        f"| pipeline / pruned-plain sum | "
        f"{' | '.join(_f(t['pipeline'] / pruned_sum, 3) + '×' for t in ours.values())} | | |",
        f"| pipeline / stock SD2.1 sum | "
        f"{' | '.join(_f(t['pipeline'] / stock_sum, 3) + '×' for t in ours.values())} | | |",
        "",
    ]
    for name, t in ours.items():
        ratio = t["pipeline"] / pruned_sum
        lines.append(
            f"- {name}: pipeline total / sum of the corresponding stock parts (pruned, plain) = "
            f"{_f(ratio, 3)}× — target ≤ 1.15×: {'met' if ratio <= 1.15 else 'missed'}."
        )
    lines += [
        "",
        f"Stock attention processors: {', '.join(res['stock']['processors'])}; pruned: "
        f"{', '.join(res['pruned']['processors'])}. Peak memory stock {_f(res['stock']['peak_gb'])}"
        f" GB (weights {_f(res['stock']['weights_gb'])} GB), pruned UNet+ControlNet "
        f"{_f(res['pruned']['peak_gb'])} GB (weights {_f(res['pruned']['weights_gb'])} GB).",
        "",
        f"### Attention processor in isolation ({res['dtype']}, batch 1, ms)",
        "",
        "| channels × heads | tokens | AttnProcessor2_0 | focus, no mask | focus, masked "
        "(incl. bias) | bias build | masked / plain |",
        "|---|---|---|---|---|---|---|",
    ]
    extra_unet = 0.0
    for row in res["attention"]["layers"]:
        lines.append(
            f"| {row['channels']} × {row['heads']} | {row['tokens']} | {row['plain'] * 1e3:.1f} | "
            f"{row['focus_no_mask'] * 1e3:.1f} | {row['focus_masked'] * 1e3:.1f} | "
            f"{row['focus_bias_build'] * 1e3:.1f} | {row['focus_masked'] / row['plain']:.2f}× |"
        )
        # Three focus layers per resolution in the up path; the bias is built once per size.
        extra_unet += 3 * (row["focus_masked"] - row["plain"]) - 2 * row["focus_bias_build"]
    lines += [
        "",
        f"The nine up-block layers of one UNet forward: about {extra_unet:.2f} s more than with "
        "plain processors (the focus processor attends twice: plain and focused branch).",
        "",
        "### 12 MP photo (4032×3024)",
        "",
        "| tiling | tiles | pipeline work without network s | implied fp32 min | "
        "implied bf16 min | implied bf16+merged min |",
        "|---|---|---|---|---|---|",
    ]
    glue = res["glue"]["glue"]
    for label, count in res["tile_counts"].items():
        if label.startswith("fast 768"):
            lines.append(f"| {label} | {count} | not measured | | | |")
            continue
        own = glue["released" if label.startswith("released") else "fast"]["seconds"]
        implied = [
            (count * learned[name]["times"]["network"] + own) / 60
            for name in ("fp32", "bf16", "bf16+merged")
        ]
        lines.append(
            f"| {label} | {count} | {_f(own)} | " + " | ".join(f"{v:.1f}" for v in implied) + " |"
        )
    lines += [
        "",
        "Implied time = tiles × network forward per 512 tile (one tile per call) + the "
        "pipeline's own work on the whole photo, measured with a stand-in network that returns "
        "its input.",
    ]
    return "\n".join(lines) + "\n"


START, END = "<!-- results:start -->", "<!-- results:end -->"


def _write_markdown(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else "# Learned engine: speed and memory\n\n"
    body = f"{START}\n{block}{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + body + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="stock comparison")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--warmup", type=int, default=None, help="CPU 1, CUDA 2")
    parser.add_argument("--repeats", type=int, default=None, help="CPU 3, CUDA 10")
    parser.add_argument("--markdown", type=Path, help="write the results block into this file")
    parser.add_argument("--json", type=Path, help="write all raw results to this file")
    parser.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--save-output", help=argparse.SUPPRESS)
    parser.add_argument("--merge-lora", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    args.warmup = args.warmup if args.warmup is not None else (2 if cuda else 1)
    args.repeats = args.repeats if args.repeats is not None else (10 if cuda else 3)
    torch.set_num_threads(args.threads)
    if args.worker:
        print("RESULT " + json.dumps(WORKERS[args.worker](args)), flush=True)
        return
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but torch sees no CUDA device")

    begin = time.perf_counter()
    res: dict[str, Any] = {"device": args.device, "dtype": args.dtype, "machine": _machine(args)}
    res.update(warmup=args.warmup, repeats=args.repeats, tile_counts=_tile_counts())
    res["learned"], res["diff"] = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            dtype, merged = variant.split("+")[0], variant.endswith("+merged")
            out = os.path.join(tmp, f"{variant}.pt")
            extra = ["--save-output", out] + (["--merge-lora"] if merged else [])
            res["learned"][variant] = _run_worker(args, "learned", dtype, *extra)
            tile = torch.load(out)
            if variant == "fp32":
                ref = tile
                continue
            delta = (tile - ref).abs()
            mse = float((delta**2).mean())
            res["diff"][variant] = {
                "max": float(delta.max()),
                "mean": float(delta.mean()),
                "psnr": 10 * math.log10(4.0 / mse) if mse > 0 else float("inf"),
                "ref_std": float(ref.std()),
            }
    res["stock"] = _run_worker(args, "stock", args.dtype)
    res["pruned"] = _run_worker(args, "pruned", args.dtype)
    res["attention"] = _run_worker(args, "attention", args.dtype)
    res["glue"] = _run_worker(args, "glue", "fp32")
    res["total_s"] = time.perf_counter() - begin
    block = _report(res)
    print(block)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    if args.markdown:
        _write_markdown(args.markdown, block)


if __name__ == "__main__":
    main()
