"""Times the three models on a CUDA GPU: SDXL, Wan 2.1 T2V 1.3B and the Qwen prompt enhancer, against the
published FLOP counts (docs/benchmarks.md, GPU) and the reference's job times (catalog `reference_seconds`).

With random-weight checkpoints of the real architectures (`models.checkpoints.build_all(dir, "full")`, built
once into `--checkpoints`; about 36 GB on disk, minutes to build) it measures:
- model load time of each, and the GPU memory of all three resident (`torch.cuda.max_memory_allocated`; the
  reference's target is < 35 GB);
- SDXL, 6 images at 1024x1024, at the catalog's fast and high steps (CFG);
- Wan 2.1 1.3B at 480x832 with 1 and 81 frames at fast and high steps (CFG; the negative prompt's embedding
  cached, as the worker does), DiT and VAE timed apart;
- Qwen enhancement: new tokens per second and seconds per prompt (the worker's cap of 160 new tokens);
- for each: achieved TFLOPS and MFU against the GPU's dense bf16 peak looked up by name (H100 SXM 989,
  H100 PCIe 756, H200 989, RTX 6000 Ada 364, A100 312, L40S 362; unknown: no MFU unless --peak-tflops),
  and the speed-up over the reference's job time;
- options in the same run (`--variants`): SDPA kernels for SDXL (flash, efficient, cuDNN), diffusers attention
  backends for Wan (`transformer.set_attention_backend`: whichever are installed), channels-last for SDXL,
  and regional `torch.compile` (`compile_repeated_blocks(fullgraph=True)`) for the SDXL UNet and the Wan DiT.

    .venv/bin/python scripts/bench_gpu.py                    # CUDA, full size (builds checkpoints once)
    .venv/bin/python scripts/bench_gpu.py --quick            # baseline cases only, no 81-frame high run
    .venv/bin/python scripts/bench_gpu.py --device cpu --size tiny   # smoke mode: NOT GPU figures

Asked for CUDA where there is none, it says so and exits with status 2 without building or timing anything.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PROMPT = "a red fox running through fresh snow at golden hour, cinematic, shallow depth of field"
SMOKE_BANNER = "*** CPU SMOKE MODE: tiny random models at small sizes. These are NOT GPU figures. ***"

# --- FLOP counts (published figures, docs/benchmarks.md) and GPU peaks ---------------------------------------------

SDXL_UNET_FORWARD_1024 = 6.76e12  # one image at 1024x1024, one UNet forward [derived from the published count]
SDXL_VAE_DECODE_1024 = 10.5e12  # one image at 1024x1024 [derived from the published count]
WAN_VAE_DECODE_81 = 275e12  # 81 x 480 x 832 [derived from the published count]
UMT5_ENCODE = 4.7e12  # UMT5-XXL encoder over 512 tokens: 24 layers x 512 x (2 x 4 x 4096^2 + 2 x 3 x 4096 x 10240)
WAN_DIM, WAN_FFN, WAN_LAYERS, WAN_TEXT_TOKENS = 1536, 8960, 30, 512

#: (name fragment, dense bf16 TFLOPS, memory TB/s); the first match wins, so "H100 PCIe" precedes "H100".
GPU_PEAKS: list[tuple[str, float, float]] = [
    ("H200", 989.0, 4.8),
    ("H100 PCIe", 756.0, 2.0),
    ("H100", 989.0, 3.35),
    ("RTX 6000 Ada", 364.0, 0.96),
    ("A100", 312.0, 2.0),
    ("L40S", 362.0, 0.864),
]


def gpu_peak(name: str) -> tuple[float, float] | None:
    """(TFLOPS, TB/s) of a GPU by its CUDA name, or None when it is not in the table (H100 NVL: other figures)."""
    lowered = name.lower()
    if "nvl" in lowered:
        return None
    for fragment, tflops, bandwidth in GPU_PEAKS:
        if fragment.lower() in lowered:
            return tflops, bandwidth
    return None


def sdxl_flops(images: int, steps: int, width: int, height: int, guidance: float) -> float:
    """UNet passes (two per step with CFG) and the VAE decode; scaled by pixels from the 1024x1024 counts."""
    scale = width * height / 1024**2
    passes = 2 if guidance > 1.0 else 1
    return images * scale * (steps * passes * SDXL_UNET_FORWARD_1024 + SDXL_VAE_DECODE_1024)


def wan_tokens(frames: int, width: int, height: int) -> int:
    """DiT tokens: latent frames (1 + (frames - 1) / 4) x the 8x-downsampled, 2x2-patched grid."""
    return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)


def wan_forward_flops(frames: int, width: int, height: int) -> float:
    """One DiT forward: self-attention projections and scores, cross-attention to 512 text tokens, the FFN.

    At 81 x 480 x 832 (32,760 tokens) it gives 283 T, 70 % of it attention: the published figure.
    """
    n, d, f, text = wan_tokens(frames, width, height), WAN_DIM, WAN_FFN, WAN_TEXT_TOKENS
    per_layer = 8 * n * d * d + 4 * n * n * d + 4 * n * d * d + 4 * text * d * d + 4 * n * text * d + 4 * n * d * f
    return WAN_LAYERS * per_layer


def wan_vae_flops(frames: int, width: int, height: int) -> float:
    return WAN_VAE_DECODE_81 * frames / 81 * width * height / (480 * 832)


def wan_denoise_flops(frames: int, width: int, height: int, steps: int, guidance: float) -> float:
    return steps * (2 if guidance > 1.0 else 1) * wan_forward_flops(frames, width, height)


# --- results --------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    seconds: float
    flops: float | None = None  # None: the anchors do not apply (tiny models)
    reference_seconds: float | None = None
    reference_job: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bench:
    device: str
    size: str
    peak_tflops: float | None
    peak_tbps: float | None
    cases: list[Case] = field(default_factory=list)
    variants: list[list[object]] = field(default_factory=list)
    loads: list[list[object]] = field(default_factory=list)
    memory: list[list[object]] = field(default_factory=list)

    def tflops(self, case: Case) -> float | None:
        return None if case.flops is None or case.seconds <= 0 else case.flops / case.seconds / 1e12

    def mfu(self, case: Case) -> float | None:
        achieved = self.tflops(case)
        return None if achieved is None or self.peak_tflops is None else 100 * achieved / self.peak_tflops


def _fmt(value: float | None, digits: int = 2) -> object:
    return "n/a" if value is None else round(value, digits)


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# --- timing ----------------------------------------------------------------------------------------------------------


class Timer:
    def __init__(self, device: str) -> None:
        import torch

        self._torch = torch
        self._cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self._cuda:
            self._torch.cuda.synchronize()

    def __call__(self, run: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        started = time.perf_counter()
        result = run()
        self.sync()
        return time.perf_counter() - started, result


@contextlib.contextmanager
def quiet_diffusers_warnings() -> Iterator[None]:
    """`set_attention_backend` warns on every call that backends are experimental; once is enough."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


# --- the cases ------------------------------------------------------------------------------------------------------


def sdxl_cases(bench: Bench, sdxl: Any, args: argparse.Namespace, timer: Timer) -> None:
    from jobs.catalog import DEFAULT_CATALOG

    for job_type in ("sdxl_image_fast", "sdxl_image_high"):
        spec = DEFAULT_CATALOG[job_type]
        steps = args.steps or spec.steps
        width, height = args.width or spec.width, args.height or spec.height
        images = args.images or spec.num_outputs

        def run(steps: int = steps, guidance: float = spec.guidance, width: int = width, height: int = height,
                images: int = images) -> Any:
            return sdxl.generate(PROMPT, None, num_images=images, width=width, height=height, steps=steps,
                                 guidance=guidance, seeds=list(range(images)))

        if job_type == "sdxl_image_fast":
            timer(functools.partial(run, steps=min(2, steps), width=width, height=height, images=images))
        seconds, _ = timer(run)
        flops = sdxl_flops(images, steps, width, height, spec.guidance) if args.size == "full" else None
        bench.cases.append(Case(f"SDXL {images} x {width}x{height}, {steps} steps, CFG {spec.guidance}", seconds,
                                flops, spec.reference_seconds, job_type))


def wan_cases(bench: Bench, wan: Any, args: argparse.Namespace, timer: Timer) -> dict[str, float]:
    """Returns the seconds of each case by job type, for the enhanced types' sums."""
    from jobs.catalog import DEFAULT_CATALOG

    seconds_by_type: dict[str, float] = {}
    video_frames = args.frames or 81
    plan = [("image_fast", 1), ("image_high", 1), ("video_fast", video_frames), ("video_high", video_frames)]
    if args.quick:
        plan = [p for p in plan if p[0] != "video_high"]
    warmed: set[int] = set()
    for job_type, frames in plan:
        spec = DEFAULT_CATALOG[job_type]
        steps = args.steps or spec.steps
        width, height = args.width or spec.width, args.height or spec.height
        kwargs = {"width": width, "height": height, "frames": frames, "guidance": spec.guidance,
                  "shift": spec.shift, "seed": 0}
        if frames not in warmed:  # kernels, allocator and the negative-prompt cache, per shape
            timer(functools.partial(_denoise_and_decode, wan, kwargs))
            warmed.add(frames)
        denoise_s, latents = timer(functools.partial(wan.denoise, PROMPT, None, steps=steps, **kwargs))
        decode_s, _ = timer(functools.partial(wan.decode, latents))
        total = denoise_s + decode_s
        seconds_by_type[job_type] = total
        full = args.size == "full"
        dit = wan_denoise_flops(frames, width, height, steps, spec.guidance) + UMT5_ENCODE if full else None
        vae = wan_vae_flops(frames, width, height) if full else None
        note = ""
        if job_type == "video_high" and frames != spec.frames:
            note = f"the catalog's video_high has {spec.frames} frames; the reference time is for those"
        label = f"Wan {frames} x {width}x{height}, {steps} steps, CFG {spec.guidance}"
        bench.cases.append(Case(f"{label}: DiT + text", denoise_s, dit, note=note))
        bench.cases.append(Case(f"{label}: VAE decode", decode_s, vae))
        bench.cases.append(Case(f"{label}: total", total, None if dit is None or vae is None else dit + vae,
                                spec.reference_seconds, job_type, note))
    return seconds_by_type


def _denoise_and_decode(wan: Any, kwargs: dict[str, Any]) -> Any:
    return wan.decode(wan.denoise(PROMPT, None, steps=1, **kwargs))


def qwen_case(bench: Bench, enhancer: Any, args: argparse.Namespace, timer: Timer) -> float:
    from handler.runner import ENHANCER_MAX_NEW_TOKENS

    counted: dict[str, int] = {}
    generate = enhancer.model.generate

    def counting_generate(*a: Any, **kw: Any) -> Any:
        output = generate(*a, **kw)
        counted["prompt"] = int(kw["input_ids"].shape[1])
        counted["new"] = int(output.shape[1] - kw["input_ids"].shape[1])
        return output

    enhancer.model.generate = counting_generate
    try:
        max_new = args.max_new_tokens or ENHANCER_MAX_NEW_TOKENS
        timer(lambda: enhancer.enhance(PROMPT, seed=1, max_new_tokens=8))  # warm-up
        seconds, _ = timer(lambda: enhancer.enhance(PROMPT, seed=0, max_new_tokens=max_new))
    finally:
        del enhancer.model.generate
    params = sum(p.numel() for p in enhancer.model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in enhancer.model.parameters())
    new = counted.get("new", 0)
    flops = 2.0 * params * (counted.get("prompt", 0) + new) if args.size == "full" else None
    tokens_per_s = new / seconds if seconds > 0 else 0.0
    bandwidth = weight_bytes * tokens_per_s / 1e12  # TB/s of weights read while decoding (one read per token)
    mbu = None if bench.peak_tbps is None or args.size != "full" else 100 * bandwidth / bench.peak_tbps
    bench.cases.append(Case(f"Qwen enhance: {counted.get('prompt', 0)} prompt + {new} new tokens", seconds, flops,
                            note=f"{tokens_per_s:.1f} new tokens/s"
                                 + (f"; weights read at {bandwidth * 1000:.0f} GB/s" if args.size == "full" else "")
                                 + (f" = {mbu:.0f} % of the memory bandwidth" if mbu is not None else ""),
                            extra={"tokens_per_s": tokens_per_s, "params": params}))
    return seconds


def enhanced_cases(bench: Bench, qwen_seconds: float, wan_seconds: dict[str, float]) -> None:
    """The enhanced types run Qwen, then Wan: their time is the sum of the two measured parts."""
    from jobs.catalog import DEFAULT_CATALOG

    for job_type, base in (("image7b_fast_enhanced", "image_fast"), ("image7b_high_enhanced", "image_high"),
                           ("video7b_fast_enhanced", "video_fast"), ("video7b_high_enhanced", "video_high")):
        if base not in wan_seconds:
            continue
        spec = DEFAULT_CATALOG[job_type]
        flops = next((c.flops for c in bench.cases if c.reference_job == base), None)
        qwen_flops = next((c.flops for c in bench.cases if c.name.startswith("Qwen")), None)
        total_flops = None if flops is None or qwen_flops is None else flops + qwen_flops
        bench.cases.append(Case(f"{job_type} = Qwen + {base} (sum of the parts above)",
                                qwen_seconds + wan_seconds[base], total_flops, spec.reference_seconds, job_type))


# --- the variants -----------------------------------------------------------------------------------------------------


def sdxl_variants(bench: Bench, sdxl: Any, args: argparse.Namespace, timer: Timer, chosen: set[str]) -> None:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from jobs.catalog import DEFAULT_CATALOG

    spec = DEFAULT_CATALOG["sdxl_image_fast"]
    steps, width, height = args.steps or spec.steps, args.width or spec.width, args.height or spec.height
    images = args.images or spec.num_outputs
    flops = sdxl_flops(images, steps, width, height, spec.guidance) if args.size == "full" else None

    def run() -> Any:
        return sdxl.generate(PROMPT, None, num_images=images, width=width, height=height, steps=steps,
                             guidance=spec.guidance, seeds=list(range(images)))

    def measure(label: str, warm: bool = True) -> float | None:
        try:
            warm_s = timer(run)[0] if warm else 0.0
            seconds, _ = timer(run)
        except Exception as exc:  # an unavailable kernel is a row that says so, not the end of the run
            bench.variants.append(["SDXL fast", label, "unavailable", f"{type(exc).__name__}: {str(exc)[:90]}"])
            return None
        achieved = None if flops is None else flops / seconds / 1e12
        bench.variants.append(["SDXL fast", label, round(seconds, 3), _variant_note(bench, achieved, warm_s)])
        return seconds

    measure("SDPA default (baseline)", warm=False)
    if "sdpa-backends" in chosen:
        for name, backend in (("SDPA flash", SDPBackend.FLASH_ATTENTION),
                              ("SDPA memory-efficient", SDPBackend.EFFICIENT_ATTENTION),
                              ("SDPA cuDNN", SDPBackend.CUDNN_ATTENTION)):
            with sdpa_kernel([backend]):
                measure(name)
    if "channels-last" in chosen or "compile" in chosen:
        sdxl.pipe.unet.to(memory_format=torch.channels_last)
        sdxl.pipe.vae.to(memory_format=torch.channels_last)
        if "channels-last" in chosen:
            measure("channels-last UNet + VAE")
    if "compile" in chosen:
        try:
            sdxl.pipe.unet.compile_repeated_blocks(fullgraph=True)
        except Exception as exc:
            bench.variants.append(["SDXL fast", "compile", "unavailable", f"{type(exc).__name__}: {str(exc)[:90]}"])
            return
        measure("regional torch.compile of the UNet's transformer blocks + channels-last (first run compiles)")


def wan_variants(bench: Bench, wan: Any, args: argparse.Namespace, timer: Timer, chosen: set[str]) -> None:
    from jobs.catalog import DEFAULT_CATALOG

    spec = DEFAULT_CATALOG["video_fast"]
    frames = args.frames or spec.frames
    width, height = args.width or spec.width, args.height or spec.height
    steps = args.variant_steps
    kwargs = {"width": width, "height": height, "frames": frames, "guidance": spec.guidance, "shift": spec.shift,
              "seed": 0}
    flops = wan_denoise_flops(frames, width, height, steps, spec.guidance) if args.size == "full" else None
    where = f"Wan DiT {frames} x {width}x{height}, {steps} steps"

    def measure(label: str) -> None:
        try:
            warm_s, _ = timer(lambda: wan.denoise(PROMPT, None, steps=1, **kwargs))
            seconds, _ = timer(lambda: wan.denoise(PROMPT, None, steps=steps, **kwargs))
        except Exception as exc:  # the backend's package or kernel is missing: say so and go on
            bench.variants.append([where, label, "unavailable", f"{type(exc).__name__}: {str(exc)[:90]}"])
            return
        achieved = None if flops is None else flops / seconds / 1e12
        bench.variants.append([where, label, round(seconds, 3), _variant_note(bench, achieved, warm_s)])

    transformer = wan.pipe.transformer
    backends = ["native"]
    if "wan-backends" in chosen:
        backends += ["_native_cudnn", "_native_flash", "_native_efficient", "flash", "_flash_3", "sage", "xformers"]
    with quiet_diffusers_warnings():
        for backend in backends:
            try:
                transformer.set_attention_backend(backend)
            except Exception as exc:
                bench.variants.append([where, f"attention backend {backend}", "unavailable",
                                       f"{type(exc).__name__}: {str(exc)[:90]}"])
                continue
            measure(f"attention backend {backend}" + (" (baseline)" if backend == "native" else ""))
        transformer.set_attention_backend("native")
    if "compile" in chosen:
        try:
            transformer.compile_repeated_blocks(fullgraph=True)
        except Exception as exc:
            bench.variants.append([where, "compile", "unavailable", f"{type(exc).__name__}: {str(exc)[:90]}"])
            return
        measure("regional torch.compile of the DiT blocks, native attention (1-step warm-up compiles)")


def _variant_note(bench: Bench, achieved: float | None, warm_s: float) -> str:
    parts = []
    if achieved is not None:
        parts.append(f"{achieved:.0f} TFLOPS")
        if bench.peak_tflops:
            parts.append(f"MFU {100 * achieved / bench.peak_tflops:.0f} %")
    if warm_s:
        parts.append(f"warm-up run {warm_s:.1f} s")
    return "; ".join(parts)


# --- the run ---------------------------------------------------------------------------------------------------------

VARIANTS = ("sdpa-backends", "wan-backends", "channels-last", "compile")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="See the module docstring (and docs/benchmarks.md) for what is measured.")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the smoke mode)")
    parser.add_argument("--size", choices=["full", "tiny"], default=None,
                        help="checkpoint size: full (real architectures; default on CUDA) or tiny (default on CPU)")
    parser.add_argument("--checkpoints", type=Path, default=None,
                        help="checkpoint folder, built there if missing (default .ourvidz/bench/checkpoints-SIZE)")
    parser.add_argument("--models", default="sdxl,wan,qwen", help="which models to load and time (%(default)s)")
    parser.add_argument("--width", type=int, help="override every case's width (SDXL: multiple of 8; Wan: of 16)")
    parser.add_argument("--height", type=int, help="override every case's height")
    parser.add_argument("--frames", type=int, help="Wan video frames instead of 81 (4k+1)")
    parser.add_argument("--steps", type=int, help="steps of every case instead of the catalog's fast/high steps")
    parser.add_argument("--images", type=int, help="SDXL images per job instead of the catalog's 6")
    parser.add_argument("--max-new-tokens", type=int, help="Qwen's new-token cap instead of the worker's 160")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated from {', '.join(VARIANTS)}, all or none "
                             "(default: all on CUDA, none on the CPU)")
    parser.add_argument("--variant-steps", type=int, default=5, help="Wan DiT steps per variant run (%(default)s)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for a GPU not in the table")
    parser.add_argument("--quick", action="store_true", help="no variants, no 81-frame high-steps run")
    args = parser.parse_args(argv)
    on_cpu = not args.device.startswith("cuda")
    args.size = args.size or ("tiny" if on_cpu else "full")
    if on_cpu and args.size == "tiny":
        # The smoke mode's small sizes, unless given.
        args.width = args.width or 64
        args.height = args.height or 64
        args.frames = args.frames or 5
        args.steps = args.steps or 2
        args.max_new_tokens = args.max_new_tokens or 16
    default_variants = "none" if on_cpu or args.quick else "all"
    chosen = (args.variants or default_variants).lower()
    args.variants = set(VARIANTS) if chosen == "all" else set() if chosen == "none" else {
        v.strip() for v in chosen.split(",") if v.strip()}
    unknown = args.variants - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    args.models = {m.strip() for m in args.models.split(",") if m.strip()}
    if args.models - {"sdxl", "wan", "qwen"}:
        parser.error("--models takes sdxl, wan and qwen")
    if args.frames is not None and (args.frames < 1 or (args.frames - 1) % 4):
        parser.error(f"--frames must be 4k+1 (1, 5, ..., 81), got {args.frames}")
    args.checkpoints = args.checkpoints or REPO / ".ourvidz" / "bench" / f"checkpoints-{args.size}"
    return args


def check_device(device: str) -> str:
    """The device's name; exits with status 2, saying why, when CUDA is asked for and absent."""
    import torch

    if not device.startswith("cuda"):
        return "CPU"
    if not torch.cuda.is_available():
        print(f"bench_gpu.py: --device {device} was asked for, but CUDA is not available on this machine "
              f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}, {torch.cuda.device_count()} devices)."
              " No GPU figures were produced. Run it on a machine with an NVIDIA GPU, or use the CPU smoke mode:"
              " --device cpu --size tiny", file=sys.stderr)
        raise SystemExit(2)
    return str(torch.cuda.get_device_name(torch.device(device)))


def run(args: argparse.Namespace) -> int:
    device_name = check_device(args.device)
    import torch

    smoke = not args.device.startswith("cuda")
    if smoke:
        print(SMOKE_BANNER)
    peak = gpu_peak(device_name) if not smoke else None
    peak_tflops = args.peak_tflops or (peak[0] if peak else None)
    bench = Bench(args.device, args.size, peak_tflops, peak[1] if peak else None)
    print(f"device: {device_name}; torch {torch.__version__}; size {args.size}; peak "
          + (f"{peak_tflops:g} TFLOPS dense bf16" if peak_tflops else "unknown (MFU omitted)"))
    from models.checkpoints import build_all

    started = time.perf_counter()
    paths = build_all(args.checkpoints, args.size, progress=lambda line: print(f"  {line}", flush=True))
    print(f"checkpoints ready in {time.perf_counter() - started:.1f} s: {args.checkpoints}", flush=True)
    timer = Timer(args.device)
    models: dict[str, Any] = {}
    for name in ("sdxl", "wan", "qwen"):
        if name not in args.models:
            continue
        seconds, models[name] = timer(functools.partial(_load, name, paths, args.device))
        bench.loads.append([name, round(seconds, 2)])
        print(f"loaded {name} in {seconds:.1f} s", flush=True)
    cuda = args.device.startswith("cuda")
    if cuda:
        resident = torch.cuda.memory_allocated(torch.device(args.device)) / 1e9
        bench.memory.append(["weights of the loaded models, resident", round(resident, 2)])
        torch.cuda.reset_peak_memory_stats(torch.device(args.device))
    qwen_seconds = None
    wan_seconds: dict[str, float] = {}
    if "sdxl" in models:
        sdxl_cases(bench, models["sdxl"], args, timer)
    if "wan" in models:
        wan_seconds = wan_cases(bench, models["wan"], args, timer)
    if "qwen" in models:
        qwen_seconds = qwen_case(bench, models["qwen"], args, timer)
    if qwen_seconds is not None and wan_seconds:
        enhanced_cases(bench, qwen_seconds, wan_seconds)
    if cuda:
        peak_gb = torch.cuda.max_memory_allocated(torch.device(args.device)) / 1e9
        bench.memory.append(["peak allocated while running every case, all loaded models resident",
                             f"{peak_gb:.2f} ({'under' if peak_gb < 35 else 'OVER'} the reference's 35 GB target)"])
    if args.variants and "sdxl" in models:
        sdxl_variants(bench, models["sdxl"], args, timer, args.variants)
    if args.variants and "wan" in models:
        wan_variants(bench, models["wan"], args, timer, args.variants)
    report(bench, args, device_name)
    if smoke:
        print(SMOKE_BANNER)
    return 0


def _load(name: str, paths: Any, device: str) -> Any:
    if name == "sdxl":
        from models.sdxl import SdxlGenerator

        return SdxlGenerator.load(paths.sdxl, device=device)
    if name == "wan":
        from models.wan import WanGenerator

        return WanGenerator.load(paths.wan, device=device)
    from models.enhancer import PromptEnhancer

    return PromptEnhancer.load(paths.enhancer, device=device)


def report(bench: Bench, args: argparse.Namespace, device_name: str) -> None:
    print()
    print(f"## GPU bench: {device_name}, {args.size} checkpoints"
          + (" (CPU smoke mode: NOT GPU figures)" if not args.device.startswith("cuda") else ""))
    print()
    # A speed-up over the reference means something only for the real models at the catalog's sizes.
    comparable = args.size == "full" and not any((args.width, args.height, args.frames, args.steps, args.images))
    rows = []
    for case in bench.cases:
        speedup = None if case.reference_seconds is None or not comparable else case.reference_seconds / case.seconds
        rows.append([case.name, round(case.seconds, 3), _fmt(None if case.flops is None else case.flops / 1e15, 3),
                     _fmt(bench.tflops(case), 1), _fmt(bench.mfu(case), 1), case.reference_job or "",
                     _fmt(case.reference_seconds, 1), _fmt(speedup, 1), case.note])
    print(markdown_table(["case", "seconds", "PFLOP", "TFLOPS", "MFU %", "reference job", "reference s",
                          "speed-up", "note"], rows))
    print()
    print("FLOPs (published figures): SDXL 6.76 T per image per UNet forward and 10.5 T per VAE decode at 1024x1024 "
          "(scaled by pixels), CFG doubles the UNet/DiT passes; Wan DiT counted layer by layer (283 T per forward "
          "at 81 x 480 x 832, as published), VAE 275 T at 81 frames (scaled by frames and pixels), UMT5 4.7 T; Qwen "
          "2 x parameters per token. n/a: tiny models (the counts are for the real architectures) or no known peak.")
    print()
    print(markdown_table(["model", "load seconds (from disk to the device)"], bench.loads))
    if bench.memory:
        print()
        print(markdown_table(["GPU memory", "GB"], bench.memory))
    if bench.variants:
        print()
        print("Options, same run (each timed after a warm-up; ratios against the row marked baseline):")
        print(markdown_table(["what", "variant", "seconds", "note"], _with_ratios(bench.variants)))


def _with_ratios(rows: list[list[object]]) -> list[list[object]]:
    baselines = {str(r[0]): r[2] for r in rows if "baseline" in str(r[1]) and isinstance(r[2], float)}
    out = []
    for row in rows:
        base = baselines.get(str(row[0]))
        note = str(row[3])
        if isinstance(row[2], float) and isinstance(base, float) and row[2] > 0 and "baseline" not in str(row[1]):
            note = f"{base / row[2]:.2f}x the baseline" + (f"; {note}" if note else "")
        out.append([row[0], row[1], row[2], note])
    return out


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
