"""Sequential Triton backward of the selective scan, generated per ``d_state`` (layouts: ``triton_fwd``).

For channel d and state n, with a[t] = exp(dt[t] A), x[t] = dt[t] u[t] B[t], dy = dout * gate and
c[t] the adjoint reaching h[t] from later steps (c[L-1] = d final_state):

    g[t] = c[t] + C[t] dy[t]                   c[t-1] = a[t] g[t]        d initial_state = c[-1]
    du   = dy D + dt sum_n g B                  ddt = u sum_n g B + sum_n A g a h[t-1]
    dA   = sum_t g a h[t-1] dt                  dB[t] = sum_d g dt u,  dC[t] = sum_d dy h[t]

with a h[t-1] = h[t] - x[t], so the backward step needs h[t] and a[t] but no h[t-1].

Design: the forward kernel's layout (``seq_forward_kernel``): a program owns ``BLOCK_D = 32 *
num_warps`` channels, one per thread, and each thread keeps its channel's N adjoints c_n (and the
dA, constant-dB/dC accumulators) as N separate fp32 scalars (source generated per N). The program
walks the forward's checkpoint chunks in reverse processing order. The states h[t] of a chunk
come from its checkpoint, but the backward needs them in reverse order, and recomputing a
state backwards (h[t-1] = (h[t] - x[t]) / a[t]) is unstable where a[t] underflows. Keeping a
chunk's T x N states needs T x N registers (16 x 16 = 256 at the smallest chunk: too many), and a
per-step (batch, dim, L, N) store is what the checkpoints avoid. So each chunk is cut into
sub-tiles of S steps (``ScanConfig.bwd_tile``, default 2):

1. walk the chunk forward from its checkpoint and store the state at each sub-tile start into a
   chunk-local scratch ``hbuf`` (programs, m, N, BLOCK_D) fp32 (m = chunk / S; one slot per program of
   the grid, channel-contiguous, written and read back within the chunk, so it
   stays in L1/L2; a barrier before and after pass 1 orders it between threads; its traffic,
   2 x 4 N / S bytes per channel and step, is what a smaller S costs);
2. for the sub-tiles in reverse: reload the start state, recompute the S steps forward keeping
   a[t] and h[t] in 2 x S x N registers, then run the S adjoint steps backwards from those
   registers.

Exps per (step, state): pass 1 covers m - 1 of the m sub-tiles, pass 2 all of them and the
adjoint reuses pass 2's a[t], so 2 - 1/m (1.88 at chunk 16 with S = 2, 1.97 at chunk 64),
against 1 for the forward; the floor for a backward without a per-step state store is 1 (one
recompute), which would need a chunk's states on chip. Code per kernel: 2 x S x N unrolled state
updates plus S x N adjoint steps (generated per N and S, no unroll over the chunk).

Registers (offline ``triton.compile`` for sm_90 on a 2-core CPU host, triton 3.8, N = 16, bf16,
4 warps, D/z/bias/softplus, per-token B/C; no GPU run yet): S = 2:
255 registers + 16 B stack (bidirectional: none), 450 shuffles and 57 ``bar.sync`` in the
kernel, 8.7 s to compile; S = 4: 255 + 256 B stack, 22 s; S = 8 (earlier revision): 255 + 1808 B,
79 s. The STATE_PASS variant: 96 registers, 1.3 s. Hence S = 2 by default.

Per sub-tile the u/delta/dout/z tiles are loaded coalesced ([BLOCK_D, S], threads along time,
or along channels for channel-last tensors), one sub-tile ahead of their use in both passes
(``ahead``; as the forward loads its next tile), and split into per-step columns (one
shared-memory conversion per time-contiguous tile, as in the forward);
per-step channel sums of g B and A g a h[t-1] are joined back into tiles, from which du and
ddelta are formed and stored coalesced. B/C per token are staged by the launcher into fp32
(.., Lp, N) rows (``stage_bc_kernel``, as for the forward): N/4 broadcast 16-byte loads per
step, loaded again in the adjoint steps (L1 hits) rather than held in registers.

Determinism: no float atomics. dB/dC per token are, per step, the N products of every thread
joined into one [BLOCK_D, NP] tile (NP = N padded to a power of two) and summed over the
program's channels (by default as a transpose through shared memory, ``CHANNEL_SUM``; or a
shuffle tree per value, 2 x NP x 5 shuffles per thread and step), then written as per-block
partials (ndir, batch, n_blocks, L, N); dA, dD, d delta_bias and constant dB/dC are per-channel
register sums written per (batch, segment); the launcher sums partials with ``torch.sum``. dC's
products need no adjoint, so that reduction runs before the adjoint steps (fewer live registers).

Both directions run the same code (direction 1 walks chunks, sub-tiles and steps the other way,
tiles stay in memory order); segments (``STATE_PASS``: the adjoint recurrence alone from a zero
carry, then ``segment_combine_kernel``, then the full pass from the combined carries) as in
``triton_bwd``. Offsets are 64-bit where they scale with batch x dim x L.
"""
from __future__ import annotations

import functools
import textwrap

from .triton_bwd import dz_code
from .triton_fwd import (DT_FROM_PRE, FORWARD_ROWS, HEADER, PROGRAM_ROWS, _bc_step_loads, _time, column_join,
                         column_split, load_generated, per_state, row_bases)

SIGNATURE = """
@triton.jit(do_not_specialize=RUNTIME_ARGS)
def {name}(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, dout_ptr, init_ptr, ypre_ptr,
    hbuf_ptr, du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr, seg_ptr,
    batch, dim, L, Lp, cpg_B, cpg_C, scale, n_segs, seg_chunks, n_chunks, m, has_init,
    su_dir, su_b, su_t, sd_dir, sd_b, sd_t, sz_b, sz_t, so_b, so_t, sg_dir, sg_b, sg_t,
    BLOCK_D: tl.constexpr, B_CONST: tl.constexpr, C_CONST: tl.constexpr, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, STATE_PASS: tl.constexpr,
):
"""

RUNTIME_ARGS = ["batch", "dim", "L", "Lp", "cpg_B", "cpg_C", "n_segs", "seg_chunks", "n_chunks", "m", "has_init",
                "su_dir", "su_b", "su_t", "sd_dir", "sd_b", "sd_t", "sz_b", "sz_t", "so_b", "so_t", "sg_dir", "sg_b",
                "sg_t"]

# Row bases (``triton_fwd.row_bases``): dout, ypre and dz share ``o_row``, du and ddelta ``g_row``
# (the launcher allocates the gradients dense).
ROWS = FORWARD_ROWS + [("g_row", "sg_dir", "sg_b", "x_row")]

SETUP = PROGRAM_ROWS + """
    blk_row = (dir64 * batch + pid_b) * tl.num_programs(0) + pid_d
    # Chunk-local scratch of sub-tile start states, one slot per program of the grid (programs of
    # different segments run at the same time): (programs, m, N, BLOCK_D), channel fastest; the
    # state stride is a constant, so the N addresses of a sub-tile share one register.
    program = (tl.program_id(2).to(tl.int64) * tl.num_programs(1) + pid_b) * tl.num_programs(0) + pid_d
    hb_row = program * m * (N_STATE * BLOCK_D) + tl.arange(0, BLOCK_D)
    B_row = B_ptr + (((dir64 * batch + pid_b) * (dim // cpg_B) + (pid_d * BLOCK_D) // cpg_B) * Lp) * N_STATE
    C_row = C_ptr + (((dir64 * batch + pid_b) * (dim // cpg_C) + (pid_d * BLOCK_D) // cpg_C) * Lp) * N_STATE
    cols = tl.arange(0, T)
    nidx = tl.arange(0, NP)
    zero_d = tl.full([BLOCK_D], 0.0, tl.float32)
    # Direction 1 walks chunks, sub-tiles and steps backwards (step j of a tile is column T - 1 - j).
    sgn = 1 - 2 * direction
    rev0 = direction * (T - 1)
    n_tiles = n_chunks * m
    i_start = seg * seg_chunks
    i_end = tl.minimum(i_start + seg_chunks, n_chunks)
    if HAS_D:
        Dv = tl.load(D_ptr + par, mask=dmask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + par, mask=dmask, other=0.0)
    dD_acc = tl.full([BLOCK_D, T], 0.0, tl.float32)
    db_acc = tl.full([BLOCK_D, T], 0.0, tl.float32)
"""

PER_STATE = """
    A2_@n = tl.load(A_ptr + par * N_STATE + @n, mask=dmask, other=0.0) * LOG2E
    c_@n = tl.load(init_ptr + seg_row * N_STATE + @n, mask=dmask & (has_init != 0), other=0.0)
    dA_@n = tl.full([BLOCK_D], 0.0, tl.float32)
    if B_CONST:
        Bc_@n = tl.load(B_ptr + par * N_STATE + @n, mask=dmask, other=0.0)
        dBc_@n = tl.full([BLOCK_D], 0.0, tl.float32)
    if C_CONST:
        Cc_@n = tl.load(C_ptr + par * N_STATE + @n, mask=dmask, other=0.0)
        dCc_@n = tl.full([BLOCK_D], 0.0, tl.float32)
"""

def _tile_at(s_expr: str) -> str:
    """Sub-tile ``s_expr`` (processing order inside chunk i) is memory tile kt: its steps ``t`` and
    mask ``m2``; padded steps (t >= L) are masked."""
    return f"""
pt = i * m + {s_expr}
kt = pt + direction * (n_tiles - 1 - 2 * pt)
tile_t = kt * T + rev0
t = kt * T + cols
m2 = dmask[:, None] & (t < L)[None, :]
"""


def _raw_loads(cl: bool, t: str, mask: str, suffix: str, grad: bool) -> str:
    """The u and delta tiles at steps ``t`` (and with ``grad`` dout and z) as loaded, in their
    dtype, named ``u{suffix}``, ``pre{suffix}`` (``go{suffix}``, ``z{suffix}``)."""
    lines = (f"u{suffix} = tl.load(u_ptr + u_row[:, None] + {_time(t, 'su_t', cl)}, mask={mask}, other=0.0)\n"
             f"pre{suffix} = tl.load(delta_ptr + d_row[:, None] + {_time(t, 'sd_t', cl)}, mask={mask}, other=0.0)\n")
    if grad:
        lines += f"go{suffix} = tl.load(dout_ptr + o_row[:, None] + {_time(t, 'so_t', cl)}, mask={mask}, other=0.0)\n"
        lines += (f"if HAS_Z:\n    z{suffix} = tl.load(z_ptr + z_row[:, None] + {_time(t, 'sz_t', cl)}, "
                  f"mask={mask}, other=0.0)\n")
    return lines


def _sub_tile_loads(cl: bool, step: str, more: str, grad: bool, ahead: bool) -> str:
    """This sub-tile's u/delta (and with ``grad`` dout/z) tiles, then dt (bias, softplus) and dt * u.
    With ``ahead`` they were loaded one sub-tile earlier (``u_nx``, ...) and the next sub-tile's,
    at steps ``t + step`` while ``more``, are loaded here (as the forward loads its next tile);
    otherwise they are loaded here."""
    if ahead:
        take = "u_in = u_nx\npre_in = pre_nx\n"
        if grad:
            take += "go_in = go_nx\nif HAS_Z:\n    z_in = z_nx\n"
        nxt = f"tn = t + {step}\nmn = dmask[:, None] & ((tn >= 0) & (tn < L) & ({more}))[None, :]\n"
        loads = take + nxt + _raw_loads(cl, "tn", "mn", "_nx", grad)
    else:
        loads = _raw_loads(cl, "t", "m2", "_in", grad)
    return loads + "u = u_in.to(tl.float32)\npre = pre_in.to(tl.float32)\n" + DT_FROM_PRE


def _tile_grad(cl: bool) -> str:
    """dy (gated dout) and the mask-and-softplus-derivative factor of ddelta, as tiles."""
    return f"""
zoffs = z_row[:, None] + {_time("t", "sz_t", cl)}
ooffs = o_row[:, None] + {_time("t", "so_t", cl)}
go = go_in.to(tl.float32)
if HAS_Z:
    zv = z_in.to(tl.float32)
    sz = _sigmoid(zv)
    dy = go * (zv * sz) * scale
else:
    dy = go * scale
if SOFTPLUS:
    dpre = tl.where(m2, _sigmoid(pre), 0.0)
else:
    dpre = tl.where(m2, 1.0, 0.0)
"""


def _tile_end(cl: bool) -> str:
    """After the adjoint steps: du, ddelta (and dz) from the joined per-step channel sums."""
    return f"""
if HAS_D:
    du = dt * gB + dy * Dv[:, None]
    dD_acc += dy * u
else:
    du = dt * gB
ddelta = (u * gB + Agh * LN2) * dpre
db_acc += ddelta
goffs = g_row[:, None] + {_time("t", "sg_t", cl)}
tl.store(du_ptr + goffs, du.to(du_ptr.dtype.element_ty), mask=m2)
tl.store(ddelta_ptr + goffs, ddelta.to(ddelta_ptr.dtype.element_ty), mask=m2)
"""

FINAL = """
    if STATE_PASS:
        tl.store(seg_ptr + seg_row * N_STATE + @n, c_@n, mask=dmask)
    else:
        tl.store(dA_ptr + seg_row * N_STATE + @n, dA_@n, mask=dmask)
        if seg == 0:
            tl.store(dh0_ptr + row * N_STATE + @n, c_@n, mask=dmask)
        if B_CONST:
            tl.store(dB_ptr + seg_row * N_STATE + @n, dBc_@n, mask=dmask)
        if C_CONST:
            tl.store(dC_ptr + seg_row * N_STATE + @n, dCc_@n, mask=dmask)
"""


def _reorder(src: str, dst: str, tile: int, bidir: bool) -> str:
    """``{dst}_j = {src}_j``; in the bidirectional kernel direction 1 takes column ``tile - 1 - j``
    (memory order <-> processing order; the mapping is its own inverse)."""
    if not bidir:
        return "".join(f"{dst}_{j} = {src}_{j}\n" for j in range(tile))
    return "".join(f"{dst}_{j} = tl.where(direction == 0, {src}_{j}, {src}_{tile - 1 - j})\n" for j in range(tile))


def _columns(tile_name: str, prefix: str, tile: int, bidir: bool) -> str:
    """Split a [BLOCK_D, T] tile into processing-order columns ``{prefix}_j``."""
    return (column_split(tile_name, [f"{prefix}m_{j}" for j in range(tile)], f"_{prefix}")
            + _reorder(f"{prefix}m", prefix, tile, bidir))


def _dt_columns(tile: int, bidir: bool) -> str:
    """Columns ``dt_j`` and ``dtu_j``. dt * u is formed per column from split dt and u tiles: splitting
    the product tile instead broke triton 3.6's layout-conversion pass at 2-step sub-tiles
    ("operand does not dominate this use", H200, 2026-11-28)."""
    return (_columns("dt", "dt", tile, bidir) + _columns("u", "uc", tile, bidir)
            + "".join(f"dtu_{j} = dt_{j} * uc_{j}\n" for j in range(tile)))


def _tile_of(prefix: str, tile: int, bidir: bool) -> str:
    """Join processing-order columns ``{prefix}_j`` into a memory-order [BLOCK_D, T] tile ``{prefix}``."""
    return (_reorder(prefix, f"{prefix}m", tile, bidir)
            + f"{prefix} = {column_join([f'{prefix}m_{j}' for j in range(tile)])}\n")


def _bc_step(name: str, d_state: int, j: int) -> str:
    """``{name}{j}_n``: step j's B or C values (constant, or the staged per-token row)."""
    const = "".join(f"    {name}{j}_{n} = {name}c_{n}\n" for n in range(d_state))
    return (f"if {name}_CONST:\n{const}else:\n"
            + textwrap.indent(_bc_step_loads(name, d_state, j), "    "))


def _forward_steps(d_state: int, tile: int, keep: bool) -> str:
    """The tile's S forward steps from the states ``h_n``; with ``keep`` every step's a and h stay
    in registers (``a{j}_n``, ``h{j}_n``), otherwise ``h_n`` is advanced in place."""
    body = ""
    for j in range(tile):
        body += f"tj{j} = tile_t + {j} * sgn\n" + _bc_step("B", d_state, j)
        for n in range(d_state):
            prev = f"h_{n}" if j == 0 or not keep else f"h{j - 1}_{n}"
            if keep:
                body += f"a{j}_{n} = tl.exp2(dt_{j} * A2_{n})\n"
                body += f"h{j}_{n} = a{j}_{n} * {prev} + dtu_{j} * B{j}_{n}\n"
            else:
                body += f"h_{n} = tl.exp2(dt_{j} * A2_{n}) * {prev} + dtu_{j} * B{j}_{n}\n"
    return body


def _adjoint_steps(d_state: int, tile: int, bidir: bool, transpose_sum: bool) -> str:
    """The tile's S adjoint steps, last step first."""
    body = ""
    for j in reversed(range(tile)):
        body += f"tj{j} = tile_t + {j} * sgn\n" + _bc_step("C", d_state, j)
        body += "if STATE_PASS:\n"
        body += "".join(f"    a{j}_{n} = tl.exp2(dt_{j} * A2_{n})\n" for n in range(d_state))
        body += "else:\n" + textwrap.indent(_bc_step("B", d_state, j), "    ")
        body += f"    gB_{j} = tl.full([BLOCK_D], 0.0, tl.float32)\n    Agh_{j} = gB_{j}\n"
        if not bidir:
            body += f"    if HAS_Z:\n        y_{j} = gB_{j}\n"
        body += textwrap.indent(
            _partial_sum("C", [f"dy_{j} * h{j}_{n}" for n in range(d_state)], j, transpose_sum), "    ")
        for n in range(d_state):
            body += f"g = c_{n} + C{j}_{n} * dy_{j}\n"
            body += "if not STATE_PASS:\n" + textwrap.indent(textwrap.dedent(f"""
                ghx = g * (h{j}_{n} - dtu_{j} * B{j}_{n})
                gB_{j} += g * B{j}_{n}
                Agh_{j} += A2_{n} * ghx
                dA_{n} += ghx * dt_{j}
                if B_CONST:
                    dBc_{n} += g * dtu_{j}
                else:
                    gx{j}_{n} = g * dtu_{j}
                if C_CONST:
                    dCc_{n} += dy_{j} * h{j}_{n}
                """).strip("\n"), "    ") + "\n"
            if not bidir:
                body += f"    if HAS_Z:\n        y_{j} += C{j}_{n} * h{j}_{n}\n"
            body += f"c_{n} = a{j}_{n} * g\n"
        dB_sum = _partial_sum("B", [f"gx{j}_{n}" for n in range(d_state)], j, transpose_sum)
        body += "if not STATE_PASS:\n" + textwrap.indent(dB_sum, "    ")
    return body


# The channel sum of a [BLOCK_D, NP] tile as a transpose: each halving moves the channel axis's
# top bit into the thread (Triton converts the layout once, through shared memory, for the whole
# chain) and adds the two halves; offline sm_90 SASS for 32 x 16 values: 4 STS.128 + 8 LDSM +
# 31 FADD instead of 80 SHFL + 80 FADD for the shuffle tree of ``_sum``.
CHANNEL_SUM = """

@triton.jit
def _halve_rows(x, R: tl.constexpr, NP: tl.constexpr):
    a, b = tl.split(tl.permute(tl.reshape(x, (2, R // 2, NP)), (1, 2, 0)))
    return a + b


@triton.jit
def _channel_sum(x, BD: tl.constexpr, NP: tl.constexpr):
""" + "".join(f"    if BD >= {r}:\n        x = _halve_rows(x, {r}, NP)\n" for r in (128, 64, 32, 16, 8, 4, 2)) + """\
    return tl.reshape(x, (NP,))
"""


def _partial_sum(which: str, values, j: int, transpose_sum: bool) -> str:
    """Step j's dB[t] or dC[t] (``values``: the thread's N products) summed over the program's
    channels (one [BLOCK_D, NP] reduction, NP = N padded to a power of two; a shuffle tree, or with
    ``transpose_sum`` :data:`CHANNEL_SUM`'s transpose), stored as per-block partials (ndir, batch,
    n_blocks, L, N). dC's products need no adjoint, so its reduction runs before the adjoint steps
    and only dB's N products are live across them."""
    values = list(values) + ["zero_d"] * (_pow2(len(values)) - len(values))
    tile = column_join(values)
    total = f"_channel_sum({tile}, BLOCK_D, NP)" if transpose_sum else f"_sum({tile}, axis=0)"
    return (f"if not {which}_CONST:\n    tl.store(d{which}_ptr + (blk_row * L + tj{j}) * N_STATE + nidx, "
            f"{total}, mask=(nidx < N_STATE) & (tj{j} < L))\n")


def _pow2(n: int) -> int:
    """Smallest power of two >= max(n, 2)."""
    return max(2, 1 << (n - 1).bit_length())


def _source(name: str, d_state: int, tile: int, bidir: bool, cl: bool, transpose_sum: bool, ahead: bool) -> str:
    src = HEADER + (CHANNEL_SUM if transpose_sum else "")
    src += (f"\nN_STATE = tl.constexpr({d_state})\nNP = tl.constexpr({_pow2(d_state)})\n"
            f"T = tl.constexpr({tile})\nLN2 = tl.constexpr(0.6931471805599453)\nRUNTIME_ARGS = {RUNTIME_ARGS!r}\n")
    src += SIGNATURE.format(name=name) + SETUP + row_bases(cl, ROWS)
    src += per_state(PER_STATE, d_state, 4) + "\n"
    chunk = "i = i_start + i_end - 1 - ii\n"
    # Pass 1: the chunk's sub-tile start states into hbuf. The barriers (two per chunk) order
    # hbuf's writes and reads between threads too, in case Triton maps a channel to different
    # (or replicated) threads in the two passes.
    pass1 = "k = i + direction * (n_chunks - 1 - 2 * i)\ntl.debug_barrier()\n"
    pass1 += "".join(f"h_{n} = tl.load(ckpt_ptr + (row * n_chunks + k) * N_STATE + {n}, mask=dmask, other=0.0)\n"
                     for n in range(d_state))
    if ahead:  # sub-tile 0's u/delta loaded before the loop, each later one a sub-tile ahead (t + sgn T)
        pass1 += _tile_at("0").strip("\n") + "\n" + _raw_loads(cl, "t", "m2 & (m > 1)", "_nx", False)
    pass1 += "for s in range(0, m):\n"
    loop1 = "".join(f"tl.store(hbuf_ptr + hb_row + (s * N_STATE + {n}) * BLOCK_D, h_{n}, mask=dmask)\n"
                    for n in range(d_state))
    loop1 += "if s < m - 1:\n" + textwrap.indent(
        _tile_at("s").strip("\n") + "\n" + _sub_tile_loads(cl, "sgn * T", "s + 2 < m", False, ahead)
        + _dt_columns(tile, bidir) + _forward_steps(d_state, tile, keep=False), "    ")
    pass1 += textwrap.indent(loop1, "    ") + "tl.debug_barrier()\n"
    chunk += "if not STATE_PASS:\n" + textwrap.indent(pass1, "    ")
    # Pass 2: sub-tiles in reverse (next: t - sgn T); recompute S steps, then the adjoint steps.
    if ahead:
        chunk += _tile_at("m - 1").strip("\n") + "\n" + _raw_loads(cl, "t", "m2", "_nx", True)
    sub = "s = m - 1 - ss\n" + _tile_at("s").strip("\n") + "\n"
    sub += _sub_tile_loads(cl, "-sgn * T", "ss + 1 < m", True, ahead)
    sub += _tile_grad(cl).strip("\n") + "\n"
    sub += _dt_columns(tile, bidir) + _columns("dy", "dy", tile, bidir)
    recompute = "".join(f"h_{n} = tl.load(hbuf_ptr + hb_row + (s * N_STATE + {n}) * BLOCK_D, mask=dmask, other=0.0)\n"
                        for n in range(d_state))
    recompute += _forward_steps(d_state, tile, keep=True)
    sub += "if not STATE_PASS:\n" + textwrap.indent(recompute, "    ")
    sub += _adjoint_steps(d_state, tile, bidir, transpose_sum)
    end = _tile_of("gB", tile, bidir) + _tile_of("Agh", tile, bidir)
    if not bidir:
        end += "if HAS_Z:\n" + textwrap.indent(_tile_of("y", tile, bidir), "    ")
    end += _tile_end(cl).strip("\n") + "\n" + dz_code(bidir, 0)
    sub += "if not STATE_PASS:\n" + textwrap.indent(end, "    ")
    chunk += "for ss in range(0, m):\n" + textwrap.indent(sub, "    ")
    src += "    for ii in range(i_start, i_end):\n" + textwrap.indent(chunk, " " * 8)
    src += per_state(FINAL, d_state, 4) + "\n"
    src += ("    if not STATE_PASS:\n"
            "        if HAS_D:\n            tl.store(dD_ptr + seg_row, _sum(dD_acc, axis=1), mask=dmask)\n"
            "        if HAS_BIAS:\n            tl.store(dbias_ptr + seg_row, _sum(db_acc, axis=1), mask=dmask)\n")
    return src


@functools.lru_cache(maxsize=None)
def seq_backward_kernel(d_state: int, tile: int, bidir: bool, channel_last: bool = False,
                        transpose_sum: bool = False, ahead: bool = False):
    """The sequential backward kernel: ``d_state`` states per thread, sub-tiles of ``tile`` steps,
    with ``bidir`` grid axis 2 = direction x segment, with ``channel_last`` u/delta/z/dout and the
    gradients in channel-last memory, with ``transpose_sum`` the dB/dC channel sums as a transpose
    (:data:`CHANNEL_SUM`) instead of shuffle trees, with ``ahead`` each sub-tile's tiles loaded one
    sub-tile ahead (:func:`_sub_tile_loads`)."""
    name = (f"ss_bwd_seq_n{d_state}_t{tile}_{'bi' if bidir else 'uni'}{'_cl' if channel_last else ''}"
            f"{'_tsum' if transpose_sum else ''}{'_ahead' if ahead else ''}")
    return load_generated(name, _source(name, d_state, tile, bidir, channel_last, transpose_sum, ahead))
