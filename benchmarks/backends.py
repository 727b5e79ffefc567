"""The roofline of the generator on the CPU: each backend's GFLOP/s beside the matrix-multiply peak
measured in the same run, with the same threads. Eager (float32, and bf16 where the CPU has it in
hardware), AOTInductor through the fast path the app uses (cyclegan/backends.py), torch.compile in the
process (dynamic shapes; static: a compile per size), ONNX Runtime on the
project's own ONNX export and, where the CPU has VNNI, int8 (ONNX Runtime static quantization). Both
model sizes, one image at 256 and 512 px, timed interleaved; speed-up against eager float32 and 8-bit
PSNR against it; the share of the cores other processes used (a run under load is marked as such); a
markdown table and benchmarks/backends.json.

    python benchmarks/backends.py --data ../shared/datasets/horse2zebra   # ~10 min on 2 idle Zen 4 cores
    python benchmarks/backends.py --quick                                  # fewer repeats
    python benchmarks/backends.py --quick --backends "eager bf16,AOTInductor bf16"
    python benchmarks/backends.py --int8 yes   # int8 even without VNNI (its accuracy; its speed says nothing there)

A backend is worth adopting (issue 27) when it is >= 1.2x faster than eager float32 at >= 45 dB on both
model sizes at 256 px, in more than one run.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.core import PREVIEW, compare_8bit, machine_info, photos, sample_photo, table, timed  # noqa: E402
from benchmarks.sections.inference import trained_briefly  # noqa: E402
from cyclegan import CycleGAN  # noqa: E402
from cyclegan.backends import FastPath, load_package  # noqa: E402
from cyclegan.data import load_rgb, to_tensor  # noqa: E402
from cyclegan.export_onnx import export  # noqa: E402
from cyclegan.files import write_atomic  # noqa: E402
from cyclegan.inference import cpu_has_native_bf16, in_precision, run_any_size  # noqa: E402

BACKENDS = ("eager fp32", "eager bf16", "AOTInductor fp32", "AOTInductor bf16", "torch.compile bf16", "onnxruntime",
            "onnxruntime int8", "torch.compile bf16 static")  # the last: static shapes, a compile per size
FIELDS = ("model", "size", "backend", "min_ms", "median_ms", "n", "speedup", "psnr_db", "max_levels",
          "within_1_level")
UNDER_LOAD = 0.05  # other processes' share of the cores above which a run is marked as taken under load
SPEEDUP, PSNR_DB = 1.2, 45.0  # issue 27's bar for adopting a backend
CALIBRATION_PHOTOS = 4
CPU = torch.device("cpu")


def vnni_flags() -> list[str]:
    """The VNNI flags (int8 dot products in hardware) /proc/cpuinfo lists; empty where it has none."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.is_file() else set()
    return [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in flags]


def session_options(threads: int):
    """ONNX Runtime's options here: as many intra-op threads as torch uses, one inter-op thread,
    sequential execution, all graph optimisations; spinning and the rest at their defaults."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def describe_options(threads: int) -> dict:
    return {"providers": ["CPUExecutionProvider"], "intra_op_num_threads": threads, "inter_op_num_threads": 1,
            "execution_mode": "sequential", "graph_optimization_level": "all", "allow_spinning": "default (on)"}


def export_onnx(model: CycleGAN, folder: Path) -> Path:
    """G_AB of `model` through cyclegan.export_onnx.export (save the model folder, export A2B)."""
    model.save_pretrained(folder / "model")
    path = folder / "A2B.onnx"
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # the exporter's progress lines
        warnings.simplefilter("ignore")
        export(str(folder / "model"), str(path), "A2B")
    return path


def quantize_int8(path: Path, calibration: list[torch.Tensor]) -> Path:
    """Static int8 quantization (QDQ) of the ONNX file's convolutions: weights int8 per channel,
    activations uint8 with ranges calibrated (min/max) on `calibration`; instance norm, padding and
    tanh stay float32."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter([{"image": x.numpy()} for x in calibration])

        def get_next(self):
            return next(self.left, None)

    out = path.with_name(path.stem + ".int8.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        quantize_static(str(path), str(out), Images(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv", "ConvTranspose"], per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def ort_runner(path: Path, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


def calibration_images(data: Path, size: int) -> list[torch.Tensor]:
    """A few training photos (not the timed test photo) at `size`, or the synthetic image without data."""
    files = photos(data, "trainA")[:CALIBRATION_PHOTOS]
    images = [load_rgb(f).resize((size, size), Image.BICUBIC) for f in files] or [sample_photo(data, size, size)]
    return [to_tensor(im).unsqueeze(0) for im in images]


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 4096, repeats: int = 3) -> float:
    """GFLOP/s of the best of `repeats` `a @ b` (n x n) in `dtype`, with torch's threads as they are:
    what this CPU's arithmetic reaches in the library the generator's convolutions are built on."""
    a, b = (torch.rand(n, n, generator=torch.Generator().manual_seed(i)).to(dtype) for i in (0, 1))
    a @ b  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def gflop(net: torch.nn.Module, size: int) -> float:
    """GFLOP of one pass of `net` on a `size`-px image (convolutions: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


class CpuShare:
    """The share of this machine's cores that other processes used between start and `others()`:
    /proc/stat's busy time less that of this process and its children (the compiler's workers and
    the apps a benchmark serves included). A comparison is only meaningful where it is near 0 (the
    load average also counts this benchmark's own threads)."""

    def __init__(self) -> None:
        self.start = self._now()

    @staticmethod
    def _now() -> tuple[float, float, float]:
        ticks = os.sysconf("SC_CLK_TCK")
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        busy = (sum(fields) - fields[3] - fields[4]) / ticks  # all but idle and iowait
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.monotonic(), busy, reaped.ru_utime + reaped.ru_stime + CpuShare._family_seconds(ticks)

    @staticmethod
    def _family_seconds(ticks: int) -> float:
        """CPU seconds of this process and its living descendants (/proc/PID/stat: utime, stime)."""
        parents, used = {}, {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            pid = int(stat.parent.name)
            parents[pid], used[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks
        family, todo = set(), [os.getpid()]
        while todo:
            pid = todo.pop()
            family.add(pid)
            todo += [child for child, parent in parents.items() if parent == pid and child not in family]
        return sum(used.get(pid, 0.0) for pid in family)

    def others(self) -> float:
        (t0, busy0, own0), (t1, busy1, own1) = self.start, self._now()
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / ((t1 - t0) * (os.cpu_count() or 1))


def runners(model: CycleGAN, backends: list[str], data: Path, folder: Path, sizes: list[int],
            threads: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Each backend as a function of one image: eager through run_any_size, AOTInductor through the fast
    path the app uses (cyclegan.backends: a package from its cache, compiled first where missing),
    torch.compile in this process (dynamic shapes, or static: a compile per size)."""
    G = model.G_AB.eval()
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for name in backends:
        precision = "bf16" if "bf16" in name else "fp32"
        if name.startswith("eager"):
            out[name] = lambda x, p=precision: run_any_size(G, x, max_side=None, precision=p)
        elif name.startswith("AOTInductor"):
            fast, start = FastPath(G, torch.bfloat16 if precision == "bf16" else None), time.perf_counter()
            fast.compiled, _ = load_package(fast)
            print(f"({name}: its package ready in {time.perf_counter() - start:.0f} s)")
            out[name] = torch.inference_mode()(fast)
        elif name.startswith("torch.compile"):
            net = G if precision == "fp32" else in_precision(G, "cpu", torch.bfloat16)
            out[name] = torch.inference_mode()(torch.compile(net, dynamic=not name.endswith("static")))
    if "onnxruntime" in backends or "onnxruntime int8" in backends:
        start = time.perf_counter()
        path = export_onnx(model, folder)
        print(f"(exported to ONNX in {time.perf_counter() - start:.0f} s)")
        if "onnxruntime" in backends:
            out["onnxruntime"] = ort_runner(path, threads)
        if "onnxruntime int8" in backends:
            start = time.perf_counter()
            qpath = quantize_int8(path, calibration_images(data, min(sizes)))
            print(f"(quantized to int8 in {time.perf_counter() - start:.0f} s)")
            out["onnxruntime int8"] = ort_runner(qpath, threads)
    return out


def bench_backends(models: dict[str, CycleGAN], sizes: dict[int, int], data: Path, workdir: Path,
                   backends: tuple[str, ...] = BACKENDS, int8: bool | None = None, warmup: int = 1) -> dict:
    """Each model's G_AB on one image of each size (`sizes`: size -> interleaved repeats) in each of
    `backends`, as GFLOP/s beside the matrix-multiply peak measured before and after (the roofline);
    bf16 rows only where the CPU has bf16 in hardware, int8 only where `int8` is True, or None and
    the CPU has VNNI. Returns {"rows": one per model, size and backend, "peak_gflops", "compile_s":
    per model and size, "skipped": backend -> why}."""
    threads = torch.get_num_threads()
    vnni = vnni_flags()
    skipped: dict[str, str] = {}
    if "onnxruntime int8" in backends and not (int8 if int8 is not None else bool(vnni)):
        skipped["onnxruntime int8"] = ("this CPU has no VNNI (avx512_vnni or avx_vnni in /proc/cpuinfo): "
                                       "int8 convolutions are emulated with 16-bit arithmetic there"
                                       if not vnni else "turned off (--int8 no)")
    if not cpu_has_native_bf16():
        skipped.update({b: "this CPU has no bf16 in hardware" for b in backends if "bf16" in b})
    for name, why in skipped.items():
        print(f"{name}: skipped, {why}")
    run = [b for b in backends if b not in skipped]
    peaks = {"fp32": [matmul_peak()], "bf16": [matmul_peak(torch.bfloat16)] if any("bf16" in b for b in run) else []}
    print(f"Matrix-multiply peak (4096², {threads} threads): "
          + ", ".join(f"{k} {v[0]:.0f} GFLOP/s" for k, v in peaks.items() if v))
    row = table(f"The generator, one image, {threads} threads (ms min / median; GFLOP/s of the median and its share "
                "of the same arithmetic's matmul peak; speed-up of medians against eager fp32; 8-bit PSNR against "
                "eager fp32 / largest difference in levels):",
                ["model", "size", "backend", "ms", "GFLOP/s (of peak)", "speed-up", "PSNR vs eager fp32"])
    rows, compile_s = [], {}
    for label, model in models.items():
        fns = runners(model, run, data, workdir / f"model{len(compile_s)}", list(sizes), threads)
        compile_s[label] = {}
        for size, repeats in sizes.items():
            x = to_tensor(sample_photo(data, size, size)).unsqueeze(0)
            flops = gflop(model.G_AB, size)
            for name in [n for n in fns if n.startswith("torch.compile")]:
                start = time.perf_counter()
                fns[name](x)
                compile_s[label][f"{name} {size}"] = seconds = time.perf_counter() - start
                print(f"({label}, {size} px: {name}'s first call took {seconds:.1f} s)")
            variants = {name: (lambda f=f: f(x)) for name, f in fns.items()}
            t = timed(variants, repeats, warmup, CPU)
            ref = variants["eager fp32"]()
            for name, fn in variants.items():
                c = compare_8bit(fn(), ref)
                s, arithmetic = t[name], "bf16" if "bf16" in name else "fp32"
                gflops = flops / s["median"]
                rows.append(r := {"model": label, "size": size, "backend": name, "min_ms": s["min"] * 1000,
                                  "median_ms": s["median"] * 1000, "p95_ms": s["p95"] * 1000, "n": s["n"],
                                  "speedup": t["eager fp32"]["median"] / s["median"], "gflop": flops,
                                  "gflops": gflops, "of_peak": gflops / peaks[arithmetic][0], **c})
                db = "identical" if c["psnr_db"] == float("inf") else f"{c['psnr_db']:.1f} dB"
                row(label, size, name, f"{r['min_ms']:.0f} / {r['median_ms']:.0f}",
                    f"{gflops:.0f} ({r['of_peak']:.0%})", f"{r['speedup']:.2f}x", f"{db} / {c['max_levels']}")
    for arithmetic, values in peaks.items():
        if values:
            values.append(matmul_peak(torch.bfloat16 if arithmetic == "bf16" else torch.float32))
    print("Matrix-multiply peak before / after: "
          + ", ".join(f"{k} {v[0]:.0f} / {v[1]:.0f} GFLOP/s" for k, v in peaks.items() if v))
    return {"rows": rows, "peak_gflops": {k: v for k, v in peaks.items() if v}, "compile_s": compile_s,
            "skipped": skipped, "onnxruntime_session": describe_options(threads), "vnni": vnni}


def verdict(rows: list[dict], size: int = 256) -> dict[str, str]:
    """Per backend: whether it met issue 27's bar (>= 1.2x, >= 45 dB) for every model at `size` px."""
    out = {}
    for backend in sorted({r["backend"] for r in rows} - {"eager fp32"}):
        mine = [r for r in rows if r["backend"] == backend and r["size"] == size]
        ok = bool(mine) and all(r["speedup"] >= SPEEDUP and r["psnr_db"] >= PSNR_DB for r in mine)
        out[backend] = (f"{'met' if ok else 'NOT met'} at {size} px: "
                        + ", ".join(f"{r['model']} {r['speedup']:.2f}x at {r['psnr_db']:.1f} dB" for r in mine))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (4 at 256 px, 2 at 512)")
    parser.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (default: all cores)")
    parser.add_argument("--data", type=Path, default=ROOT / "datasets" / "horse2zebra",
                        help="horse2zebra: the timed test photo, int8's calibration photos and the default-size "
                             "model's brief training; without it a synthetic image (default: %(default)s)")
    parser.add_argument("--int8", choices=("auto", "yes", "no"), default="auto",
                        help="auto: only where the CPU has VNNI (default)")
    parser.add_argument("--backends", default=",".join(BACKENDS[:-1]),
                        help="comma-separated, of: %(default)s (eager fp32 is the reference, always run)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "backends.json")
    args = parser.parse_args(argv)
    chosen = ["eager fp32", *(b for b in args.backends.split(",") if b != "eager fp32")]
    if unknown := [b for b in chosen if b not in BACKENDS]:
        parser.error(f"unknown backends {unknown}: choose from {', '.join(BACKENDS)}")
    sys.stdout.reconfigure(line_buffering=True)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    import onnxruntime as ort
    m = {**machine_info(), "onnxruntime": ort.__version__, "vnni": vnni_flags()}
    print(f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd'] + m['vnni']) or 'no AVX2'}), "
          f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, {m['threads']} threads, "
          f"load average {m['load_average_at_start'][0]:.2f} at start.")
    started, share = time.perf_counter(), CpuShare()
    models = {"preview (ngf 32, 6 blocks)": CycleGAN.from_pretrained(PREVIEW),
              "paper size (ngf 64, 9 blocks, trained briefly)": trained_briefly(args.data)}
    sizes = {256: 4, 512: 2} if args.quick else {256: 10, 512: 5}
    with tempfile.TemporaryDirectory() as tmp:
        result = bench_backends(models, sizes, args.data, Path(tmp), tuple(chosen),
                                int8={"auto": None, "yes": True, "no": False}[args.int8])
    others = share.others()
    r = {"command": " ".join(["python benchmarks/backends.py", *(argv if argv is not None else sys.argv[1:])]),
         "quick": args.quick, "machine": m,
         "weights": {"preview": str(PREVIEW.relative_to(ROOT)),
                     "default": models["paper size (ngf 64, 9 blocks, trained briefly)"].info.get("trained", "random init")},
         **result, "verdict_256px": verdict(result["rows"]),
         "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "seconds": time.perf_counter() - started,
         "others_cpu_share": round(others, 3), "under_load": others > UNDER_LOAD}
    print(f"\nLoad average {r['load_average_at_end'][0]:.2f} at end; other processes used {others:.0%} of the cores"
          + (" -- UNDER LOAD: these timings compare nothing" if r["under_load"] else " (idle)") + f".\nIssue 27's bar (>= {SPEEDUP}x at >= {PSNR_DB:.0f} dB "
          "on both models at 256 px):", *(f"- {k}: {v}" for k, v in r["verdict_256px"].items()), sep="\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, (json.dumps(r, indent=2) + "\n").encode())
    print(f"\nwrote {args.out} ({r['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
