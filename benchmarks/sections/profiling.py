"""Where a training step's time goes: Trainer beside reference.PlainLoop, per step wall time and the
profiler's counts (ATen calls, scalar reads, kernel launches, syncs); on CUDA for each variant of the step
in FAST_PATHS, after --cuda-graphs has been checked against the eager step (bench.py's section profile)."""
from __future__ import annotations

import json

import torch

from benchmarks.core import table, timed
from benchmarks.reference import PlainLoop, graphs_against_eager
from cyclegan import ModelConfig
from cyclegan.training import Trainer, TrainConfig

# The training step's variants that bench_profile times on CUDA, as TrainConfig fields: the layout, and
# the step replayed as a CUDA graph (only where check_graphs passed for that layout).
FAST_PATHS = {"Trainer": {}, "Trainer, NCHW": {"memory_format": "nchw"},
              "Trainer + CUDA graphs": {"cuda_graphs": True},
              "Trainer + CUDA graphs, NCHW": {"cuda_graphs": True, "memory_format": "nchw"}}
# The CUDA runtime calls that profile_counts counts as host-device syncs and as kernel launches.
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")


def train_config(label: str, **kw) -> TrainConfig:
    """The TrainConfig of a FAST_PATHS variant."""
    return TrainConfig(**FAST_PATHS[label], **kw)


def in_fused_adam(event) -> bool:
    """Whether a profiler event runs inside the fused Adam kernel: the CPU's reads its own CPU step
    counters (memory reads, not syncs: the CUDA kernel has none)."""
    while event is not None and not event.name.startswith("aten::_fused_adam"):
        event = event.cpu_parent
    return event is not None


def profile_counts(step, steps: int, device: torch.device) -> dict:
    """Per step of `step()`, from torch.profiler over `steps` steps: ATen calls, scalar reads
    (`aten::_local_scalar_dense`; on the CPU also those of the fused CPU Adam kernel, which reads its
    own CPU step counters), kernel launches, host-device synchronisations and the device's busy time."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    step()
    sync()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync()
    events = prof.events()

    reads = [e for e in events if e.name == "aten::_local_scalar_dense"]
    device_us = sum(e.device_time for e in events if e.device_type == torch.autograd.DeviceType.CUDA
                    and e.name not in LAUNCH_CALLS and not e.name.startswith(("Memcpy", "Memset")))
    return {"aten_calls": sum(e.name.startswith("aten::") for e in events) / steps,
            "scalar_reads": len(reads) / steps,
            "scalar_reads_outside_fused_adam": sum(not in_fused_adam(e) for e in reads) / steps,
            "kernel_launches": sum(e.name in LAUNCH_CALLS for e in events) / steps,
            "syncs": sum(e.name in SYNC_CALLS for e in events) / steps,
            "device_ms": device_us / 1000 / steps}


def bench_profile(device: torch.device, steps: int, graphs: tuple[str, ...] = (), profiled: int = 5) -> list[dict]:
    """Where a training step's time goes: Trainer (the loop's per-step work: set_lr and train_step)
    beside benchmarks/reference.py's PlainLoop (independent networks, default Adam), `steps`
    interleaved steps of each timed, then `profiled` of each profiled (their counts are per step). On
    the CPU the host-bound proxy (width 4, 32 px, one thread, fp32: almost no arithmetic, the step is
    dispatch); on CUDA the real sizes at 256 px, Trainer in its default precision in both layouts (FAST_PATHS) and, in the `graphs` layouts
    (those whose graphs_against_eager passed), with --cuda-graphs, timed once its pools are full."""
    threads = torch.get_num_threads()
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(1)
        setups = {"previews' layout, width 4, 32 px": (ModelConfig(ngf=4, ndf=4, n_blocks=6), 32),
                  "paper's layout, width 4, 32 px": (ModelConfig(ngf=4, ndf=4, n_blocks=9), 32)}
    else:
        setups = {"previews' model, 256 px": (ModelConfig(ngf=32, n_blocks=6), 256),
                  "paper's model, 256 px": (ModelConfig(), 256)}
    configs = {"Trainer": TrainConfig(amp="none")}
    if cuda:
        configs = {label: config for label in FAST_PATHS
                   if not (config := train_config(label)).cuda_graphs or config.memory_format in graphs}
    row = table(f"Profile of one training step, batch 1, {torch.get_num_threads()} thread(s) (per step: wall ms min / "
                "median; scalar reads outside the fused Adam kernel in brackets):",
                ["setup", "loop", "wall ms", "ATen calls", "scalar reads", "kernel launches", "syncs", "device ms",
                 "plain / this"])
    rows = []
    for name, (model_config, size) in setups.items():
        g = torch.Generator().manual_seed(0)
        batch = {d: torch.rand(1, 3, size, size, generator=g).mul(2).sub(1).to(device) for d in "AB"}
        plain = PlainLoop(model_config, device)
        loops = {"plain loop (reference.PlainLoop)": lambda: plain.step(batch["A"], batch["B"])}
        for label, config in configs.items():
            trainer = Trainer(config, model_config, device)
            for _ in range(config.pool_size + 2 if config.cuda_graphs else 0):  # past the pools' fill and the capture
                trainer.train_step(batch)
            if config.cuda_graphs and trainer.graph is None:  # the capture failed here (e.g. out of memory)
                print(f"({name}, {label}: the capture failed, so it is not timed)")
                continue
            loops[label] = lambda t=trainer: (t.set_lr(1.0), t.train_step(batch))
        wall = timed(loops, steps, 3, device)  # interleaved: a change of load hits all alike
        base = wall["plain loop (reference.PlainLoop)"]["median"]
        for loop, fn in loops.items():
            m = {"wall_ms": {k: v * 1000 if k != "n" else v for k, v in wall[loop].items()},
                 **profile_counts(fn, profiled, device)}
            rows.append(r := {"setup": name, "loop": loop, **m, "plain_over_this": base / wall[loop]["median"]})
            row(name, loop, f"{m['wall_ms']['min']:.1f} / {m['wall_ms']['median']:.1f}", f"{m['aten_calls']:.0f}",
                f"{m['scalar_reads']:.0f} ({m['scalar_reads_outside_fused_adam']:.0f})", f"{m['kernel_launches']:.0f}",
                f"{m['syncs']:.0f}", f"{m['device_ms']:.2f}", f"{r['plain_over_this']:.2f}x")
    torch.set_num_threads(threads)
    return rows


def graph_checks(device: str, layout: str) -> dict:
    """--cuda-graphs against the eager step (reference.graphs_against_eager) in one layout, in float32
    and, where the GPU has it, in bf16 autocast (what --amp auto trains in); a failure is recorded, not
    raised. `ok` when every case passed."""
    r: dict = {}
    for amp in ("none", "bf16") if torch.cuda.is_bf16_supported() else ("none",):
        try:
            r[amp] = graphs_against_eager(torch.device(device), ModelConfig(ngf=16, ndf=16, n_blocks=3), amp=amp,
                                          memory_format=layout)
        except Exception as e:  # a capture that fails on this torch or GPU: the eager step stands
            r[amp] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
    r["ok"] = all(x["ok"] for x in r.values())
    return r


def _send_graph_checks(device: str, layout: str, conn) -> None:
    conn.send(graph_checks(device, layout))


def check_graphs(device: torch.device, timeout: float = 120) -> dict:
    """graph_checks for each layout in a process of its own, so that a graph that faults the GPU (a
    sticky CUDA error, which would fail every later CUDA call) or hangs it, or a capture CUDA refused
    midway, takes only that process down; the benchmark goes on without graphs in that layout, as
    when a check disagrees."""
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")  # CUDA is already initialised here: no fork
    r = {}
    for layout in ("channels_last", "nchw"):
        receive, send = spawn.Pipe(duplex=False)
        process = spawn.Process(target=_send_graph_checks, args=(str(device), layout, send), daemon=True)
        process.start()
        send.close()
        try:
            if not receive.poll(timeout):
                raise TimeoutError(f"no answer in {timeout:g} s")
            r[layout] = receive.recv()
        except (EOFError, OSError, TimeoutError) as e:  # it died (EOF) or hung
            r[layout] = {"ok": False, "error": f"the check's process ended: {type(e).__name__}: {e or 'it died'}"}
        finally:
            process.kill()
            process.join()
    print(f"\nCUDA graphs against the eager step: {json.dumps(r)}")
    return r
