"""Triton SSD (Mamba-2): launchers (imported only when the backend is used).

The single-direction op is the bidirectional machinery with one direction: every per-direction
tensor (dt, A, D, dt_bias, initial states, and B/C, shared ones as stride-0 views) gets a
leading axis of size ``ndir`` (1 or 2), x is read per direction or shared (direction stride 0),
and the same kernels of ``triton_fwd`` / ``triton_bwd`` run. Autograd belongs to the
``mambazoo::ssd`` / ``mambazoo::bidirectional_ssd`` ops (``library_ops``), which call
:func:`ssd_forward` and :func:`ssd_backward`. Launchers make no ``torch.cuda`` call, so the same
code runs the kernels on CPU tensors under ``TRITON_INTERPRET=1``.

The kernels use their own chunk (:meth:`SSDConfig.chunk_for`: 32 or 64 tokens): ``chunk_size``
changes the reference's speed and memory, not the result, and the kernels' register tiles fix
what is fast.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch

from .._backend import sm_count
from .reference import DEFAULT_DT_LIMIT
from .triton_bwd import ssd_bwd_kernel
from .triton_common import segment_combine_kernel
from .triton_fwd import ssd_fwd_kernel

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_D_STATE = 256


@dataclass(frozen=True)
class SSDConfig:
    """Tiling: ``chunk`` tokens per chunk (None: see :meth:`chunk_for`), ``block_p`` headdim
    channels per program (both powers of two >= 16), warps per program (None: 4 for the forward
    up to d_state 64, else 8; the backward holds twice the tiles), the number of sequence
    segments (None: :func:`_best_segments`' choice for the GPU), whether the forward prefetches
    the next chunk's rows into L1 (None: :func:`prefetch_default`) and how many state-pass
    segments make one segment (None: :func:`_state_split`'s choice)."""

    chunk: Optional[int] = None
    block_p: int = 64
    fwd_warps: Optional[int] = None
    bwd_warps: Optional[int] = None
    segments: Optional[int] = None
    prefetch: Optional[bool] = None
    state_split: Optional[int] = None

    def __post_init__(self):
        for name in ("chunk", "block_p"):
            value = getattr(self, name)
            if value is not None and (value < 16 or value & (value - 1)):
                raise ValueError(f"{name} must be a power of two >= 16, got {value!r}")
        for name in ("fwd_warps", "bwd_warps"):
            value = getattr(self, name)
            if value is not None and value not in (1, 2, 4, 8, 16, 32):
                raise ValueError(f"{name} must be None or a power of two up to 32, got {value!r}")
        for name in ("segments", "state_split"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be None or >= 1, got {value!r}")

    def chunk_for(self, length: int, need_grad: bool) -> int:
        """32 tokens, except 64 for inference on sequences up to 256 tokens.

        Measured on one H200 (bf16, 2026-11-28, benchmarks/results/ssd_2026-11-28_tune.json):
        32 beats 64 on forward+backward at every row (LM 8k 6.6 vs 10.5 ms, DNA 131k 6.7 vs
        10.7 ms, Vim-S 224 1.40 vs 1.59 ms: the backward's [chunk, chunk] tiles spill at 64)
        and on the forward at Vim-S 1024 (0.215 vs 0.321 ms); 64 wins only the short forward
        (Vim-S 224: 0.150 vs 0.182 ms). 16 loses too (2026-11-29, ``ssd_2026-11-29_s12d.json``:
        fwd+bwd LM 8k 5.01 vs 4.48 ms, DNA 131k 5.83 vs 5.01 ms, although its backward spills less).
        """
        if self.chunk is not None:
            return self.chunk
        return 64 if not need_grad and length <= 256 else 32

    def warps(self, block_n: int, backward: bool) -> int:
        chosen = self.bwd_warps if backward else self.fwd_warps
        if chosen is not None:
            return chosen
        return 8 if backward or block_n > 64 else 4


# Benchmarks and tests may replace this (tiling only; results do not depend on it beyond rounding).
CONFIG: Optional[SSDConfig] = None


def unsupported_reason(x, dt, A, B, C, z=None) -> Optional[str]:
    """Why the Triton kernels cannot take these arguments, or ``None`` if they can."""
    for name, tensor in (("x", x), ("dt", dt), ("B", B), ("C", C), ("z", z)):
        if tensor is not None and tensor.dtype not in KERNEL_DTYPES:
            return f"{name} has dtype {tensor.dtype}; the Triton kernels take float32, bfloat16 or float16"
    if B.shape[-1] > MAX_D_STATE:
        return f"d_state {B.shape[-1]} > {MAX_D_STATE} does not fit the Triton kernels' register tiles"
    return None


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@dataclass(frozen=True)
class _Plan:
    chunk: int
    block_p: int
    block_n: int
    n_pb: int
    n_chunks: int
    n_segs: int
    seg_chunks: int
    state_split: int  # state-pass segments per full-pass segment
    cfg: SSDConfig

    @property
    def n_state_segs(self) -> int:
        return cdiv(self.n_chunks, self.seg_chunks // self.state_split)

    def segments(self, state_pass: bool):
        """(segments, chunks per segment) of the state pass or of the full pass."""
        if state_pass:
            return self.n_state_segs, self.seg_chunks // self.state_split
        return self.n_segs, self.seg_chunks


def _plan(batch: int, length: int, heads: int, headdim: int, d_state: int, ndir: int, need_grad: bool,
          device: torch.device) -> _Plan:
    cfg = CONFIG if CONFIG is not None else SSDConfig()
    chunk = cfg.chunk_for(length, need_grad)
    block_n = max(16, _pow2(d_state))
    block_p = max(16, min(cfg.block_p, _pow2(headdim)))
    n_pb = cdiv(headdim, block_p)
    n_chunks = cdiv(length, chunk)
    if cfg.segments is not None:
        n_segs = max(1, min(cfg.segments, n_chunks))
    else:
        n_segs = _best_segments(batch * heads * n_pb * ndir, n_chunks, sm_count(device), cfg.warps(block_n, need_grad))
    seg_chunks = cdiv(n_chunks, n_segs)
    split = 1
    if n_segs > 1:
        split = cfg.state_split if cfg.state_split is not None else _state_split(
            batch * heads * n_pb * ndir * n_segs, sm_count(device))
        split = max(1, min(split, seg_chunks))
        seg_chunks = cdiv(seg_chunks, split) * split  # whole state-pass segments per segment
    n_segs = cdiv(n_chunks, seg_chunks)
    return _Plan(chunk, block_p, block_n, n_pb, n_chunks, n_segs, seg_chunks, split if n_segs > 1 else 1, cfg)


def prefetch_default(bidirectional: bool) -> bool:
    """Whether the forward prefetches the next chunk's rows into L1: for the bidirectional op only.

    H200, bf16, 2026-11-29 (``benchmarks/results/ssd_2026-11-29_s12c.json``, configs "pf" /
    "nopf", CUDA-graph forward ms with / without): bidirectional Vim-S 224 0.401 / 0.430 (vim2
    layout 0.353 / 0.388), Vim-S 1024 0.609 / 0.671 (0.542 / 0.609); single direction Vim-S 224
    0.141 / 0.145, Vim-S 1024 0.244 / 0.223, LM 8k 0.711 / 0.627, DNA 131k 1.036 / 0.900, packed
    0.202 / 0.185 (its pointers cost registers, and at d_state 128 the lines compete with the
    tiles for L1). The backward lost with an L2 prefetch (LM 8k 4.76 vs 4.35 ms fwd+bwd, ``_s12b``)
    and has none."""
    return bidirectional


# The fused kernels use over 200 registers per thread (offline sm_90 compiles, triton 3.6,
# 2026-11-29: forward 217-243 with 4 warps at d_state 64 or 8 at 128; backward 255 with 8), so an
# SM holds 8 of their warps: two 4-warp programs or one 8-warp one.
WARPS_PER_SM = 8


@functools.lru_cache(maxsize=4096)
def _best_segments(programs: int, n_chunks: int, sms: int, warps: int) -> int:
    """Segments that fill one wave of ``warps``-warp programs (the backward's when training: it is
    most of the time), at most half the chunks. Segments pay only for SMs that would idle: a state
    pass costs a share of the full one, and more resident programs run each chunk slower.

    H200, bf16, 2026-11-29 (``benchmarks/results/ssd_2026-11-29_s11_segments.json``; eager forward+backward
    ms, graph forward ms): LM 8k (128 programs) 1 segment 6.61 / 0.630, 5 (the earlier plan: 4
    programs per SM assumed) 6.85 / 0.917; DNA 131k (8 programs) 16 segments 7.09 / 0.903, 33
    6.86 / 0.913, 66 6.99 / 0.987; Vim-S 1024 px (96 programs) 1 segment 2.14 / 0.245, 4 2.51 /
    0.201, 5 2.32 / 0.188, 22 1.89 / 0.274 (eager times vary by about 0.3 ms between runs)."""
    slots = sms * max(1, WARPS_PER_SM // warps)
    return max(1, min(n_chunks // 2, slots // programs))


# The state passes run 4-warp programs, as many segments as the SMs hold of the backward's
# (offline sm_90 compiles at d_state 128, triton 3.6, 2026-11-29: the backward's state pass 124
# registers at 4 warps, four per SM; the forward's 241, two per SM, so it runs two waves).
STATE_PASS_WARPS = 4
STATE_PROGRAMS_PER_SM = 4


@functools.lru_cache(maxsize=4096)
def _state_split(programs: int, sms: int) -> int:
    """State-pass segments per full-pass segment: the state passes (one [headdim, chunk] x
    [chunk, d_state] product per chunk) wait on each chunk's loads, so they run on shorter
    segments, as many as the SMs hold at once (``programs``: the full pass's).

    H200, bf16, 2026-11-29, same run (``benchmarks/results/ssd_2026-11-29_s14a.json`` vs
    ``_s14a_base.json``, 16 segments of 8-warp state passes before, 64 of 4 warps now): DNA 131k
    forward 0.911 -> 0.813 ms, forward+backward 4.50 -> 4.34 (CUDA graph 4.62 -> 4.45); packed
    8 x 4097 graph forward 0.186 -> 0.192, forward+backward 1.27 -> 1.23."""
    return max(1, sms * STATE_PROGRAMS_PER_SM // programs)


def _combine(local, decay, init, every, n_out, reverse):
    """The carry entering every full-pass segment (``segment_combine_kernel``)."""
    ndir, batch, heads, n_segs, headdim, d_state = local.shape
    pn = headdim * d_state
    carry = local.new_empty((ndir, batch, heads, n_out, headdim, d_state))
    block, segs = min(64, _pow2(pn)), min(64, _pow2(n_segs))
    segment_combine_kernel[(ndir * batch * heads, cdiv(pn, block))](
        local, decay, local if init is None else init, carry, n_segs, n_out, every, pn,
        BLOCK=block, SEGS=segs, HAS_INIT=init is not None, REVERSE=reverse, num_warps=4)
    return carry


def _bc_strides(t: torch.Tensor):
    return tuple(t.stride())  # (dir, batch, token, group, state)


def _common_args(x, B, C, D, z, bias, seq_idx, softplus, dt_limit, plan):
    has_limit = tuple(dt_limit) != DEFAULT_DT_LIMIT
    flags = dict(
        Q=plan.chunk, BP=plan.block_p, BN=plan.block_n, LOWP=x.dtype != torch.float32,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=bool(softplus),
        HAS_LIMIT=has_limit, HAS_SEQ=seq_idx is not None,
    )
    limits = (float(dt_limit[0]), float(dt_limit[1])) if has_limit else (0.0, 0.0)
    return flags, limits



def _forward(x, dt, A, B, C, D, z, bias, h0, seq_idx, softplus, dt_limit, scale, need_grad):
    """Kernel layouts in (see :func:`_kernel_args`); returns out, final states and, with
    ``need_grad``, what the backward needs (checkpoints, ypre, segment decays; else ``None``)."""
    ndir = dt.shape[0]
    batch, length, heads, headdim = x.shape[-4:]
    groups, d_state = B.shape[-2:]
    bidir = ndir == 2
    plan = _plan(batch, length, heads, headdim, d_state, ndir, need_grad, x.device)
    flags, (dt_min, dt_max) = _common_args(x, B, C, D, z, bias, seq_idx, softplus, dt_limit, plan)
    f32 = dict(dtype=torch.float32, device=x.device)
    nc, n_segs = plan.n_chunks, plan.n_segs
    out = x.new_empty((batch, length, heads, headdim))
    final = torch.empty((ndir, batch, heads, headdim, d_state), **f32)
    # checkpoints in x's dtype: the backward's dots take them so (half the bytes of fp32 at bf16)
    ckpt = x.new_empty((ndir, batch, heads, nc, headdim, d_state)) if need_grad else final
    ybuf = torch.empty((batch, length, heads, headdim), **f32) if bidir else final
    flag = torch.zeros((batch * heads, plan.n_pb, nc), dtype=torch.int32, device=x.device) if bidir else final
    need_ypre = _stores_ypre(bidir, z, need_grad)
    ypre = torch.empty_like(out) if need_ypre else out
    n_state = plan.n_state_segs
    seg = torch.empty((ndir, batch, heads, n_state, headdim, d_state), **f32) if n_segs > 1 else final
    segdecay = torch.empty((ndir, batch, heads, n_state), **f32)

    def launch(state_pass, init, store_ckpt):
        segs, seg_chunks = plan.segments(state_pass)
        ssd_fwd_kernel[(batch * heads, plan.n_pb, ndir * segs)](
            x, dt, A, B, C, x if D is None else D, x if z is None else z, A if bias is None else bias,
            x if seq_idx is None else seq_idx, final if init is None else init,
            out, final, ckpt, ybuf, flag, ypre, seg, segdecay,
            batch, length, heads, headdim, d_state, heads // groups, nc, segs, seg_chunks,
            _x_dir_stride(x), *_bc_strides(B), *_bc_strides(C), *_d_strides(D), int(init is not None),
            int(store_ckpt),
            int(need_ypre), scale, dt_min, dt_max, STATE_PASS=state_pass, BIDIR=bidir,
            PREFETCH=prefetch_default(bidir) if plan.cfg.prefetch is None else plan.cfg.prefetch,
            num_warps=STATE_PASS_WARPS if state_pass else plan.cfg.warps(plan.block_n, False), **flags,
        )

    if n_segs > 1:
        launch(True, None, False)
        launch(False, _combine(seg, segdecay, h0, plan.state_split, n_segs, reverse=False), need_grad)
    else:
        launch(False, h0, need_grad)
    if not need_grad:
        return out, final, None, None, None
    return out, final, ckpt, ypre if need_ypre else None, segdecay if n_segs > 1 else None


def _backward(x, dt, A, B, C, D, z, bias, seq_idx, softplus, dt_limit, scale, ckpt, ypre, segdecay, dout, dfinal):
    """Kernel layouts in; gradients in kernel layouts (fp32 except dx of one direction and dz):
    dx ``(2, ...)`` per direction for the bidirectional op (summed by the caller when x is shared),
    dt, A, B, C (per direction), D per channel, z, dt_bias, initial states."""
    ndir = dt.shape[0]
    batch, length, heads, headdim = x.shape[-4:]
    groups, d_state = B.shape[-2:]
    bidir = ndir == 2
    plan = _plan(batch, length, heads, headdim, d_state, ndir, True, x.device)
    flags, (dt_min, dt_max) = _common_args(x, B, C, D, z, bias, seq_idx, softplus, dt_limit, plan)
    f32 = dict(dtype=torch.float32, device=x.device)
    nc, n_segs, n_pb = plan.n_chunks, plan.n_segs, plan.n_pb
    dx = torch.empty((2, batch, length, heads, headdim), **f32) if bidir else torch.empty_like(x)
    dz = torch.empty_like(z) if z is not None else None
    # dB / dC per (head, headdim block), summed below: bf16 partials for bf16 B / C (triton_bwd's docstring)
    dB, dC = (torch.empty((ndir, batch, length, heads, n_pb, d_state), device=x.device,
                          dtype=torch.bfloat16 if t.dtype == torch.bfloat16 else torch.float32) for t in (B, C))
    ddt = torch.empty((ndir, n_pb, batch, length, heads), **f32)
    dAb = torch.empty((2, ndir, batch, heads, n_pb, nc), **f32)  # dA, d dt_bias per chunk
    dD = torch.empty((ndir, batch, heads, n_segs, headdim), **f32) if D is not None else None
    dinit = torch.empty((ndir, batch, heads, headdim, d_state), **f32)
    n_state = plan.n_state_segs
    seg = torch.empty((ndir, batch, heads, n_state, headdim, d_state), **f32) if n_segs > 1 else dinit

    def launch(state_pass, ginit):
        segs, seg_chunks = plan.segments(state_pass)
        ssd_bwd_kernel[(batch * heads, n_pb, ndir * segs)](
            x, dt, A, B, C, x if D is None else D, x if z is None else z, A if bias is None else bias,
            x if seq_idx is None else seq_idx, ckpt, dout, dout if ypre is None else ypre,
            dinit if ginit is None else ginit,
            dx, dx if dz is None else dz, dB, dC, ddt, dAb, ddt if dD is None else dD, dinit, seg,
            batch, length, heads, headdim, d_state, heads // groups, nc, segs, seg_chunks,
            _x_dir_stride(x), *_bc_strides(B), *_bc_strides(C), *_d_strides(D), int(ginit is not None), scale,
            dt_min, dt_max,
            STATE_PASS=state_pass, BIDIR=bidir,
            num_warps=STATE_PASS_WARPS if state_pass else plan.cfg.warps(plan.block_n, True), **flags,
        )

    if n_segs > 1:
        launch(True, None)
        launch(False, _combine(seg, segdecay, dfinal, plan.state_split, n_segs, reverse=True))
    else:
        launch(False, dfinal)

    ddt = ddt[:, 0] if n_pb == 1 else ddt.sum(1)  # (ndir, batch, length, heads)
    dA = dAb[0].sum((1, 3, 4))  # (ndir, heads)

    def bc_grad(t):  # per (head, headdim block) partials -> per group, summed in fp32
        return t.view(ndir, batch, length, groups, -1, d_state).sum(4, dtype=torch.float32)

    return (dx, ddt, dA, bc_grad(dB), bc_grad(dC), None if dD is None else dD.sum((1, 3)), dz,
            None if bias is None else dAb[1].sum((1, 3, 4)), dinit)


def _f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.to(torch.float32).contiguous()


def _x_dir_stride(x: torch.Tensor) -> int:
    """Direction stride of the kernels' x: 0 when the directions share one ``(batch, L, heads, headdim)``."""
    return x.stride(0) if x.dim() == 5 else 0


def _d_strides(D: Optional[torch.Tensor]):
    """(head, channel) strides of the kernels' contiguous D: per head ``(ndir, heads)`` is read
    with a channel stride of 0 (no per-channel copy)."""
    if D is None:
        return 0, 0
    return (1, 0) if D.dim() == 2 else (D.shape[-1], 1)


def _stores_ypre(bidirectional: bool, z, save: bool) -> bool:
    return save and bidirectional and z is not None


# Entry points of the torch.library ops (``ssd/library_ops``): public layouts in and out; the ops
# own autograd, these only launch. Every tensor the backward needs besides the inputs is a plain
# output of the forward ((0,)-shaped when not stored), and ``saved_shapes`` gives their shapes
# without launching, for the ops' fake implementations.


def _kernel_args(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, bidirectional: bool):
    """Public layouts -> the kernels': a leading ``ndir`` axis on every per-direction tensor (shared
    B/C as stride-0 views, any other strides kept), contiguous x (shared 4-D or per direction 5-D),
    dt, z and seq_idx, fp32 contiguous A, D (per head or per channel), dt_bias and initial states."""
    ndir = 2 if bidirectional else 1
    lead = (lambda t: t) if bidirectional else (lambda t: None if t is None else t.unsqueeze(0))
    both = lambda t: t if t.dim() == 5 else t.unsqueeze(0).expand(ndir, *t.shape)  # noqa: E731
    contiguous = lambda t: None if t is None else t.contiguous()  # noqa: E731
    return (x.contiguous(), lead(dt).contiguous(), _f32(lead(A)), both(B), both(C), _f32(lead(D)), contiguous(z),
            _f32(lead(dt_bias)), _f32(lead(initial_states)), contiguous(seq_idx))


def saved_shapes(x, dt, B, z, bidirectional: bool, save: bool):
    """Shapes of the (checkpoints, ypre, segment decays) outputs of :func:`ssd_forward`, for fake
    tensors. The tiling is planned on concrete sizes, so under dynamic shapes a compiled graph
    guards on (specializes) the sizes of the Triton SSD's inputs."""
    if not save:
        return (0,), (0,), (0,)
    ndir = 2 if bidirectional else 1
    batch, length, heads, headdim = (int(s) for s in x.shape[-4:])
    d_state = int(B.shape[-1])
    plan = _plan(batch, length, heads, headdim, d_state, ndir, True, x.device)
    ckpt = (ndir, batch, heads, plan.n_chunks, headdim, d_state)
    ypre = (batch, length, heads, headdim) if _stores_ypre(bidirectional, z, save) else (0,)
    segdecay = (ndir, batch, heads, plan.n_state_segs) if plan.n_segs > 1 else (0,)
    return ckpt, ypre, segdecay


def ssd_forward(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, softplus: bool, dt_limit, scale: float,
                bidirectional: bool, save: bool):
    """Forward kernels: ``(out, final states, checkpoints, ypre, segment decays)``; the last three
    feed :func:`ssd_backward` and are stored only with ``save`` ((0,)-shaped otherwise)."""
    kargs = _kernel_args(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, bidirectional)
    out, final, ckpt, ypre, segdecay = _forward(*kargs, softplus, tuple(dt_limit), scale, save)
    empty = lambda dtype=torch.float32: x.new_empty(0, dtype=dtype)  # noqa: E731
    return (
        out, final if bidirectional else final[0],
        empty(x.dtype) if ckpt is None else ckpt, empty(x.dtype) if ypre is None else ypre,
        empty() if segdecay is None else segdecay,
    )


def ssd_backward(dout, dfinal, x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, ckpt, ypre, segdecay,
                 softplus: bool, dt_limit, scale: float, bidirectional: bool):
    """Backward kernels from :func:`ssd_forward`'s stored outputs: the gradients of
    ``(x, dt, A, B, C, D, z, dt_bias, initial_states)`` in their shapes and dtypes, ``None`` for
    absent inputs. Inputs the directions share (x, B, C) get the sum of both directions'."""
    if ckpt.numel() == 0:
        raise RuntimeError("the SSD forward ran without save_for_backward; no gradient possible")
    inputs = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    *kargs, _, kseq = _kernel_args(*inputs, seq_idx, bidirectional)  # no initial states
    if dfinal.numel() == 0:  # a (0,) placeholder: no final-state gradient (the adjoint starts at zero)
        dfinal = None
    else:
        dfinal = (dfinal if bidirectional else dfinal.unsqueeze(0)).to(torch.float32).contiguous()
    grads = _backward(*kargs, kseq, softplus, tuple(dt_limit), scale, ckpt, ypre if ypre.numel() else None,
                      segdecay if segdecay.numel() else None, dout.contiguous(), dfinal)
    lead = 1 if bidirectional else 0  # dims of the direction axis in the public layout
    result = []
    for name, grad, t in zip(("x", "dt", "A", "B", "C", "D"), grads, inputs):
        if t is None:
            result.append(None)
            continue
        if bidirectional and name in ("x", "B", "C") and t.dim() == 4:  # shared by the directions
            grad = grad.sum(0)
        elif name == "D" and t.dim() == lead + 1:  # per head
            grad = grad.sum(-1)
        result.append(grad.reshape(t.shape).to(t.dtype))
    for grad, t in zip(grads[6:], inputs[6:]):
        result.append(None if t is None else grad.reshape(t.shape).to(t.dtype))
    return tuple(result)
