"""Triton selective scan: launchers (imported only when the backend is used).

The single scan is the bidirectional machinery with one direction: every per-direction tensor
gets a leading axis of size ``ndir`` (1 or 2) and the same forward kernel (``triton_fwd``,
sequential, one thread per channel) and backward kernel (``triton_bwd_seq``, sequential like the
forward, recomputing the states from the forward's checkpoints; or, with
``ScanConfig.bwd_kind == "chunk"`` / ``MAMBAZOO_SCAN_BWD=chunk``, ``triton_bwd``: time-parallel
chunks, slower on the H200 and minutes to compile) serve both. u, delta and z are read where
they lie when all three are channel-last views (``channel_last``: the mixers' layout), and the
output and the gradients of u/delta/z come back channel-last then; otherwise they are made
time-contiguous. Launchers make no ``torch.cuda`` call, so the same code runs the kernels on CPU
tensors under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Optional

import torch

from .._backend import sm_count
from .._library import channel_last, empty_in_layout
from .triton_bwd import chunk_backward_kernel
from .triton_bwd_seq import seq_backward_kernel
from .triton_fwd import segment_combine_kernel, seq_forward_kernel, stage_bc_kernel

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_D_STATE = 64
# Resident warps per SM of the sequential kernels (255 registers per thread: 65536 / (255 * 32)).
WARPS_PER_SM = 8
# A segmented scan runs a state pass (no outputs) before the full pass; its cost per step relative
# to the full pass (H200, 2026-11-28: the time of every forward row fits waves x steps x (1 + this)).
STATE_PASS_COST = 1.0


@dataclass(frozen=True)
class ScanConfig:
    """Tiling. Forward: one channel per thread, ``32 * fwd_warps`` channels per program, time in
    tiles of ``fwd_tile`` steps (a power of two dividing ``chunk``); it stores its states on the
    backward's chunk boundaries (the checkpoints). Fewer channels per program where B/C groups or
    ``dim`` are smaller.

    ``bwd_kind`` picks the backward kernel: ``"seq"`` (default; ``triton_bwd_seq``, sequential like
    the forward: one channel per thread in programs of ``fwd_warps`` warps, each chunk walked in
    sub-tiles of ``bwd_tile`` steps) or ``"chunk"`` (``triton_bwd``, time-parallel: a chunk is
    split over ``chunk // bwd_vec`` threads holding ``bwd_vec`` consecutive steps each, the rest of
    a warp's 32 threads and the ``bwd_warps`` warps take channels). ``bc_ahead``: the forward
    loads each step's B/C one step ahead (None: :func:`bc_ahead_default`'s measured rule)."""

    chunk: int = 64
    fwd_tile: int = 8
    fwd_warps: int = 1
    bwd_vec: int = 8
    bwd_warps: int = 4
    segments: Optional[int] = None  # None: chosen from the shape (see _segment_plan)
    # register cap of the forward kernel (None: fwd_maxnreg_default's measured rule, 0: none)
    fwd_maxnreg: Optional[int] = None
    bwd_kind: str = "seq"
    bwd_tile: int = 2
    bc_ahead: Optional[bool] = None  # forward: B/C loaded one step ahead (None: see bc_ahead_default)
    # sequential backward's dB/dC channel sums: a "transpose" (H200, 2026-11-29: fwd+bwd 2.007 vs
    # 2.127 ms at Vim-S 224, 3.136 vs 3.295 ms at 1024 px; results/selective_scan_2026-11-29_tsum*)
    # or "shuffle" trees
    bwd_sum: str = "transpose"
    # single-direction forward: the gate z loaded a tile ahead (None: yes; see z_ahead_default)
    z_ahead: Optional[bool] = None
    # sequential backward: sub-tiles loaded one ahead (None: see bwd_ahead_default)
    bwd_ahead: Optional[bool] = None

    def __post_init__(self):
        if self.bwd_kind not in BWD_KINDS:
            raise ValueError(f"bwd_kind must be one of {BWD_KINDS}, got {self.bwd_kind!r}")
        if self.bwd_sum not in BWD_SUMS:
            raise ValueError(f"bwd_sum must be one of {BWD_SUMS}, got {self.bwd_sum!r}")
        if self.fwd_maxnreg is not None and not 0 <= self.fwd_maxnreg <= 255:
            raise ValueError(f"fwd_maxnreg must be None (the measured rule), 0 (no cap) or a register count up to "
                             f"255, got {self.fwd_maxnreg!r}")

    def block_d(self, backward: bool) -> int:
        if backward:
            return max(1, 32 // max(1, self.chunk // self.bwd_vec)) * self.bwd_warps
        return 32 * self.fwd_warps


# Per chunk size: (fwd_tile, fwd_warps, bwd_vec, bwd_warps). One-warp programs for the sequential
# kernels: on the H200 (2026-11-29, benchmarks/results/selective_scan_2026-11-29*) they ran the
# forward in 0.78-0.93x the time of four-warp ones at four of the five rows (1.18x at byte LM 8k)
# and the sequential backward in 0.45-0.77x (no cross-warp dB/dC reductions: 6 barriers per 2-step
# sub-tile instead of 51). bwd_vec/bwd_warps tile the time-parallel "chunk" backward: ~8 steps per thread,
# programs spanning >= 16 channels (its dB/dC partials scale with dim / channels per program).
DEFAULT_TILES = {16: (8, 1, 4, 4), 32: (8, 1, 4, 4), 64: (8, 1, 8, 4)}

BWD_KINDS = ("chunk", "seq")
BWD_SUMS = ("shuffle", "transpose")


def _bwd_kind_from_env() -> str:
    """``MAMBAZOO_SCAN_BWD`` (read once, at import): the backward kernel of :func:`default_config`."""
    kind = os.environ.get("MAMBAZOO_SCAN_BWD", "seq")
    if kind not in BWD_KINDS:
        raise ValueError(f"MAMBAZOO_SCAN_BWD must be one of {BWD_KINDS}, got {kind!r}")
    return kind


BWD_KIND = _bwd_kind_from_env()

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
    return ScanConfig(chunk, *DEFAULT_TILES[chunk], bwd_kind=BWD_KIND)


def bc_ahead_default(length: int, channel_last_layout: bool, bidirectional: bool) -> bool:
    """Whether the forward loads B/C one step ahead, by what the H200 measured (2026-11-29, bf16,
    CUDA-graph forward times, benchmarks/results/selective_scan_2026-11-29_ahead*): ahead was
    faster for single scans on channel-last inputs at every row (0.96-0.62x the time) and on
    time-contiguous ones from Vim-S 1024 px (4097 steps) up (0.74-0.71x; 1.03-1.04x slower at 197
    and 785 steps), and for fused bidirectional scans on time-contiguous inputs at every row;
    on channel-last ones it was 1.01-1.06x slower up to 8192 steps and 0.85x the time at 131k."""
    if bidirectional and channel_last_layout:
        return length > 16384
    return channel_last_layout or bidirectional or length > 2048


def z_ahead_default(bidirectional: bool) -> bool:
    """Whether the forward loads the gate z a tile ahead: always for single scans. The profile of
    the forward at Vim-S 224 (ncu source counters,
    results/ncu_selective_scan_224_{tc,cl}_source.txt) put 20 % (time-contiguous) and 7 %
    (channel-last) of the stall samples on converting z loaded at the tile's end; loaded with the
    next tile's u and delta, the CUDA-graph forward took (H200, 2026-11-29,
    results/selective_scan_2026-11-29_s11_regs_{tc,cl}.json) 0.308 / 0.392 / 0.642 / 1.547 / 1.606 ms
    instead of 0.312 / 0.391 / 0.690 / 1.604 / 1.681 at the five rows time-contiguous,
    and 0.256 / 0.349 / 0.554 / 1.393 / 1.456 instead of 0.414 / 0.546 / 0.768 / 1.834 / 1.996 ms
    channel-last. The bidirectional kernel gates in the direction that finishes second, so it
    does not (both would load z)."""
    return not bidirectional


def bwd_ahead_default(length: int, channel_last_layout: bool) -> bool:
    """Whether the sequential backward loads each sub-tile's u/delta/dout/z one sub-tile ahead:
    except on time-contiguous inputs up to 2048 steps (as for the forward's B/C lookahead). Eager
    forward+backward ms, H200, 2026-11-29, ahead / not (results/selective_scan_2026-11-29_s11_tc.json
    and _s11_oldbwd_tc.json, one run each): time-contiguous Vim-S 224 2.382 / 1.960, 1024 px
    2.995 / 3.076, byte LM 8k 7.466 / 7.733; channel-last (the mixers' layout; _s11_cl.json against
    _final_cl.json, which also lacked the z lookahead and the transposed sums) 1.975 / 1.991,
    2.490 / 3.178, 6.596 / 9.068."""
    return channel_last_layout or length > 2048


def fwd_maxnreg_default(channel_last_layout: bool, bidirectional: bool, bc_ahead: bool, programs: int,
                        sms: int) -> Optional[int]:
    """The forward's register cap: 128 (16 resident one-warp programs per SM instead of 8; 32
    bytes of spill, offline sm_90) for the fused bidirectional kernel on channel-last inputs
    without the B/C lookahead, unless more than four and at most eight of its ``programs`` share
    each of the ``sms`` SMs.

    H200, 2026-11-29, CUDA-graph forward ms, capped / not: Vim-S 224 / 448 px / 8k (6144 / 1536 /
    512 programs) 0.530 / 0.668, 0.633 / 0.931, 2.860 / 3.444
    (results/selective_scan_2026-11-29_s11_cap128_cl_log.txt); (batch, 768, 4097) at batch 8 / 12 /
    16 / 24 / 32 (384 ... 1536 programs) 1.061 / 1.341, 2.898 / 2.180, 3.028 / 2.257, 3.181 /
    4.631, 3.283 / 4.794 (results/selective_scan_2026-11-29_s11_cap128_log.txt, with vim_small:
    5,608 / 4,702 img/s at 224 px, 161 / 198 at 1024 px batch 16). Time grows with the warps on
    an SM (the kernel is bound by what an SM issues, not by latency), so the cap wins with at most
    one warp per scheduler and where the uncapped kernel needs a second wave, and its spills lose
    in between. The single-direction kernels spill more under caps and ran up to 2.2x slower with
    168 or 128."""
    if not (bidirectional and channel_last_layout and not bc_ahead):
        return None
    return 128 if programs <= 4 * sms or programs > WARPS_PER_SM * sms else None


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


def _segment_plan(cfg: ScanConfig, batch: int, dim: int, ndir: int, n_tiles: int, block_d: int, device):
    """(n_segs, chunks per segment): cut L into segments when too few programs fill the GPU.

    The sequential kernels are latency-bound at a fixed time per step and program as long as the
    programs fit on the GPU at once, so a launch costs about waves x steps per program. Segments
    shorten the steps of a program but add a state pass; the plan minimizes
    ``ceil(programs / slots) * chunks per segment * (1 + STATE_PASS_COST if segmented)``.
    """
    if cfg.segments is not None:
        n_segs = max(1, min(cfg.segments, n_tiles))
    else:
        warps = max(1, min(cfg.fwd_warps, block_d // 32))
        slots = sm_count(device) * max(1, WARPS_PER_SM // warps)
        n_segs = _best_segments(batch * ndir * triton_cdiv(dim, block_d), slots, n_tiles)
    seg_chunks = triton_cdiv(n_tiles, n_segs)
    return triton_cdiv(n_tiles, seg_chunks), seg_chunks


@functools.lru_cache(maxsize=4096)
def _best_segments(programs: int, slots: int, n_tiles: int) -> int:
    """The segment count of least modeled cost (see :func:`_segment_plan`); ties go to fewer."""
    def cost(segs):
        waves = triton_cdiv(programs * segs, slots)
        return waves * triton_cdiv(n_tiles, segs) * (1.0 if segs == 1 else 1.0 + STATE_PASS_COST)

    return min(range(1, max(1, n_tiles // 2) + 1), key=cost)


def _combine_segments(seg, segdt, A, init, reverse):
    ndir, batch, dim, n_segs, d_state = seg.shape
    block = 32
    segment_combine_kernel[(triton_cdiv(dim, block), batch, ndir)](
        seg, segdt, A, seg if init is None else init, batch, dim, n_segs,
        N=d_state, NP=1 << (d_state - 1).bit_length(), BLOCK=block, HAS_INIT=init is not None, REVERSE=reverse,
    )


def _stage_bc(bc: torch.Tensor, const: bool, padded_length: int) -> torch.Tensor:
    """The forward kernel's B or C: constant as fp32 (ndir, dim, N); per token as fp32
    (ndir, batch, groups, padded_length, N), one step's N values contiguous (16-byte vector loads),
    zero past the sequence."""
    if const:
        return bc.to(torch.float32).contiguous()
    ndir, batch, groups, d_state, length = bc.shape
    staged = torch.empty((ndir, batch, groups, padded_length, d_state), dtype=torch.float32, device=bc.device)
    block = 64
    stage_bc_kernel[(triton_cdiv(padded_length, block), ndir * batch * groups)](
        bc, staged, length, padded_length, batch, groups, *bc.stride(),
        N=d_state, NP=1 << (d_state - 1).bit_length(), BT=block,
    )
    return staged


def _forward(u, delta, A, B, C, D, z, bias, h0, softplus, scale, need_ckpt, need_ypre):
    """Returns out, final states, and what the backward needs (checkpoints, ypre, plan)."""
    ndir, batch, dim, length = u.shape
    d_state = A.shape[-1]
    bidir = ndir == 2
    b_const, c_const, cpg_b, cpg_c, _, _, limit = _common(u, B, C)
    cfg, block_d, bwd_block_d = _config(dim, length, limit)
    chunk, tile = cfg.chunk, cfg.fwd_tile
    n_blocks = triton_cdiv(dim, block_d)
    n_chunks = triton_cdiv(length, chunk)
    ck_tiles = chunk // tile
    n_tiles = n_chunks * ck_tiles  # the tile grid covers whole chunks (checkpoints on their edges)
    n_segs, seg_chunks = _segment_plan(cfg, batch, dim, ndir, n_chunks, block_d, u.device)
    f32 = dict(dtype=torch.float32, device=u.device)
    cl = channel_last(u, delta, z)
    out = empty_in_layout(u, (batch, dim, length), cl)
    h_final = torch.empty((ndir, batch, dim, d_state), **f32)
    ckpt = torch.empty((ndir, batch, dim, n_chunks, d_state), **f32) if need_ckpt else h_final
    # the bidirectional scratch: one plane per direction, laid out like out
    ybuf = torch.empty((2, batch, length, dim) if cl else (2, batch, dim, length), **f32) if bidir else h_final
    flags = torch.zeros((batch, n_blocks, n_tiles), dtype=torch.int32, device=u.device) if bidir else h_final
    ypre = empty_in_layout(u, (batch, dim, length), cl) if need_ypre else out
    seg = torch.empty((ndir, batch, dim, n_segs, d_state), **f32) if n_segs > 1 else h_final
    segdt = torch.empty((ndir, batch, dim, n_segs), **f32) if n_segs > 1 else h_final
    Bk, Ck = _stage_bc(B, b_const, n_tiles * tile), _stage_bc(C, c_const, n_tiles * tile)
    ahead = bc_ahead_default(length, cl, bidir) if cfg.bc_ahead is None else cfg.bc_ahead
    z_ahead = z_ahead_default(bidir) if cfg.z_ahead is None else cfg.z_ahead
    kernel = seq_forward_kernel(d_state, tile, bidir, cl, ahead, z_ahead and not bidir and z is not None)
    programs = n_blocks * batch * ndir * n_segs
    maxnreg = (fwd_maxnreg_default(cl, bidir, ahead, programs, sm_count(u.device)) if cfg.fwd_maxnreg is None
               else cfg.fwd_maxnreg)
    zs = z if z is not None else out
    strides = ((*u.stride()[:2], u.stride(3), *delta.stride()[:2], delta.stride(3), zs.stride(0), zs.stride(2),
                out.stride(0), out.stride(2)) if cl else (0,) * 10)

    def launch(state_pass, init, store_ckpt, store_ypre):
        _launcher(kernel, "fwd_state" if state_pass else "fwd", (n_blocks, batch, ndir * n_segs))(
            u, delta, A, Bk, Ck, u if D is None else D, u if z is None else z, u if bias is None else bias,
            h_final if init is None else init,
            out, h_final, ckpt, ybuf, flags, ypre, seg, segdt,
            batch, dim, length, n_tiles * tile, dim if b_const else cpg_b, dim if c_const else cpg_c, scale,
            n_segs, seg_chunks * ck_tiles, n_tiles, ck_tiles, n_chunks,
            int(init is not None), int(store_ckpt), int(store_ypre), *strides,
            BLOCK_D=block_d, B_CONST=b_const, C_CONST=c_const,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=softplus,
            STATE_PASS=state_pass, num_warps=max(1, min(cfg.fwd_warps, block_d // 32)),
            **({"maxnreg": maxnreg} if maxnreg else {}),
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
    cfg, fwd_block_d, chunk_block_d = _config(dim, length, limit)
    seq = cfg.bwd_kind == "seq"
    block_d = fwd_block_d if seq else chunk_block_d
    chunk, n_segs = saved.chunk, saved.n_segs
    n_blocks = triton_cdiv(dim, block_d)
    f32 = dict(dtype=torch.float32, device=u.device)
    cl = channel_last(u, delta, z)
    if cl and not seq:  # the time-parallel kernel reads time-contiguous tensors only
        u, delta, z, dout = (None if t is None else t.contiguous() for t in (u, delta, z, dout))
        saved = dataclasses.replace(saved, ypre=None if saved.ypre is None else saved.ypre.contiguous())
    elif cl:  # dout, ypre and dz share one layout: (batch, L, dim) memory
        dout = _dense_channel_last(dout)
        saved = dataclasses.replace(saved, ypre=None if saved.ypre is None else _dense_channel_last(saved.ypre))
    kernel_cl = cl and seq
    du = empty_in_layout(u, u.shape, kernel_cl)
    ddelta = empty_in_layout(delta, delta.shape, kernel_cl)
    dz = empty_in_layout(z, z.shape, kernel_cl) if z is not None else None
    strides = ((*u.stride()[:2], u.stride(3), *delta.stride()[:2], delta.stride(3),
                *((z.stride(0), z.stride(2)) if z is not None else (0, 0)), dout.stride(0), dout.stride(2),
                *du.stride()[:2], du.stride(3)) if kernel_cl else (0,) * 13)
    per_seg = (ndir, batch, dim, n_segs)
    dA = torch.empty((*per_seg, d_state), **f32)
    dh0 = torch.empty((ndir, batch, dim, d_state), **f32)

    def bc_partial(const):
        if const:
            return torch.empty((*per_seg, d_state), **f32)
        if seq:  # stored (.., L, N): one step's N partials contiguous
            return torch.empty((ndir, batch, n_blocks, length, d_state), **f32).transpose(-1, -2)
        return torch.empty((ndir, batch, n_blocks, d_state, length), **f32)

    dB, dC = bc_partial(b_const), bc_partial(c_const)
    dD = torch.empty(per_seg, **f32) if D is not None else None
    dbias = torch.empty(per_seg, **f32) if bias is not None else None
    seg = torch.empty((*per_seg, d_state), **f32) if n_segs > 1 else dh0
    if seq:
        sub = _pow2_divisor(chunk, cfg.bwd_tile)
        n_chunks = triton_cdiv(length, chunk)
        Bk, Ck = _stage_bc(B, b_const, n_chunks * chunk), _stage_bc(C, c_const, n_chunks * chunk)
        hbuf = torch.empty((n_blocks * batch * ndir * n_segs, chunk // sub, d_state, block_d), **f32)
        ahead = bwd_ahead_default(length, kernel_cl) if cfg.bwd_ahead is None else cfg.bwd_ahead
        kernel = seq_backward_kernel(d_state, sub, bidir, kernel_cl, cfg.bwd_sum == "transpose", ahead)
    else:
        kernel = chunk_backward_kernel(d_state, bidir, cfg.bwd_vec)

    def launch(state_pass, init):
        if seq:
            _launcher(kernel, "bwd_state" if state_pass else "bwd", (n_blocks, batch, ndir * n_segs))(
                u, delta, A, Bk, Ck, u if D is None else D, u if z is None else z, u if bias is None else bias,
                saved.ckpt, dout, dh0 if init is None else init, dout if saved.ypre is None else saved.ypre, hbuf,
                du, ddelta, du if dz is None else dz, dA, dB, dC, dA if dD is None else dD,
                dA if dbias is None else dbias, dh0, seg,
                batch, dim, length, n_chunks * chunk, dim if b_const else cpg_b, dim if c_const else cpg_c, scale,
                n_segs, saved.seg_chunks, n_chunks, chunk // sub, int(init is not None), *strides,
                BLOCK_D=block_d, B_CONST=b_const, C_CONST=c_const,
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=softplus,
                STATE_PASS=state_pass, num_warps=max(1, min(cfg.fwd_warps, block_d // 32)),
            )
            return
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

    if cl and not kernel_cl:  # gradients come back in their inputs' layout
        du, ddelta, dz = (None if t is None else _dense_channel_last(t) for t in (du, ddelta, dz))
    return (
        du, ddelta, dA.sum((1, 3)), bc_grad(dB, b_const, B), bc_grad(dC, c_const, C),
        None if dD is None else dD.sum((1, 3)), dz, None if dbias is None else dbias.sum((1, 3)), dh0,
    )


def _dense_channel_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` (..., dim, L) in dense (..., L, dim) memory (a copy unless it already is)."""
    cl = t.transpose(-1, -2)
    return (cl if cl.is_contiguous() else cl.contiguous()).transpose(-1, -2)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.to(torch.float32).contiguous()


# Entry points of the torch.library ops (``mambazoo_kernels._library``): public layouts in and out;
# the ops own autograd, these only launch. Every tensor the backward needs besides the inputs is
# a plain output of the forward ((0,)-shaped when not stored), and ``saved_shapes`` gives their
# shapes without launching, for the ops' fake implementations.


def _kernel_args(u, delta, A, B, C, D, z, delta_bias, initial_state, bidirectional: bool):
    """Public layouts -> the kernels': a leading ``ndir`` axis, a groups axis on per-token B/C,
    fp32 contiguous A/D/delta_bias/initial_state; u, delta and z time-contiguous, or left as they
    are when all three are channel-last views."""
    lead = (lambda t: t) if bidirectional else (lambda t: None if t is None else t.unsqueeze(0))
    const_rank = 3 if bidirectional else 2

    def bc(t):
        return lead(t if t.dim() == const_rank else _per_token(t, const_rank + 1))

    layout = (lambda t: t) if channel_last(u, delta, z) else (
        lambda t: None if t is None else t.contiguous())
    return (layout(lead(u)), layout(lead(delta)), _f32(lead(A)), bc(B), bc(C), _f32(lead(D)),
            layout(z), _f32(lead(delta_bias)), _f32(lead(initial_state)))


def _plan(u, B, C, device=None):
    """(chunk, n_tiles, n_segs, seg_chunks) that ``_forward`` picks for kernel-layout tensors on
    ``device`` (default: ``u``'s; the segments depend on its SM count)."""
    ndir, batch, dim, length = u.shape
    limit = _common(u, B, C)[-1]
    cfg, block_d, bwd_block_d = _config(dim, length, limit)
    n_tiles = triton_cdiv(length, cfg.chunk)
    n_segs, seg_chunks = _segment_plan(cfg, batch, dim, ndir, n_tiles, block_d, device or u.device)
    return cfg.chunk, n_tiles, n_segs, seg_chunks


def _stores_ypre(bidirectional: bool, z, save: bool) -> bool:
    return save and bidirectional and z is not None


def _concrete(t: torch.Tensor) -> torch.Tensor:
    """A meta tensor with ``t``'s sizes and strides as ints (symbolic ones are specialized)."""
    return torch.empty_strided([int(s) for s in t.shape], [int(s) for s in t.stride()], dtype=t.dtype, device="meta")


def saved_shapes(u, delta, A, B, C, z, bidirectional: bool, save: bool):
    """Shapes of the (checkpoints, ypre, segdt) outputs of :func:`scan_forward`, for fake tensors.

    The tiling is planned on concrete sizes, so under dynamic shapes the compiled graph guards on
    (specializes) the sizes of the Triton scan's inputs."""
    device = u.device
    u, delta, A, B, C = (_concrete(t) for t in (u, delta, A, B, C))
    z = None if z is None else _concrete(z)
    ku, _, kA, kB, kC, *_ = _kernel_args(u, delta, A, B, C, None, z, None, None, bidirectional)
    ndir, batch, dim, length = ku.shape
    _, n_tiles, n_segs, _ = _plan(ku, kB, kC, device)
    ckpt = (ndir, batch, dim, n_tiles, kA.shape[-1]) if save else (0,)
    ypre = (batch, dim, length) if _stores_ypre(bidirectional, z, save) else (0,)
    segdt = (ndir, batch, dim, n_segs) if save and n_segs > 1 else (0,)
    return ckpt, ypre, segdt


def scan_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, softplus: bool, scale: float,
                 bidirectional: bool, save: bool):
    """Forward kernels: ``(out, final state, checkpoints, ypre, segdt)``; the last three feed
    :func:`scan_backward` and are stored only with ``save``."""
    ku, kdelta, kA, kB, kC, kD, kz, kbias, kh0 = _kernel_args(
        u, delta, A, B, C, D, z, delta_bias, initial_state, bidirectional)
    out, h_final, saved = _forward(ku, kdelta, kA, kB, kC, kD, kz, kbias, kh0, softplus, scale,
                                   save, _stores_ypre(bidirectional, z, save))
    if (saved.chunk, saved.n_segs, saved.seg_chunks) != tuple(_plan(ku, kB, kC)[i] for i in (0, 2, 3)):
        raise RuntimeError("triton_op._plan no longer matches _forward's tiling; update _plan")
    f32 = torch.float32
    return (
        out, h_final if bidirectional else h_final[0],
        u.new_empty(0, dtype=f32) if saved.ckpt is None else saved.ckpt,
        u.new_empty(0) if saved.ypre is None else saved.ypre,
        u.new_empty(0, dtype=f32) if saved.segdt is None else saved.segdt,
    )


def scan_backward(dout, dfinal_state, u, delta, A, B, C, D, z, delta_bias, initial_state, ckpt, ypre, segdt,
                  softplus: bool, scale: float, bidirectional: bool):
    """Backward kernels from :func:`scan_forward`'s stored outputs: the gradients of
    ``(u, delta, A, B, C, D, z, delta_bias, initial_state)`` in their shapes and dtypes, ``None``
    for absent inputs."""
    if ckpt.numel() == 0:
        raise RuntimeError("the selective-scan forward ran without save_for_backward; no gradient possible")
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    ku, kdelta, kA, kB, kC, kD, kz, kbias, _ = _kernel_args(*inputs, bidirectional)
    chunk, _, n_segs, seg_chunks = _plan(ku, kB, kC)
    saved = _Saved(ckpt, ypre if ypre.numel() else None, chunk, n_segs, seg_chunks, segdt if n_segs > 1 else None)
    # a (0,) placeholder: no final-state gradient (the kernels start from zero)
    dh_final = None if dfinal_state.numel() == 0 else dfinal_state if bidirectional else dfinal_state.unsqueeze(0)
    dout = dout if channel_last(ku, kdelta, kz) else dout.contiguous()
    grads = _backward(ku, kdelta, kA, kB, kC, kD, kz, kbias, saved, dout,
                      None if dh_final is None else dh_final.to(torch.float32).contiguous(), softplus, scale)
    return tuple(
        None if t is None else g.reshape(t.shape).to(t.dtype) for g, t in zip(grads, inputs)
    )


def _per_token(bc: torch.Tensor, token_rank: int) -> torch.Tensor:
    """Give per-token B/C without a groups axis one group: (..., N, L) -> (..., 1, N, L)."""
    return bc.unsqueeze(-3) if bc.dim() == token_rank else bc
