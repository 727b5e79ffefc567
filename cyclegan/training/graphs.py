"""CUDA graphs (--cuda-graphs): the training step captured once and replayed, so that the host issues
one launch a step instead of thousands; checked at capture against the eager step, which training
falls back to. Imported only when --cuda-graphs is on; the step itself (step.py) knows nothing of it
but the skip flag that `undone()` sets."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from ..data import FIXED_SIZE
from ..files import one_line

if TYPE_CHECKING:
    from .step import Trainer


def step_graph(trainer: "Trainer") -> "StepGraph":
    """The trainer's StepGraph, where a graph can be captured; a ValueError naming why not elsewhere."""
    c = trainer.config
    if trainer.device.type != "cuda" or c.compile or trainer.distributed or trainer.amp == "fp16":
        raise ValueError(f"--cuda-graphs needs a CUDA device, without --compile, DDP or --amp fp16 "
                         f"(training on {trainer.device}{', compiled' if c.compile else ''}"
                         f"{', DDP' if trainer.distributed else ''}, amp {trainer.amp})")
    if c.preprocess not in FIXED_SIZE:  # a graph is captured for one shape
        raise ValueError(f"--cuda-graphs needs batches of one size: --preprocess {' or '.join(FIXED_SIZE)} "
                         f"(not {c.preprocess})")
    return StepGraph(trainer)


class CaptureBroken(RuntimeError):
    """CUDA refused a capture midway (a call it forbids while capturing): the process's current stream
    and its memory allocator are left in capture mode, so training cannot safely go on in it."""


class StepGraph:
    """Trainer.step_on captured as one CUDA graph and replayed: the host issues one launch a step
    instead of thousands. Captured at the first replay (the pools full, so that their fill phase,
    a host branch, is over), after warm-up steps on a side stream inside `undone()` (they
    update nothing and leave no trace), then checked (`check`): one replay must give the losses and
    the update of one eager step on the same batch from the same state. Each replay reads the batch
    from static inputs, the learning rate from the optimisers' lr tensors, the skip flag from the
    trainer's, and the pools' generators from their registered state."""

    def __init__(self, trainer: "Trainer") -> None:
        self.trainer = trainer
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.losses: dict[str, torch.Tensor] = {}

    def replay(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.inputs is None or self.inputs[0].shape != real_A.shape or self.inputs[1].shape != real_B.shape:
            self.capture(real_A, real_B)
        self.inputs[0].copy_(real_A, non_blocking=True)
        self.inputs[1].copy_(real_B, non_blocking=True)
        self.graph.replay()
        return self.losses
    def replay_or_none(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """The step replayed, once the pools are full; None while they fill, and from a capture that
        failed on (one warning; the trainer drops this graph and steps eagerly from then on)."""
        t = self.trainer
        if not (t.pool_A.full and t.pool_B.full):
            return None
        try:
            return self.replay(real_A, real_B)
        except CaptureBroken:
            raise
        except Exception as e:  # a capture this torch or GPU refuses, or one that differs: the eager step goes on
            print(f"warning: --cuda-graphs: the training step could not be captured ({type(e).__name__}: "
                  f"{one_line(e, 300)}); training goes on without CUDA graphs", file=sys.stderr)
            t.graph = None
            return None


    def capture(self, real_A: torch.Tensor, real_B: torch.Tensor) -> None:
        """Warm up, capture and check; on failure the trainer is left as an eager step would find it
        (the pools' generators are replaced by fresh ones in their saved state, the gradients dropped)
        and the error is raised for Trainer.train_step to fall back on, except CaptureBroken."""
        t = self.trainer
        pools = (t.pool_A, t.pool_B)
        rng = [pool.rng.get_state() for pool in pools]
        stream = torch.cuda.current_stream(t.device)
        capturing = False
        try:
            self.inputs = (real_A.clone(), real_B.clone())
            with undone(t):
                side = torch.cuda.Stream(t.device)
                side.wait_stream(stream)
                try:
                    with torch.cuda.stream(side):  # lazily built state (Adam's moments, cuDNN plans) is made here
                        for _ in range(3):
                            t.step_on(*self.inputs)
                finally:  # undone()'s restores follow the warm-up's kernels, also when one of them raised
                    stream.wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            for pool in pools:
                self.graph.register_generator_state(pool.rng)
            capturing = True
            # thread_local: the DataLoader's pin-memory thread may call CUDA while this thread captures
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.losses = t.step_on(*self.inputs)
            capturing = False
            self.check()
        except Exception as e:
            # Where CUDA ended the capture itself, torch.cuda.graph could not end it: the current stream
            # is still its capture stream (and the allocator still routes into the graph's pool).
            broken = capturing and torch.cuda.current_stream(t.device) != stream
            self.graph, self.inputs, self.losses = None, None, {}
            for pool, state in zip(pools, rng):  # a generator a failed capture registered is not reused
                pool.rng = torch.Generator(pool.device)
                pool.rng.set_state(state)
            for opt in (t.opt_G, t.opt_D):  # gradients a failed capture allocated hold no values
                opt.zero_grad(set_to_none=True)
            if broken:
                torch.cuda.set_stream(stream)
                raise CaptureBroken(f"--cuda-graphs: CUDA refused to capture the training step ({type(e).__name__}: "
                                    f"{one_line(e, 300)}); this process cannot safely go on: rerun (or --resume) "
                                    "without --cuda-graphs") from e
            raise

    def check(self, rtol: float = 1e-3, update_tol: float = 0.5) -> None:
        """One replay against one eager step on the same batch from the same state, both inside
        `undone()` (no trace): first without updates, the same losses within `rtol`; then with them, at
        half the learning rate the graph was captured with, the same weights after, within `update_tol`
        of the eager update's norm (cuDNN's non-deterministic kernels and the Adam moments of
        near-zero gradients make them differ a little; a replay that skips its update or uses the
        capture's learning rate differs by the whole update). Raises a RuntimeError naming what differs:
        a graph that computes something else than the step (e.g. from a stale input or a value frozen
        at capture). gpu_check's graphs_against_eager also compares weights after 50 steps."""
        t = self.trainer
        with undone(t):
            eager = {k: v.item() for k, v in t.step_on(*self.inputs).items()}
        with undone(t):
            self.graph.replay()
            replayed = {k: v.item() for k, v in self.losses.items()}
        for name, value in eager.items():
            if not abs(replayed[name] - value) <= rtol * max(abs(value), abs(replayed[name])) + 1e-6:
                raise RuntimeError(f"the replayed step's {name} loss is {replayed[name]:.6g}, the eager step's "
                                   f"{value:.6g}")
        self.check_update(update_tol)

    def check_update(self, tol: float) -> None:
        t = self.trainer
        lr = t.opt_G.param_groups[0]["lr"]
        factor = float(lr) / t.config.lr if t.config.lr else 0.0
        if not factor:  # nothing moves at lr 0
            return
        weights = [p.detach() for p in t.model.parameters()]
        try:
            after = []
            for step in (lambda: t.step_on(*self.inputs), self.graph.replay):
                with undone(t, update=True):
                    t.set_lr(factor / 2)
                    step()
                    after.append([w.clone() for w in weights])
        finally:
            t.set_lr(factor)
        norm = lambda tensors: torch.stack(torch._foreach_norm(tensors)).norm().item()  # noqa: E731
        # undone() put the weights back: they are those both steps started from
        moved, differs = norm(torch._foreach_sub(after[0], weights)), norm(torch._foreach_sub(after[1], after[0]))
        if differs > tol * moved:
            raise RuntimeError(f"the replayed step's update differs from the eager step's by {differs / moved:.0%} "
                               f"of its norm ({moved:.3g}) at lr {t.config.lr * factor / 2:.3g}")


@contextmanager
def undone(trainer: "Trainer", update: bool = False):
    """Steps taken inside update no weight and no optimiser state (the trainer's skip flag, which the
    step and a captured graph read, is set) and leave no trace: the pools, their random draws, the
    weight average and the tallies are put back as they were. With `update`, the steps inside do
    update, and the weights and the optimisers' state (which must exist) are put back too, in place
    (a captured graph holds their addresses)."""
    t = trainer
    pools = [(pool, None if pool.images is None else pool.images.clone(), pool.filled, pool.rng.get_state())
             for pool in (t.pool_A, t.pool_B)]
    restored = t.tally.tensors()
    if t.ema is not None:
        restored += list(t.ema.parameters())
    if update:
        restored += [p.detach() for p in t.model.parameters()]
        restored += [v for opt in (t.opt_G, t.opt_D) for state in opt.state.values()
                     for v in state.values() if isinstance(v, torch.Tensor)]
    saved = [tensor.clone() for tensor in restored]
    names = list(t.tally.names)
    t.skip.fill_(not update)
    try:
        yield
    finally:
        t.skip.fill_(False)
        for pool, images, filled, rng in pools:
            if images is not None:
                pool.images.copy_(images)
            pool.filled = filled
            pool.rng.set_state(rng)
        with torch.no_grad():
            for tensor, before in zip(restored, saved):
                tensor.copy_(before)
        if not names:  # the loss sums were made inside: they stay (a graph adds into them), at zero
            t.tally.sums.zero_()
