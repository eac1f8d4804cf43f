"""Triton selective scan: autograd functions and launchers (imported only when the backend is used).

The single scan is the bidirectional machinery with one direction: every per-direction tensor
gets a leading axis of size ``ndir`` (1 or 2) and one autograd function runs the forward and
backward kernels of ``triton_fwd`` / ``triton_bwd``. Launchers make no ``torch.cuda`` call, so
the same code runs the kernels on CPU tensors under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .triton_bwd import chunk_backward_kernel
from .triton_fwd import chunk_forward_kernel, segment_combine_kernel

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_D_STATE = 64
# Programs that keep an H100/H200-class GPU (132 SMs) busy for a few waves.
TARGET_PROGRAMS = 4 * 132


@dataclass(frozen=True)
class ScanConfig:
    """Tiling. A chunk of ``chunk`` steps is split over ``chunk // vec`` threads holding ``vec``
    consecutive steps each; the rest of a warp's 32 threads and the ``warps`` warps take channels,
    so a program owns ``32 // (chunk // vec) * warps`` channels (fewer where B/C groups or ``dim``
    are smaller). Forward and backward share the chunk (the checkpoints sit on its boundaries)."""

    chunk: int = 64
    fwd_vec: int = 8
    fwd_warps: int = 4
    bwd_vec: int = 8
    bwd_warps: int = 4
    segments: Optional[int] = None  # None: chosen from the shape (see _segment_plan)

    def block_d(self, backward: bool) -> int:
        vec, warps = (self.bwd_vec, self.bwd_warps) if backward else (self.fwd_vec, self.fwd_warps)
        return max(1, 32 // max(1, self.chunk // vec)) * warps


# Per chunk size: (fwd_vec, fwd_warps, bwd_vec, bwd_warps); chosen so both kernels stay near
# 8 steps per thread and the backward's program spans >= 16 channels (its dB/dC partials scale
# with dim / channels per program).
DEFAULT_TILES = {16: (8, 4, 4, 4), 32: (8, 4, 4, 4), 64: (8, 4, 8, 4)}

# Benchmarks may replace this (tiling only; results do not depend on it beyond rounding).
CONFIG: Optional[ScanConfig] = None
# Benchmarks compiling in parallel processes set this to the kernels to compile, from
# {"fwd", "fwd_state", "bwd", "bwd_state"}; those are compiled without running, the others skipped.
COMPILE_ONLY: Optional[set] = None


def _launcher(kernel, kind: str, grid):
    """``kernel[grid]``, or under ``COMPILE_ONLY`` a compile-only stand-in."""
    if COMPILE_ONLY is None:
        return kernel[grid]
    if kind in COMPILE_ONLY:
        return lambda *args, **kwargs: kernel.warmup(*args, grid=grid, **kwargs)
    return lambda *args, **kwargs: None


def unsupported_reason(u, delta, A, B, C, z) -> Optional[str]:
    """Why the Triton kernels cannot take these arguments, or ``None`` if they can."""
    for name, tensor in (("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z)):
        if tensor is not None and tensor.dtype not in KERNEL_DTYPES:
            return f"{name} has dtype {tensor.dtype}; the Triton kernels take float32, bfloat16 or float16"
    if A.shape[-1] > MAX_D_STATE:
        return f"d_state {A.shape[-1]} > {MAX_D_STATE} is not generated for the Triton kernels"
    return None


def _pow2_divisor(n: int, cap: int) -> int:
    """Largest power of two that divides ``n`` and is at most ``cap``."""
    p = 1
    while p * 2 <= cap and n % (p * 2) == 0:
        p *= 2
    return p


def default_config(length: int) -> ScanConfig:
    """The longest chunk (64, 32, 16) that pads at most 1/8 of the steps."""
    chunk = 64
    while chunk > 16 and (-length % chunk) * 8 > length:
        chunk //= 2
    return ScanConfig(chunk, *DEFAULT_TILES[chunk])


def _config(dim: int, length: int, block_limit: int):
    """(config, forward channels per program, backward channels per program)."""
    cfg = CONFIG if CONFIG is not None else default_config(length)
    cap = min(block_limit, 1 << (dim - 1).bit_length())
    return cfg, min(cfg.block_d(False), cap), min(cfg.block_d(True), cap)


def _bc_layout(bc: torch.Tensor):
    """Kernel view of B or C: (is_constant, channels per group, strides (dir, b, g, n, t))."""
    if bc.dim() == 3:  # constant (ndir, dim, N): the "group" index is the channel
        return True, bc.shape[1], (bc.stride(0), 0, bc.stride(1), bc.stride(2), 0)
    groups = bc.shape[2]
    return False, groups, tuple(bc.stride())


def _common(u, B, C):
    """Kernel arguments for B and C, and the largest channel block that stays inside one group."""
    dim = u.shape[2]
    b_const, b_groups, b_strides = _bc_layout(B)
    c_const, c_groups, c_strides = _bc_layout(C)
    cpg_b, cpg_c = dim // b_groups, dim // c_groups
    limit = 1 << 30
    for const, cpg in ((b_const, cpg_b), (c_const, cpg_c)):
        if not const:
            limit = min(limit, _pow2_divisor(cpg, 1 << 30))
    return b_const, c_const, cpg_b, cpg_c, b_strides, c_strides, limit


def _segment_plan(cfg: ScanConfig, batch: int, dim: int, ndir: int, n_tiles: int, block_d: int):
    """(n_segs, tiles per segment): cut L into segments when too few channel blocks fill the GPU.

    Segments cost a second pass over the sequence (a state pass without outputs), so they are
    used only below half of ``TARGET_PROGRAMS``.
    """
    if cfg.segments is not None:
        n_segs = max(1, min(cfg.segments, n_tiles))
    else:
        programs = batch * ndir * triton_cdiv(dim, block_d)
        if programs * 2 >= TARGET_PROGRAMS or n_tiles < 4:
            return 1, n_tiles
        n_segs = min(triton_cdiv(TARGET_PROGRAMS, programs), n_tiles // 2)
    seg_chunks = triton_cdiv(n_tiles, n_segs)
    return triton_cdiv(n_tiles, seg_chunks), seg_chunks


def _combine_segments(seg, segdt, A, init, reverse):
    ndir, batch, dim, n_segs, d_state = seg.shape
    block = 32
    segment_combine_kernel[(triton_cdiv(dim, block), batch, ndir)](
        seg, segdt, A, seg if init is None else init, batch, dim, n_segs,
        N=d_state, NP=1 << (d_state - 1).bit_length(), BLOCK=block, HAS_INIT=init is not None, REVERSE=reverse,
    )


def _forward(u, delta, A, B, C, D, z, bias, h0, softplus, scale, need_ckpt, need_ypre):
    """Returns out, final states, and what the backward needs (checkpoints, ypre, plan)."""
    ndir, batch, dim, length = u.shape
    d_state = A.shape[-1]
    bidir = ndir == 2
    b_const, c_const, cpg_b, cpg_c, b_strides, c_strides, limit = _common(u, B, C)
    cfg, block_d, bwd_block_d = _config(dim, length, limit)
    chunk = cfg.chunk
    n_blocks = triton_cdiv(dim, block_d)
    n_tiles = triton_cdiv(length, chunk)
    n_segs, seg_chunks = _segment_plan(cfg, batch, dim, ndir, n_tiles, max(block_d, bwd_block_d))
    f32 = dict(dtype=torch.float32, device=u.device)
    out = torch.empty((batch, dim, length), dtype=u.dtype, device=u.device)
    h_final = torch.empty((ndir, batch, dim, d_state), **f32)
    ckpt = torch.empty((ndir, batch, dim, n_tiles, d_state), **f32) if need_ckpt else h_final
    ybuf = torch.empty((2, batch, dim, length), **f32) if bidir else h_final
    flags = torch.zeros((batch, n_blocks, n_tiles), dtype=torch.int32, device=u.device) if bidir else h_final
    ypre = torch.empty((batch, dim, length), dtype=u.dtype, device=u.device) if need_ypre else out
    seg = torch.empty((ndir, batch, dim, n_segs, d_state), **f32) if n_segs > 1 else h_final
    segdt = torch.empty((ndir, batch, dim, n_segs), **f32) if n_segs > 1 else h_final
    kernel = chunk_forward_kernel(d_state, bidir, cfg.fwd_vec)

    def launch(state_pass, init, store_ckpt, store_ypre):
        _launcher(kernel, "fwd_state" if state_pass else "fwd", (n_blocks, batch, ndir * n_segs))(
            u, delta, A, B, C, u if D is None else D, u if z is None else z, u if bias is None else bias,
            h_final if init is None else init,
            out, h_final, ckpt, ybuf, flags, ypre, seg, segdt,
            batch, dim, length, cpg_b, cpg_c, scale, n_segs, seg_chunks,
            int(init is not None), int(store_ckpt), int(store_ypre), *b_strides, *c_strides,
            BLOCK_D=block_d, T=chunk, B_CONST=b_const, C_CONST=c_const,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=softplus,
            STATE_PASS=state_pass, num_warps=cfg.fwd_warps,
        )

    if n_segs > 1:
        launch(True, None, False, False)
        _combine_segments(seg, segdt, A, h0, reverse=False)
        launch(False, seg, need_ckpt, need_ypre)
    else:
        launch(False, h0, need_ckpt, need_ypre)
    saved = _Saved(ckpt if need_ckpt else None, ypre if need_ypre else None, chunk,
                   n_segs, seg_chunks, segdt if n_segs > 1 else None)
    return out, h_final, saved


@dataclass
class _Saved:
    """What the forward hands to the backward besides the inputs."""

    ckpt: Optional[torch.Tensor]
    ypre: Optional[torch.Tensor]
    chunk: int
    n_segs: int
    seg_chunks: int
    segdt: Optional[torch.Tensor]


def _backward(u, delta, A, B, C, D, z, bias, saved: _Saved, dout, dh_final, softplus, scale):
    ndir, batch, dim, length = u.shape
    d_state = A.shape[-1]
    bidir = ndir == 2
    b_const, c_const, cpg_b, cpg_c, b_strides, c_strides, limit = _common(u, B, C)
    cfg, _, block_d = _config(dim, length, limit)
    chunk, n_segs = saved.chunk, saved.n_segs
    n_blocks = triton_cdiv(dim, block_d)
    f32 = dict(dtype=torch.float32, device=u.device)
    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    per_seg = (ndir, batch, dim, n_segs)
    dA = torch.empty((*per_seg, d_state), **f32)
    dh0 = torch.empty((ndir, batch, dim, d_state), **f32)

    def bc_partial(const):
        return torch.empty((*per_seg, d_state) if const else (ndir, batch, n_blocks, d_state, length), **f32)

    dB, dC = bc_partial(b_const), bc_partial(c_const)
    dD = torch.empty(per_seg, **f32) if D is not None else None
    dbias = torch.empty(per_seg, **f32) if bias is not None else None
    seg = torch.empty((*per_seg, d_state), **f32) if n_segs > 1 else dh0
    kernel = chunk_backward_kernel(d_state, bidir, cfg.bwd_vec)

    def launch(state_pass, init):
        _launcher(kernel, "bwd_state" if state_pass else "bwd", (n_blocks, batch, ndir * n_segs))(
            u, delta, A, B, C, u if D is None else D, u if z is None else z, u if bias is None else bias,
            saved.ckpt, dout, dh0 if init is None else init, dout if saved.ypre is None else saved.ypre,
            du, ddelta, du if dz is None else dz, dA, dB, dC, dA if dD is None else dD,
            dA if dbias is None else dbias, dh0, seg,
            batch, dim, length, cpg_b, cpg_c, scale, n_segs, saved.seg_chunks, int(init is not None), 0, 0,
            *b_strides, *c_strides,
            BLOCK_D=block_d, T=chunk, B_CONST=b_const, C_CONST=c_const,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=softplus,
            STATE_PASS=state_pass, num_warps=cfg.bwd_warps,
        )

    if n_segs > 1:
        launch(True, None)
        _combine_segments(seg, saved.segdt, A, dh_final, reverse=True)
        launch(False, seg)
    else:
        launch(False, dh_final)

    def bc_grad(part, const, like):
        if const:
            return part.sum((1, 3)).to(like.dtype)
        groups = like.shape[2]
        return part.view(ndir, batch, groups, n_blocks // groups, d_state, length).sum(3).to(like.dtype)

    return (
        du, ddelta, dA.sum((1, 3)), bc_grad(dB, b_const, B), bc_grad(dC, c_const, C),
        None if dD is None else dD.sum((1, 3)), dz, None if dbias is None else dbias.sum((1, 3)), dh0,
    )


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.to(torch.float32).contiguous()


class _ScanFn(torch.autograd.Function):
    """Per-direction tensors with a leading ``ndir`` axis; returns (out, final states)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, scale):
        u, delta = u.contiguous(), delta.contiguous()
        z = None if z is None else z.contiguous()
        A32, D32, bias32, h0 = _f32(A), _f32(D), _f32(delta_bias), _f32(initial_state)
        need_grad = any(ctx.needs_input_grad)
        need_ypre = need_grad and u.shape[0] == 2 and z is not None
        out, h_final, saved = _forward(u, delta, A32, B, C, D32, z, bias32, h0, softplus, scale, need_grad, need_ypre)
        if need_grad:
            ctx.save_for_backward(u, delta, A32, B, C, D32, z, bias32, saved.ckpt, saved.ypre, saved.segdt)
            ctx.meta = (softplus, scale, saved.chunk, saved.n_segs, saved.seg_chunks, A.dtype,
                        None if D is None else D.dtype,
                        None if delta_bias is None else delta_bias.dtype,
                        None if initial_state is None else initial_state.dtype)
        ctx.set_materialize_grads(False)
        return out, h_final

    @staticmethod
    def backward(ctx, dout, dh_final):
        u, delta, A32, B, C, D32, z, bias32, ckpt, ypre, segdt = ctx.saved_tensors
        softplus, scale, chunk, n_segs, seg_chunks, a_dtype, d_dtype, bias_dtype, h0_dtype = ctx.meta
        if dout is None:
            dout = torch.zeros((u.shape[1], u.shape[2], u.shape[3]), dtype=u.dtype, device=u.device)
        dout = dout.contiguous()
        dh_final = None if dh_final is None else dh_final.to(torch.float32).contiguous()
        saved = _Saved(ckpt, ypre, chunk, n_segs, seg_chunks, segdt)
        du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = _backward(
            u, delta, A32, B, C, D32, z, bias32, saved, dout, dh_final, softplus, scale)
        return (
            du, ddelta, dA.to(a_dtype), dB, dC,
            None if dD is None else dD.to(d_dtype), dz,
            None if dbias is None else dbias.to(bias_dtype),
            None if h0_dtype is None else dh0.to(h0_dtype),
            None, None,
        )


def _per_token(bc: torch.Tensor, token_rank: int) -> torch.Tensor:
    """Give per-token B/C without a groups axis one group: (..., N, L) -> (..., 1, N, L)."""
    return bc.unsqueeze(-3) if bc.dim() == token_rank else bc


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          initial_state=None, return_final_state=False):
    """Triton selective scan; same arguments and returns as :func:`mambazoo_kernels.selective_scan`."""
    first = lambda t: None if t is None else t.unsqueeze(0)
    B = first(B if B.dim() == 2 else _per_token(B, 3))
    C = first(C if C.dim() == 2 else _per_token(C, 3))
    out, h_final = _ScanFn.apply(first(u), first(delta), first(A), B, C, first(D), z, first(delta_bias),
                                 first(initial_state), delta_softplus, 1.0)
    return (out, h_final[0]) if return_final_state else out


def bidirectional_selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                                        delta_softplus=False, initial_state=None, return_final_state=False,
                                        average=False):
    """Fused bidirectional scan; same arguments and returns as
    :func:`mambazoo_kernels.bidirectional_selective_scan`."""
    B = B if B.dim() == 3 else _per_token(B, 4)
    C = C if C.dim() == 3 else _per_token(C, 4)
    out, h_final = _ScanFn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                                 0.5 if average else 1.0)
    return (out, h_final) if return_final_state else out
