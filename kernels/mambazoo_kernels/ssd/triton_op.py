"""Triton SSD (Mamba-2): autograd function and launchers (imported only when the backend is used).

The single-direction op is the bidirectional machinery with one direction: every per-direction
tensor (dt, A, D, dt_bias, initial states, and B/C, shared ones as stride-0 views) gets a
leading axis of size ``ndir`` (1 or 2) and one autograd function runs the kernels of
``triton_fwd`` / ``triton_bwd``. Launchers make no ``torch.cuda`` call, so the same code runs
the kernels on CPU tensors under ``TRITON_INTERPRET=1``.

The kernels use their own chunk (:meth:`SSDConfig.chunk_for`: 32 or 64 tokens): ``chunk_size``
changes the reference's speed and memory, not the result, and the kernels' register tiles fix
what is fast.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .reference import DEFAULT_DT_LIMIT, process_dt
from .triton_bwd import ssd_bwd_kernel
from .triton_common import segment_combine_kernel
from .triton_fwd import ssd_fwd_kernel

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_D_STATE = 256


@dataclass(frozen=True)
class SSDConfig:
    """Tiling: ``chunk`` tokens per chunk (None: see :meth:`chunk_for`), ``block_p`` headdim
    channels per program (both powers of two >= 16), warps per program (None: 4 for the forward
    up to d_state 64, else 8; the backward holds twice the tiles), and the number of sequence
    segments (None: enough for ``target_programs`` programs; segmenting costs one extra state
    pass however many segments there are)."""

    chunk: Optional[int] = None
    block_p: int = 64
    fwd_warps: Optional[int] = None
    bwd_warps: Optional[int] = None
    segments: Optional[int] = None
    target_programs: int = 4 * 132  # a few waves on an H100/H200-class GPU (132 SMs)

    def chunk_for(self, length: int, need_grad: bool) -> int:
        """32 tokens, except 64 for inference on sequences up to 256 tokens.

        Measured on one H200 (bf16, 2026-11-28, benchmarks/results/ssd_2026-11-28_tune.json):
        32 beats 64 on forward+backward at every row (LM 8k 6.6 vs 10.5 ms, DNA 131k 6.7 vs
        10.7 ms, Vim-S 224 1.40 vs 1.59 ms: the backward's [chunk, chunk] tiles spill at 64)
        and on the forward at Vim-S 1024 (0.215 vs 0.321 ms); 64 wins only the short forward
        (Vim-S 224: 0.150 vs 0.182 ms).
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
    cfg: SSDConfig


def _plan(batch: int, length: int, heads: int, headdim: int, d_state: int, ndir: int, need_grad: bool) -> _Plan:
    cfg = CONFIG if CONFIG is not None else SSDConfig()
    chunk = cfg.chunk_for(length, need_grad)
    block_p = max(16, min(cfg.block_p, _pow2(headdim)))
    n_pb = cdiv(headdim, block_p)
    n_chunks = cdiv(length, chunk)
    # Cut the sequence into segments when (batch, head, block, direction) programs cannot fill
    # the GPU; segmenting costs a state pass, so only below half of the target.
    if cfg.segments is not None:
        n_segs = max(1, min(cfg.segments, n_chunks))
    else:
        programs = batch * heads * n_pb * ndir
        n_segs = 1 if programs * 2 >= cfg.target_programs or n_chunks < 4 else min(
            cdiv(cfg.target_programs, programs), n_chunks // 2)
    seg_chunks = cdiv(n_chunks, n_segs)
    n_segs = cdiv(n_chunks, seg_chunks)
    return _Plan(chunk, block_p, max(16, _pow2(d_state)), n_pb, n_chunks, n_segs, seg_chunks, cfg)


def _combine(seg, decay, init, reverse):
    ndir, batch, heads, n_segs, headdim, d_state = seg.shape
    pn = headdim * d_state
    block = min(1024, _pow2(pn))
    segment_combine_kernel[(ndir * batch * heads, cdiv(pn, block))](
        seg, decay, seg if init is None else init, ndir * batch * heads, n_segs, pn,
        BLOCK=block, HAS_INIT=init is not None, REVERSE=reverse)


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
    ndir = dt.shape[0]
    batch, length, heads, headdim = x.shape
    groups, d_state = B.shape[-2:]
    bidir = ndir == 2
    plan = _plan(batch, length, heads, headdim, d_state, ndir, need_grad)
    flags, (dt_min, dt_max) = _common_args(x, B, C, D, z, bias, seq_idx, softplus, dt_limit, plan)
    f32 = dict(dtype=torch.float32, device=x.device)
    nc, n_segs = plan.n_chunks, plan.n_segs
    out = torch.empty_like(x)
    final = torch.empty((ndir, batch, heads, headdim, d_state), **f32)
    ckpt = torch.empty((ndir, batch, heads, nc, headdim, d_state), **f32) if need_grad else final
    ybuf = torch.empty((2, batch, length, heads, headdim), **f32) if bidir else final
    flag = torch.zeros((batch * heads, plan.n_pb, nc), dtype=torch.int32, device=x.device) if bidir else final
    need_ypre = need_grad and bidir and z is not None
    ypre = torch.empty_like(x) if need_ypre else out
    seg = torch.empty((ndir, batch, heads, n_segs, headdim, d_state), **f32) if n_segs > 1 else final
    segdecay = torch.empty((ndir, batch, heads, n_segs), **f32)
    grid = (batch * heads, plan.n_pb, ndir * n_segs)

    def launch(state_pass, init, store_ckpt):
        ssd_fwd_kernel[grid](
            x, dt, A, B, C, x if D is None else D, x if z is None else z, A if bias is None else bias,
            x if seq_idx is None else seq_idx, final if init is None else init,
            out, final, ckpt, ybuf, flag, ypre, seg, segdecay,
            batch, length, heads, headdim, d_state, heads // groups, nc, n_segs, plan.seg_chunks,
            *_bc_strides(B), *_bc_strides(C), int(init is not None), int(store_ckpt), int(need_ypre),
            scale, dt_min, dt_max, STATE_PASS=state_pass, BIDIR=bidir,
            num_warps=plan.cfg.warps(plan.block_n, False), **flags,
        )

    if n_segs > 1:
        launch(True, None, False)
        _combine(seg, segdecay, h0, reverse=False)
        launch(False, seg, need_grad)
    else:
        launch(False, h0, need_grad)
    saved = _Saved(ckpt if need_grad else None, ypre if need_ypre else None, segdecay if n_segs > 1 else None, plan)
    return out, final, saved


@dataclass
class _Saved:
    """What the forward hands to the backward besides the inputs."""

    ckpt: Optional[torch.Tensor]
    ypre: Optional[torch.Tensor]
    segdecay: Optional[torch.Tensor]
    plan: _Plan


def _backward(x, dt, A, B, C, D, z, bias, seq_idx, softplus, dt_limit, scale, saved: _Saved, dout, dfinal):
    ndir = dt.shape[0]
    batch, length, heads, headdim = x.shape
    groups, d_state = B.shape[-2:]
    bidir = ndir == 2
    plan, ckpt, ypre = saved.plan, saved.ckpt, saved.ypre
    flags, (dt_min, dt_max) = _common_args(x, B, C, D, z, bias, seq_idx, softplus, dt_limit, plan)
    f32 = dict(dtype=torch.float32, device=x.device)
    nc, n_segs, n_pb = plan.n_chunks, plan.n_segs, plan.n_pb
    dx = torch.empty((2, batch, length, heads, headdim), **f32) if bidir else torch.empty_like(x)
    dz = torch.empty_like(z) if z is not None else None
    dB = torch.empty((ndir, batch, length, heads, n_pb, d_state), **f32)
    dC = torch.empty_like(dB)
    da = torch.empty((ndir, n_pb, batch, length, heads), **f32)
    dux = torch.empty_like(da)
    dD = torch.empty((ndir, batch, heads, n_segs, headdim), **f32) if D is not None else None
    dinit = torch.empty((ndir, batch, heads, headdim, d_state), **f32)
    seg = torch.empty((ndir, batch, heads, n_segs, headdim, d_state), **f32) if n_segs > 1 else dinit
    grid = (batch * heads, n_pb, ndir * n_segs)

    def launch(state_pass, ginit):
        ssd_bwd_kernel[grid](
            x, dt, A, B, C, x if D is None else D, x if z is None else z, A if bias is None else bias,
            x if seq_idx is None else seq_idx, dinit if ckpt is None else ckpt, dout,
            dout if ypre is None else ypre, dinit if ginit is None else ginit,
            dx, dx if dz is None else dz, dB, dC, da, dux, da if dD is None else dD, dinit, seg,
            batch, length, heads, headdim, d_state, heads // groups, nc, n_segs, plan.seg_chunks,
            *_bc_strides(B), *_bc_strides(C), int(ginit is not None), scale, dt_min, dt_max,
            STATE_PASS=state_pass, BIDIR=bidir, num_warps=plan.cfg.warps(plan.block_n, True), **flags,
        )

    if n_segs > 1:
        launch(True, None)
        _combine(seg, saved.segdecay, dfinal, reverse=True)
        launch(False, seg)
    else:
        launch(False, dfinal)

    da = da.sum(1)  # (ndir, batch, length, heads)

    with torch.enable_grad():
        raw = dt.detach().requires_grad_()
        b_leaf = None if bias is None else bias.detach().requires_grad_()
        dt_proc = process_dt(raw, None if b_leaf is None else b_leaf[:, None, None, :], softplus, dt_limit)
        ddt_proc = dux.sum(1) + A[:, None, None, :] * da
        leaves = [raw] + ([] if b_leaf is None else [b_leaf])
        grads = torch.autograd.grad(dt_proc, leaves, ddt_proc)
    dA = (da * dt_proc.detach()).sum((1, 2))
    ddt, dbias = grads[0], (grads[1] if b_leaf is not None else None)
    bc_grad = lambda part: part.view(ndir, batch, length, groups, -1, d_state).sum(4)  # noqa: E731
    return (
        dx.sum(0).to(x.dtype) if bidir else dx, ddt, dA, bc_grad(dB), bc_grad(dC),
        None if dD is None else dD.sum((1, 3)), dz, dbias, dinit,
    )



def _f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.to(torch.float32).contiguous()


class _SSDFn(torch.autograd.Function):
    """Per-direction tensors with a leading ``ndir`` axis (B/C possibly stride-0 views of shared
    ones, D per channel); returns (out, final states)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, softplus, dt_limit, scale):
        x, dt = x.contiguous(), dt.contiguous()
        z = None if z is None else z.contiguous()
        seq_idx = None if seq_idx is None else seq_idx.contiguous()
        A32, D32, bias32, h0 = _f32(A), _f32(D), _f32(dt_bias), _f32(initial_states)
        need_grad = any(ctx.needs_input_grad)
        out, final, saved = _forward(x, dt, A32, B, C, D32, z, bias32, h0, seq_idx, softplus, dt_limit, scale,
                                     need_grad)
        if need_grad:
            ctx.save_for_backward(x, dt, A32, B, C, D32, z, bias32, seq_idx, saved.ckpt, saved.ypre,
                                  saved.segdecay)
            ctx.meta = (softplus, dt_limit, scale, saved.plan, A.dtype, None if D is None else D.dtype,
                        None if dt_bias is None else dt_bias.dtype,
                        None if initial_states is None else initial_states.dtype)
        ctx.set_materialize_grads(False)
        return out, final

    @staticmethod
    def backward(ctx, dout, dfinal):
        x, dt, A32, B, C, D32, z, bias32, seq_idx, ckpt, ypre, segdecay = ctx.saved_tensors
        softplus, dt_limit, scale, plan, a_dtype, d_dtype, bias_dtype, h0_dtype = ctx.meta
        dout = torch.zeros_like(x) if dout is None else dout.contiguous()
        dfinal = None if dfinal is None else dfinal.to(torch.float32).contiguous()
        saved = _Saved(ckpt, ypre, segdecay, plan)
        dx, ddt, dA, dB, dC, dD, dz, dbias, dinit = _backward(
            x, dt, A32, B, C, D32, z, bias32, seq_idx, softplus, dt_limit, scale, saved, dout, dfinal)
        return (
            dx, ddt.to(dt.dtype), dA.to(a_dtype), dB.to(B.dtype), dC.to(C.dtype),
            None if dD is None else dD.to(d_dtype), dz,
            None if dbias is None else dbias.to(bias_dtype),
            None if h0_dtype is None else dinit.to(h0_dtype),
            None, None, None, None,
        )


def _per_channel_D(D: Optional[torch.Tensor], headdim: int) -> Optional[torch.Tensor]:
    """(ndir, heads) or (ndir, heads, headdim) -> (ndir, heads, headdim); autograd sums it back."""
    if D is None or D.dim() == 3:
        return D
    return D.unsqueeze(-1).expand(*D.shape, headdim)


def ssd_triton(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
               dt_limit=DEFAULT_DT_LIMIT, initial_states=None, seq_idx=None, return_final_states=False):
    """Triton SSD; same arguments and returns as :func:`mambazoo_kernels.ssd` (``chunk_size`` is
    the reference's: the kernels use :data:`CONFIG`'s chunk, the result does not depend on it)."""
    first = lambda t: None if t is None else t.unsqueeze(0)  # noqa: E731
    out, final = _SSDFn.apply(x, first(dt), first(A), first(B), first(C), _per_channel_D(first(D), x.shape[-1]),
                              z, first(dt_bias), first(initial_states), seq_idx, dt_softplus, tuple(dt_limit), 1.0)
    return (out, final[0]) if return_final_states else out


def bidirectional_ssd_triton(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
                             dt_limit=DEFAULT_DT_LIMIT, initial_states=None, seq_idx=None,
                             return_final_states=False, average=False):
    """Both directions in one launch; same arguments and returns as the reference
    ``bidirectional_ssd``: per-direction dt/A/D/dt_bias/initial_states on a leading axis of 2,
    B/C shared ``(batch, length, groups, d_state)`` or per direction ``(2, ...)``, x/z shared;
    ``out = (y_forward + y_reversed) (/ 2 if average) * silu(z)``."""
    both = lambda t: t if t.dim() == 5 else t.unsqueeze(0).expand(2, *t.shape)  # noqa: E731
    out, final = _SSDFn.apply(x, dt, A, both(B), both(C), _per_channel_D(D, x.shape[-1]), z, dt_bias,
                              initial_states, seq_idx, dt_softplus, tuple(dt_limit), 0.5 if average else 1.0)
    return (out, final) if return_final_states else out
