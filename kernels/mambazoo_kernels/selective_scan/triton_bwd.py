"""Triton backward kernel of the selective scan, generated per ``d_state`` (layouts: ``triton_fwd``).

For channel d and state n, with a[t] = exp(dt[t] A), x[t] = dt[t] u[t] B[t] and dy = dout * gate:

    g[t] = C[t] dy[t] + a[t+1] g[t+1]          (adjoint of h[t]; g[L-1] gets d final_state)
    du   = dy D + sum_n g dt B                  ddt = sum_n g (u B + A a h[t-1])
    dA   = sum_t g a h[t-1] dt                  dB[t] = sum_d g dt u,  dC[t] = sum_d dy h
    d initial_state = a[0] g[0]

A program owns BLOCK_D channels (all in one B/C group) and walks its chunks of T steps in the
reverse of the direction's processing order. Per chunk and state it recomputes h from the
forward's checkpoint with one ``tl.associative_scan`` and gets g with a second scan run the
other way (a three-term operator absorbs the one-step shift a[t+1]); a[t] h[t-1] = h[t] - x[t]
needs no shifted tile. No (batch, dim, L, N) tensor is stored.

Long sequences with few channels are cut into segments (grid axis 2 = direction x segment):
STATE_PASS runs only the adjoint recurrence (no h) from a zero carry and writes what each segment
passes on; ``segment_combine_kernel`` chains those into the carry entering every segment; the full
pass then runs each segment from its carry (``init_ptr``: d final_state, or the combined carries).

Determinism: no float atomics. dB/dC per token are summed over the program's channels in
registers and written as per-block partials (ndir, batch, n_blocks, N, L); dA, dD, d delta_bias
and constant dB/dC as per-(batch, segment) partials; the launcher sums partials with ``torch.sum``.
"""
from __future__ import annotations

import functools
import textwrap

from .triton_fwd import (COMMON_ARGS, HEADER, RUNTIME_ARGS, SETUP, bc_tile, load_generated, load_step_tile,
                         per_state, state_code, store_channels, tile_load, tile_store_rows)

BWD_SIGNATURE = """
@triton.jit(do_not_specialize=RUNTIME_ARGS)
def {name}(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, dout_ptr, init_ptr, ypre_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr, seg_ptr,
{common}    BLOCK_D: tl.constexpr, T: tl.constexpr,
    B_CONST: tl.constexpr, C_CONST: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, STATE_PASS: tl.constexpr,
):
"""

INIT = """
    g_@n = tl.load(init_ptr + seg_row * N_STATE + @n, mask=dmask & (has_init != 0), other=0.0)
    dA_@n = tl.full([BLOCK_D], 0.0, tl.float32)
    if B_CONST:
        dBc_@n = tl.full([BLOCK_D], 0.0, tl.float32)
    if C_CONST:
        dCc_@n = tl.full([BLOCK_D], 0.0, tl.float32)
"""

STATE = """
A_n = tl.load(A_ptr + par * N_STATE + @n, mask=dmask, other=0.0)[:, None]
a = tl.exp2(dt * (A_n * LOG2E))
CLOAD
_f, Pg, Q = tl.associative_scan((a, one, Cv * dy), 1, _adj_combine, reverse=ADJ_REV)
g = Q + Pg * g_@n[:, None]
g_@n = _sum(tl.where(is_first, a * g, 0.0), axis=1)
if not STATE_PASS:
BLOAD
    x = dtu * Bv
    P, hl = tl.associative_scan((a, x), 1, _lin_combine, reverse=FWD_REV)
    h = hl + P * tl.load(ckpt_ptr + ck + @n, mask=dmask, other=0.0)[:, None]
    ghx = g * (h - x)
    gB = g * Bv
    du += gB * dt
    ddt += gB * u + A_n * ghx
    dA_@n += _sum(ghx * dt, axis=1)
    if B_CONST:
        dBc_@n += _sum(g * dtu, axis=1)
    else:
DB_STORE
    if C_CONST:
        dCc_@n += _sum(dy * h, axis=1)
    else:
DC_STORE
    if NEED_Y:
        y += Cv * h
"""

FINAL = """
    if STATE_PASS:
""" + store_channels("seg_ptr + seg_row * N_STATE + @n", "g_@n", 8) + """
    else:
""" + store_channels("dA_ptr + seg_row * N_STATE + @n", "dA_@n", 8) + """
        if seg == 0:
""" + store_channels("dh0_ptr + row * N_STATE + @n", "g_@n", 12) + """
        if B_CONST:
""" + store_channels("dB_ptr + seg_row * N_STATE + @n", "dBc_@n", 12) + """
        if C_CONST:
""" + store_channels("dC_ptr + seg_row * N_STATE + @n", "dCc_@n", 12)

def _chunk_start(vec: int) -> str:
    """Per chunk: dout and z tiles, the gated dy, and the accumulators of the full pass."""
    piece_mask = "dmask[:, None] & (tp + sgn * @j < L)"
    return """
        ck = (row * n_tiles + k) * N_STATE
        zoffs = z_row[:, None] + t[None, :]
        ooffs = zoffs
""" + tile_load("go", "dout_ptr + z_row[:, None] + (tp + sgn * @j)", piece_mask, vec, 8) + """
        if HAS_Z:
""" + tile_load("zv", "z_ptr + z_row[:, None] + (tp + sgn * @j)", piece_mask, vec, 12) + """
            sz = _sigmoid(zv)
            dy = go * (zv * sz) * scale
        else:
            dy = go * scale
        if not STATE_PASS:
            if HAS_D:
                du = dy * Dv[:, None]
                dD_acc += _sum(dy * u, axis=1)
            else:
                du = tl.full([BLOCK_D, T], 0.0, tl.float32)
            ddt = tl.full([BLOCK_D, T], 0.0, tl.float32)
            y = tl.full([BLOCK_D, T], 0.0, tl.float32)
"""

CHUNK_END = """
        if not STATE_PASS:
            if SOFTPLUS:
                ddelta = ddt * _sigmoid(pre)
            else:
                ddelta = ddt
            tl.store(du_ptr + offs, du.to(du_ptr.dtype.element_ty), mask=m2)
            tl.store(ddelta_ptr + offs, ddelta.to(ddelta_ptr.dtype.element_ty), mask=m2)
            if HAS_BIAS:
                db_acc += _sum(tl.where(m2, ddelta, 0.0), axis=1)
"""

# dz = dout * y * silu'(z) of a tile (this kernel's and ``triton_bwd_seq``'s): y is the scan
# output plus D u; the fused bidirectional op's y is the summed output the forward stored
# (``ypre``), and direction 0 writes dz.
DZ_SINGLE = """
if HAS_Z:
    dsilu = sz * (1.0 + zv * (1.0 - sz))
    if HAS_D:
        y += Dv[:, None] * u
    tl.store(dz_ptr + ooffs, (go * y * dsilu).to(dz_ptr.dtype.element_ty), mask=m2)
"""

DZ_BIDIR = """
if HAS_Z:
    dsilu = sz * (1.0 + zv * (1.0 - sz))
    if direction == 0:
        yp = tl.load(ypre_ptr + ooffs, mask=m2, other=0.0).to(tl.float32)
        tl.store(dz_ptr + ooffs, (go * yp * dsilu).to(dz_ptr.dtype.element_ty), mask=m2)
"""


def dz_code(bidir: bool, indent: int) -> str:
    """The dz lines of a tile (``DZ_BIDIR`` or ``DZ_SINGLE``) indented by ``indent`` spaces; dz and
    ypre are laid out like dout (offsets ``ooffs``)."""
    return textwrap.indent((DZ_BIDIR if bidir else DZ_SINGLE).strip("\n") + "\n", " " * indent)


def _chunk_bwd_source(name: str, d_state: int, bidir: bool, vec: int) -> str:
    state = STATE.replace("BLOAD", bc_tile("B", vec, 4)).replace("CLOAD", bc_tile("C", vec, 0))
    for which, value in (("B", "_sum(g * dtu, axis=0)"), ("C", "_sum(dy * h, axis=0)")):
        ptr = f"d{which}_ptr + (blk_row * N_STATE + @n) * L + (tp + sgn * @j) + zero_rows[:, None]"
        state = state.replace(f"D{which}_STORE", tile_store_rows(ptr, value, "(tp + sgn * @j < L)", vec, 8).rstrip("\n"))
    state = state.replace("NEED_Y", "False" if bidir else "HAS_Z")
    src = HEADER + f"\nN_STATE = tl.constexpr({d_state})\nVEC = tl.constexpr({vec})\nRUNTIME_ARGS = {RUNTIME_ARGS!r}\n"
    src += BWD_SIGNATURE.format(name=name, common=COMMON_ARGS)
    src += SETUP
    src += per_state(INIT, d_state, 4) + "\n"
    src += """
    blk_row = (dir64 * batch + pid_b) * tl.num_programs(0) + pid_d
    one = tl.full([BLOCK_D, T], 1.0, tl.float32)
    dD_acc = tl.full([BLOCK_D], 0.0, tl.float32)
    db_acc = tl.full([BLOCK_D], 0.0, tl.float32)
    for ii in range(i_start, i_end):
        i = i_start + i_end - 1 - ii
        k = i + direction * (n_tiles - 1 - 2 * i)
""" + load_step_tile(vec) + _chunk_start(vec)
    src += state_code("is_first = (cols == 0)[None, :]\n" + state, d_state, {"FWD_REV": False, "ADJ_REV": True}, 8)
    src += CHUNK_END + dz_code(bidir, 12)
    src += per_state(FINAL, d_state, 4) + "\n"
    src += "    if not STATE_PASS:\n        if HAS_D:\n" + store_channels("dD_ptr + seg_row", "dD_acc", 12)
    src += "        if HAS_BIAS:\n" + store_channels("dbias_ptr + seg_row", "db_acc", 12)
    return src


@functools.lru_cache(maxsize=None)
def chunk_backward_kernel(d_state: int, bidir: bool, vec: int):
    """The backward kernel: ``d_state`` states, ``vec`` steps per thread, and with ``bidir`` grid
    axis 2 = direction x segment."""
    name = f"ss_bwd_chunk_n{d_state}_v{vec}_{'bi' if bidir else 'uni'}"
    return load_generated(name, _chunk_bwd_source(name, d_state, bidir, vec))
