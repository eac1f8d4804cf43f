"""Triton forward kernel of the selective scan (Mamba-1, S6), generated per ``d_state``.

Layouts (the launchers in ``triton_op`` prepare them; ``ndir`` is 1, or 2 for the fused
bidirectional scan, whose direction is grid axis 2):

    u, delta          (ndir, batch, dim, L) contiguous, fp32/bf16/fp16
    z, out            (batch, dim, L) contiguous (shared by both directions)
                      or all four channel-last ((.., L, dim) memory, any time/batch strides):
                      a tile's rows are then its steps and need no layout conversion
                      (``row_bases``; the mixers' linear layers produce this layout)
    A                 (ndir, dim, N) fp32;  D, delta_bias (ndir, dim) fp32
    B, C per token    (ndir, batch, groups, N, L), any strides, passed explicitly (backward);
                      the forward reads them staged as fp32 (ndir, batch, groups, Lp, N)
    B, C constant     (ndir, dim, N): the "group" stride is then the channel stride
    states            (ndir, batch, dim, N) fp32; checkpoints (ndir, batch, dim, n_chunks, N) fp32

Direction 1 scans right to left: it walks the time tiles in descending order and each tile's
steps backwards (the tiles themselves are loaded and stored in memory order), so both directions
run the same code and nothing is flipped in memory.

The forward kernel (``seq_forward_kernel``) is sequential in time with one thread per channel:
a program owns ``BLOCK_D = 32 * num_warps`` channels (all in one B/C group), each thread keeps
its channel's N states as N separate fp32 scalars (the source is generated per N), and the
sequence is walked in tiles of T steps. A [BLOCK_D, T] tile of u and delta is loaded coalesced
(threads along time) one tile ahead, converted once per tile to a layout holding a whole row per
thread (channel-last tiles load that way), and split into its T columns (register renames); step
j then updates all N states of the thread's channel, with its B/C loaded in the step or one step
ahead (``bc_ahead``). B and C per token are staged once per call into fp32 (.., Lp, N) buffers
(``stage_bc_kernel``), so one step's N values are 16-byte vectors that every thread of the
program loads as broadcasts (N / 4 loads per step instead of N). The output columns are joined
back into a tile, gated by z and stored coalesced. The state is stored on every chunk edge of the
backward kernel (``store_ckpt``), which recomputes the states chunk by chunk from these
checkpoints instead of keeping a (batch, dim, L, N) tensor.

Why code generation: the N per-state carries are N separate [BLOCK_D] variables, one source
line per state (a [BLOCK_D, N] tile would be spread over threads by Triton and cost a shuffle
or shared-memory round trip per access). The source is generated for the N in use, written to a
private temporary folder and imported, so ``inspect.getsource`` (used by both the compiler and
``TRITON_INTERPRET=1``) can read it. The chunk helpers below ``SETUP`` (strided tile pieces,
per-state scans) serve the time-parallel backward kernel in ``triton_bwd``.

Long sequences with few channels (too few programs to fill the GPU) are cut into segments, grid
axis 2 = direction x segment: a state pass (``STATE_PASS``) runs each segment from a zero state
and writes its end state and sum of dt, ``segment_combine_kernel`` chains them into each
segment's start state (the carry through a segment decays by exp(A * sum dt)), and the full
pass runs all segments in parallel from those states. This costs a second pass of exps.

The fused bidirectional combine: each direction's program writes its fp32 ``y`` tile to a
scratch buffer, then increments an int32 flag per (batch, channel block, time tile); the
program that finds the flag at 1 came second, reads the other direction's tile and writes
``(y_f + y_r) * scale * silu(z)``. fp32 addition is commutative, so the result does not depend
on which direction finished first.
"""
from __future__ import annotations

import atexit
import functools
import importlib.util
import os
import re
import shutil
import tempfile
import textwrap

import triton
import triton.language as tl

_GENERATED_DIR = None


def _transposed_pieces() -> bool:
    """Whether strided tile pieces are loaded as [T // VEC, BLOCK_D] and transposed.

    A piece's pointer tensor is equally non-contiguous along both axes, and Triton's coalescing
    breaks that tie by version: 3.6 makes axis 0 the fastest, 3.8 axis 1. The kernels need the
    threads of a warp to run along time (axis 1 of [BLOCK_D, T // VEC]), so under 3.6 the pieces
    are loaded (and stored) with time as axis 0 and transposed in registers, which is free.
    """
    forced = os.environ.get("MAMBAZOO_TRANSPOSED_PIECES")  # tests run both forms under the interpreter
    if forced is not None:
        return forced == "1"
    major, minor = (int(part) for part in re.findall(r"\d+", triton.__version__)[:2])
    return (major, minor) < (3, 7)


TRANSPOSED = _transposed_pieces()


def piece(expr: str) -> str:
    """A piece's pointer/mask/value expression in the orientation of :data:`TRANSPOSED`."""
    if not TRANSPOSED:
        return expr
    return re.sub(r"\btp\b", "tpT", expr.replace("[:, None]", "[None, :]")).replace("zero_cols", "zero_colsT")

HEADER = '''
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _lin_combine(a1, x1, a2, x2):
    # h = a * h_prev + x; element 1 comes first in scan order.
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _adj_combine(f1, p1, q1, f2, p2, q2):
    # Adjoint g[t] = c[t] + a[t+1] g[t+1], scanned against the processing order: element 1 is
    # the LATER segment (in processing order), element 2 the earlier one. A segment [t..s] is
    # (a[t], prod a[t+1..s], g[t] given a zero carry); g[t] = q + p * (a[s+1] g[s+1]).
    w = p2 * f1
    return f2, w * p1, q2 + w * q1


# Only core builtins and the helpers below: triton.language.standard's functions (tl.sum,
# tl.sigmoid, tl.cdiv, tl.zeros) are @jit functions whose interpreter/compiled mode is fixed when
# triton is first imported, so a process that imported triton before setting TRITON_INTERPRET=1
# (e.g. through timm -> torch._dynamo) could not run these kernels under the interpreter.
@triton.jit
def _sum(x, axis: tl.constexpr):
    # The standard sum's combine function, which the interpreter also recognizes (numpy fast path).
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _softplus(x):
    # log1p(exp(x)) accurate for small exp(x) (Goldberg), identity above 20 like torch.
    e = tl.exp(tl.minimum(x, 20.0))
    v = 1.0 + e
    sp = tl.where(v == 1.0, e, tl.log(v) * (e / (v - 1.0)))
    return tl.where(x > 20.0, x, sp)
'''


def per_state(template: str, d_state: int, indent: int) -> str:
    """Repeat ``template`` once per state, ``@n`` replaced by the state index."""
    pad = " " * indent
    blocks = [textwrap.indent(textwrap.dedent(template).strip("\n"), pad).replace("@n", str(n)) for n in range(d_state)]
    return "\n".join(blocks)


def load_generated(name: str, source: str):
    """Write ``source`` to a private temporary module and return its attribute ``name``."""
    global _GENERATED_DIR
    if _GENERATED_DIR is None:
        _GENERATED_DIR = tempfile.mkdtemp(prefix="mambazoo_kernels_")
        atexit.register(shutil.rmtree, _GENERATED_DIR, True)
    path = os.path.join(_GENERATED_DIR, f"{name}.py")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(source)
    os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(f"mambazoo_kernels_generated_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


# Sizes and flags that vary per call are plain (unspecialized) arguments, so one compiled kernel
# serves every shape; only what changes the arithmetic is a constexpr.
RUNTIME_ARGS = ["batch", "dim", "L", "cpg_B", "cpg_C", "n_segs", "seg_chunks", "has_init", "store_ckpt",
                "store_ypre", "sB_dir", "sB_b", "sB_g", "sB_n", "sB_t", "sC_dir", "sC_b", "sC_g", "sC_n", "sC_t"]

COMMON_ARGS = """
    batch, dim, L, cpg_B, cpg_C, scale, n_segs, seg_chunks, has_init, store_ckpt, store_ypre,
    sB_dir, sB_b, sB_g, sB_n, sB_t,
    sC_dir, sC_b, sC_g, sC_n, sC_t,
"""

# The start of every kernel's program setup (this module's and both backwards'): ids (int64
# before any product), the channel block and its row offsets into (ndir, batch, dim, ..) tensors.
PROGRAM_ROWS = """
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    direction = tl.program_id(2) // n_segs
    seg = tl.program_id(2) - direction * n_segs
    dir64 = direction.to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < dim
    offs_d64 = offs_d.to(tl.int64)
    row = (dir64 * batch + pid_b) * dim + offs_d64
    seg_row = row * n_segs + seg
    x_row = row * L
    z_row = (pid_b * dim + offs_d64) * L
    par = dir64 * dim + offs_d64
"""

# Program setup of the chunked kernels: B/C bases, and the program's segment: processing-order
# tiles [i_start, i_end) of its direction.
SETUP = PROGRAM_ROWS + """
    B_base = B_ptr + dir64 * sB_dir + pid_b * sB_b + ((pid_d * BLOCK_D) // cpg_B).to(tl.int64) * sB_g
    C_base = C_ptr + dir64 * sC_dir + pid_b * sC_b + ((pid_d * BLOCK_D) // cpg_C).to(tl.int64) * sC_g
    B_chan = B_ptr + dir64 * sB_dir + offs_d64 * sB_g
    C_chan = C_ptr + dir64 * sC_dir + offs_d64 * sC_g
    zero_rows = offs_d * 0
    piece_cols = (tl.arange(0, T // VEC) * VEC)[None, :]
    piece_colsT = (tl.arange(0, T // VEC) * VEC)[:, None]
    zero_cols = piece_cols * 0
    zero_colsT = piece_colsT * 0
    cols = tl.arange(0, T)
    # Direction 1 reads every tile backwards (column c of a tile is step T - 1 - c), so both
    # directions run the same code: scans, carries and edges work in processing order.
    sgn = 1 - 2 * direction
    rev0 = direction * (T - 1)
    n_tiles = (L + T - 1) // T
    i_start = seg * seg_chunks
    i_end = tl.minimum(i_start + seg_chunks, n_tiles)
    if HAS_D:
        Dv = tl.load(D_ptr + par, mask=dmask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + par, mask=dmask, other=0.0)
"""


def join_tree(names) -> str:
    """``tl.join`` nest whose flattened last axes enumerate ``names`` in order (lowest bit last)."""
    if len(names) == 1:
        return names[0]
    return f"tl.join({join_tree(names[0::2])}, {join_tree(names[1::2])})"


def split_tree(value: str, names, tmp: str) -> str:
    """Inverse of :func:`join_tree`: assign the pieces of ``value`` (last axes of size 2) to ``names``."""
    if len(names) == 1:
        return f"{names[0]} = {value}\n"
    return (f"{tmp}e, {tmp}o = tl.split({value})\n" + split_tree(f"{tmp}e", names[0::2], tmp + "e")
            + split_tree(f"{tmp}o", names[1::2], tmp + "o"))


def tile_load(var: str, ptr: str, mask: str, vec: int, indent: int) -> str:
    """Load a [BLOCK_D, T] fp32 tile as ``vec`` strided [BLOCK_D, T // vec] loads joined together.

    Row starts are not 16-byte aligned for odd L, so a plain tile load gets one element per
    thread with threads along time, the worst layout for a scan and for per-row carries. Joining
    strided pieces gives each thread ``vec`` consecutive steps of one channel instead (the joined
    axes live in registers). ``ptr``/``mask`` use ``tp`` (first step of each piece) and ``@j``
    (offset inside the piece); ``tp`` is built from the loop-invariant 2-D ``piece_cols`` so
    that no index vector changes layout inside the loop.
    """
    pieces = [f"{var}_{j}" for j in range(vec)]
    load = "tl.trans(tl.load({}, mask={}, other=0.0))" if TRANSPOSED else "tl.load({}, mask={}, other=0.0)"
    lines = [
        f"{name} = " + load.format(piece(ptr.replace('@j', str(j))), piece(mask.replace('@j', str(j))))
        + ".to(tl.float32)"
        for j, name in enumerate(pieces)
    ]
    lines.append(f"{var} = tl.reshape({join_tree(pieces)}, (BLOCK_D, T))")
    return textwrap.indent("\n".join(lines), " " * indent) + "\n"


def tile_store_rows(ptr: str, value: str, mask: str, vec: int, indent: int) -> str:
    """Store a [T] vector ``value`` (one value per step, e.g. a sum over channels) in the layout of
    :func:`tile_load`, as ``vec`` strided pieces that every channel row writes identically; this
    keeps the reduction's layout (no shared-memory round trip). ``ptr``/``mask`` as in tile_load."""
    names = [f"_piece{j}" for j in range(vec)]
    shape = ", ".join(["BLOCK_D", "T // VEC"] + ["2"] * (vec.bit_length() - 1))
    lines = f"_full = tl.reshape(tl.broadcast_to(({value})[None, :], (BLOCK_D, T)), ({shape}))\n"
    lines += split_tree("_full", names, "_s")
    for j, name in enumerate(names):
        value = f"tl.trans({name})" if TRANSPOSED else name
        lines += f"tl.store({piece(ptr.replace('@j', str(j)))}, {value}, mask={piece(mask.replace('@j', str(j)))})\n"
    return textwrap.indent(lines, " " * indent)


def store_channels(ptr: str, value: str, indent: int) -> str:
    """Store a per-channel [BLOCK_D] vector without leaving the tile layout: every thread of a row
    writes the same value to the same address ([BLOCK_D, T // VEC] pointers, zero column stride)."""
    line = (f"tl.store(({ptr})[:, None] + zero_cols, ({value})[:, None] + zero_cols.to(tl.float32), "
            "mask=dmask[:, None] & (zero_cols == 0))")
    return " " * indent + piece(line) + "\n"


# dt of a [BLOCK_D, T] tile from its delta (``pre``), and dt * u; masked steps (padding, t >= L)
# get dt = 0, an identity step.
DT_FROM_PRE = """
if HAS_BIAS:
    pre = pre + bias[:, None]
if SOFTPLUS:
    dt = tl.where(m2, _softplus(pre), 0.0)
else:
    dt = tl.where(m2, pre, 0.0)
dtu = dt * u
"""


def load_step_tile(vec: int) -> str:
    """One tile's u and delta with bias/softplus; masked steps get dt = 0 (an identity step)."""
    piece_mask = "dmask[:, None] & (tp + sgn * @j < L)"
    return (
        "        t = k * T + rev0 + sgn * cols\n"
        "        tp = k * T + rev0 + sgn * piece_cols\n"
        "        tpT = k * T + rev0 + sgn * piece_colsT\n"
        "        m2 = dmask[:, None] & (t < L)[None, :]\n"
        "        offs = x_row[:, None] + t[None, :]\n"
        + tile_load("u", "u_ptr + x_row[:, None] + (tp + sgn * @j)", piece_mask, vec, 8)
        + tile_load("pre", "delta_ptr + x_row[:, None] + (tp + sgn * @j)", piece_mask, vec, 8)
        + textwrap.indent(DT_FROM_PRE, " " * 8))


def bc_tile(name: str, vec: int, indent: int) -> str:
    """B or C for state @n as a [BLOCK_D, T] tile (per token: one row broadcast over channels)."""
    per_token = tile_load(
        f"{name}v", f"{name}_base + @n * s{name}_n + (tp + sgn * @j) * s{name}_t + zero_rows[:, None]",
        "(tp + sgn * @j < L)", vec, 4)
    return textwrap.indent(
        f"if {name}_CONST:\n"
        f"    {name}v = tl.load({name}_chan + @n * s{name}_n, mask=dmask, other=0.0).to(tl.float32)[:, None]\n"
        f"else:\n" + per_token, " " * indent)


def state_code(state: str, d_state: int, replacements, indent: int) -> str:
    """The per-state code, placeholders (scan directions, chunk edges) replaced, indented."""
    body = per_state(state, d_state, 0)
    for placeholder, value in replacements.items():
        body = body.replace(placeholder, str(value))
    return textwrap.indent(body, " " * indent) + "\n"


# ---------------------------------------------------------------------------------------------
# sequential forward kernel: one thread per channel, the N states in that thread's registers.

def column_split(value: str, names, tmp: str) -> str:
    """Split the [BLOCK_D, len(names)] tile ``value`` into its columns (``names``, [BLOCK_D] each).

    ``tl.split`` needs the split axis inside one thread, so Triton converts the tile once to a
    layout holding a whole row per thread (one shared-memory round trip per tile); the splits
    below that are register renames."""
    if len(names) == 1:
        return f"{names[0]} = {value}\n"
    part = value if len(names) == 2 else f"tl.reshape({value}, (BLOCK_D, {len(names) // 2}, 2))"
    return (f"{tmp}e, {tmp}o = tl.split({part})\n" + column_split(f"{tmp}e", names[0::2], tmp + "e")
            + column_split(f"{tmp}o", names[1::2], tmp + "o"))


def column_join(names) -> str:
    """Inverse of :func:`column_split`: a [BLOCK_D, len(names)] tile from its columns."""
    if len(names) == 1:
        return names[0]
    joined = f"tl.join({column_join(names[0::2])}, {column_join(names[1::2])})"
    return joined if len(names) == 2 else f"tl.reshape({joined}, (BLOCK_D, {len(names)}))"


def vector_split(value: str, names, tmp: str) -> str:
    """Split a small 1-D tensor (held whole by every thread) into scalars."""
    if len(names) == 1:
        return f"{names[0]} = {value}\n"
    part = value if len(names) == 2 else f"tl.reshape({value}, ({len(names) // 2}, 2))"
    return (f"{tmp}e, {tmp}o = tl.split({part})\n" + vector_split(f"{tmp}e", names[0::2], tmp + "e")
            + vector_split(f"{tmp}o", names[1::2], tmp + "o"))


def _bc_width(d_state: int) -> int:
    """States per B/C vector load: 4 fp32 (16 bytes) when N allows."""
    return 4 if d_state % 4 == 0 else (2 if d_state % 2 == 0 else 1)


def _bc_step_loads(name: str, d_state: int, j: int, mask: str = "") -> str:
    """Step j's per-token B or C row, N fp32 values from the staged (.., Lp, N) buffer, as
    ``{name}{j}_{n}`` scalars. Every thread loads the same 16-byte vectors (a broadcast). ``mask``
    (a scalar condition) guards loads that may fall outside the buffer."""
    width = _bc_width(d_state)
    guard = f", mask={mask}, other=0.0" if mask else ""
    lines = ""
    for i in range(d_state // width):
        ptr = f"{name}_row + (tj{j} * N_STATE + {i * width})"
        load = f"tl.load({ptr} + tl.arange(0, {width}){guard})" if width > 1 else f"tl.load({ptr}{guard})"
        lines += vector_split(load, [f"{name}{j}_{i * width + w}" for w in range(width)], f"_{name}{j}_{i}")
    return lines


def _bc_loads(d_state: int, j: int, mask: str = "") -> str:
    """B/C of step ``j`` (``tj{j}``) as scalars ``B{j}_n``, ``C{j}_n`` (constant ones copied)."""
    body = "if B_CONST:\n" + "".join(f"    B{j}_{n} = Bc_{n}\n" for n in range(d_state))
    body += "else:\n" + textwrap.indent(_bc_step_loads("B", d_state, j, mask), "    ")
    body += "if not STATE_PASS:\n    if C_CONST:\n" + "".join(f"        C{j}_{n} = Cc_{n}\n" for n in range(d_state))
    body += "    else:\n" + textwrap.indent(_bc_step_loads("C", d_state, j, mask), "        ")
    return body


def _seq_step(d_state: int, j: int, bc_ahead: bool) -> str:
    """Step j of a tile: B/C of the step, N state updates and the output column y_j. With
    ``bc_ahead`` the step's B/C were loaded one step earlier and it loads the next step's (the
    next tile's first after the last step; ``tj`` may then leave the buffer, hence the mask)."""
    if bc_ahead:
        body = f"tj{j + 1} = tile_t + {j + 1} * sgn\n"
        body += _bc_loads(d_state, j + 1, f"(tj{j + 1} >= 0) & (tj{j + 1} < Lp)")
    else:
        body = f"tj{j} = tile_t + {j} * sgn\n" + _bc_loads(d_state, j)
    body += "".join(f"h_{n} = tl.exp2(dt_{j} * A_{n}) * h_{n} + dtu_{j} * B{j}_{n}\n" for n in range(d_state))
    body += "if not STATE_PASS:\n"
    body += f"    y_{j} = " + " + ".join(f"C{j}_{n} * h_{n}" for n in range(d_state)) + "\n"
    return body


SEQ_SIGNATURE = """
@triton.jit(do_not_specialize=SEQ_RUNTIME_ARGS)
def {name}(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr,
    out_ptr, hT_ptr, ckpt_ptr, ybuf_ptr, flag_ptr, ypre_ptr, seg_ptr, segdt_ptr,
    batch, dim, L, Lp, cpg_B, cpg_C, scale, n_segs, seg_tiles, n_tiles, ck_tiles, n_ck,
    has_init, store_ckpt, store_ypre, su_dir, su_b, su_t, sd_dir, sd_b, sd_t, sz_b, sz_t, so_b, so_t,
    BLOCK_D: tl.constexpr, B_CONST: tl.constexpr, C_CONST: tl.constexpr, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, STATE_PASS: tl.constexpr,
):
"""

SEQ_RUNTIME_ARGS = ["batch", "dim", "L", "Lp", "cpg_B", "cpg_C", "n_segs", "seg_tiles", "n_tiles", "ck_tiles",
                    "n_ck", "has_init", "store_ckpt", "store_ypre", "su_dir", "su_b", "su_t", "sd_dir", "sd_b",
                    "sd_t", "sz_b", "sz_t", "so_b", "so_t"]


def row_bases(channel_last: bool, bases) -> str:
    """Source lines setting the row bases ([BLOCK_D], int64) of the kernel's (.., dim, L) tensors;
    ``bases``: (name, direction stride or None, batch stride, time-contiguous base) each.

    Time-contiguous tensors (made contiguous by the launcher) use the program's ``x_row`` /
    ``z_row`` and step by 1 along time; channel-last ones ((.., L, dim) memory seen as (.., dim, L):
    what in_proj, x_proj and the conv produce in a Mamba mixer) start at their own strides, step
    by their time stride, and the channels of a program are consecutive addresses."""
    lines = []
    for name, s_dir, s_b, contiguous in bases:
        if channel_last:
            lines.append(f"    {name} = {'dir64 * ' + s_dir + ' + ' if s_dir else ''}pid_b * {s_b} + offs_d64")
        elif name != contiguous:
            lines.append(f"    {name} = {contiguous}")
    return "\n" + "\n".join(lines) + "\n"


# u, delta, z and out (out and the bidirectional scratch/ypre share o_row).
FORWARD_ROWS = [("u_row", "su_dir", "su_b", "x_row"), ("d_row", "sd_dir", "sd_b", "x_row"),
                ("z_row", None, "sz_b", "z_row"), ("o_row", None, "so_b", "z_row")]


def _time(expr: str, stride: str, channel_last: bool) -> str:
    """The [1, T] time offsets of a tile: ``expr`` steps of stride 1 or ``stride`` (64-bit)."""
    return f"({expr}).to(tl.int64)[None, :] * {stride}" if channel_last else f"({expr})[None, :]"


SEQ_SETUP = PROGRAM_ROWS + """
    # Staged per-token B/C rows of this program's group: (ndir, batch, groups, Lp, N) fp32.
    B_row = B_ptr + (((dir64 * batch + pid_b) * (dim // cpg_B) + (pid_d * BLOCK_D) // cpg_B) * Lp) * N_STATE
    C_row = C_ptr + (((dir64 * batch + pid_b) * (dim // cpg_C) + (pid_d * BLOCK_D) // cpg_C) * Lp) * N_STATE
    cols = tl.arange(0, T)
    # Direction 1 walks the tiles backwards and each tile's steps backwards (step j of a tile is
    # column T - 1 - j); tiles are loaded and stored in memory order (coalesced) either way.
    sgn = 1 - 2 * direction
    rev0 = direction * (T - 1)
    i_start = seg * seg_tiles
    i_end = tl.minimum(i_start + seg_tiles, n_tiles)
    if HAS_D:
        Dv = tl.load(D_ptr + par, mask=dmask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + par, mask=dmask, other=0.0)
"""

SEQ_PER_STATE = """
    A_@n = tl.load(A_ptr + par * N_STATE + @n, mask=dmask, other=0.0) * LOG2E
    h_@n = tl.load(init_ptr + seg_row * N_STATE + @n, mask=dmask & (has_init != 0), other=0.0)
    if B_CONST:
        Bc_@n = tl.load(B_ptr + par * N_STATE + @n, mask=dmask, other=0.0)
    if C_CONST:
        Cc_@n = tl.load(C_ptr + par * N_STATE + @n, mask=dmask, other=0.0)
"""

def _seq_tile_load(cl: bool, d_state: int, bc_ahead: bool, z_ahead: bool) -> str:
    """Tile i (processing order) of the direction is memory tile k; the next tile's u and delta are
    loaded before this tile's steps run (their latency hides behind T steps of work). With
    ``z_ahead`` the gate z is loaded with them (``z_next``), not at the tile's end where the output
    waits for it (an early revision with more registers had measured that slower: 0.421 vs 0.352 ms
    at Vim-S 224; now it is faster at every row, NOTES.md). Prefetching the next tile's B/C rows
    measured slower, and an L1 prefetch hint no faster. With ``bc_ahead`` the first step's B/C are
    loaded before the loop (then each step loads the next one's)."""
    first_bc = ""
    z_first = z_load = ""
    if z_ahead:
        z_first = f"""
    if HAS_Z and not STATE_PASS:
        z_next = tl.load(z_ptr + z_row[:, None] + {_time("t0", "sz_t", cl)}, mask=m0, other=0.0)"""
        z_load = f"""
        if HAS_Z and not STATE_PASS:
            z_tile = z_next
            z_next = tl.load(z_ptr + z_row[:, None] + {_time("tn", "sz_t", cl)}, mask=mn, other=0.0)"""
    if bc_ahead:
        first_bc = textwrap.indent("tile_t = k0 * T + rev0\ntj0 = tile_t\n" + _bc_loads(
            d_state, 0, "(i_start < i_end) & (tj0 >= 0) & (tj0 < Lp)"), "    ")
    return f"""
    k0 = i_start + direction * (n_tiles - 1 - 2 * i_start)
{first_bc}
    t0 = k0 * T + cols
    m0 = dmask[:, None] & ((t0 < L) & (i_start < i_end))[None, :]
    u_next = tl.load(u_ptr + u_row[:, None] + {_time("t0", "su_t", cl)}, mask=m0, other=0.0)
    pre_next = tl.load(delta_ptr + d_row[:, None] + {_time("t0", "sd_t", cl)}, mask=m0, other=0.0){z_first}
    dt_sum = tl.full([BLOCK_D], 0.0, tl.float32)
    for i in range(i_start, i_end):
        k = i + direction * (n_tiles - 1 - 2 * i)
        tile_t = k * T + rev0
        t = k * T + cols
        m2 = dmask[:, None] & (t < L)[None, :]
        u = u_next.to(tl.float32)
        pre = pre_next.to(tl.float32)
        tn = t + sgn * T
        mn = dmask[:, None] & ((tn < L) & (i + 1 < i_end))[None, :]
        u_next = tl.load(u_ptr + u_row[:, None] + {_time("tn", "su_t", cl)}, mask=mn, other=0.0)
        pre_next = tl.load(delta_ptr + d_row[:, None] + {_time("tn", "sd_t", cl)}, mask=mn, other=0.0){z_load}
        if store_ckpt != 0:
            if i % ck_tiles == 0:
                ic = i // ck_tiles
                ck = (row * n_ck + ic + direction * (n_ck - 1 - 2 * ic)) * N_STATE
"""


SEQ_CKPT_STORE = "tl.store(ckpt_ptr + ck + @n, h_@n, mask=dmask)\n"

SEQ_DT = textwrap.indent(DT_FROM_PRE, " " * 8) + """
        if STATE_PASS:
            dt_sum += _sum(dt, axis=1)
"""

def _seq_output(bidir: bool, cl: bool, z_ahead: bool) -> str:
    """Gate and store a tile's output. The fused bidirectional combine: each direction writes its
    fp32 y tile to a scratch buffer (laid out like ``out``) and increments an int32 flag per
    (batch, channel block, tile); the program that finds the flag at 1 came second and writes
    (y_f + y_r) * scale * silu(z). fp32 addition is commutative, so the result does not depend on
    which direction finished first."""
    offsets = (f"        zoffs = z_row[:, None] + {_time('t', 'sz_t', cl)}\n"
               f"        ooffs = o_row[:, None] + {_time('t', 'so_t', cl)}\n")
    if not bidir:
        z_value = "z_tile.to(tl.float32)" if z_ahead else "tl.load(z_ptr + zoffs, mask=m2, other=0.0).to(tl.float32)"
        return offsets + f"""
        if HAS_Z:
            zv = {z_value}
            y = y * (zv * _sigmoid(zv))
        tl.store(out_ptr + ooffs, y.to(out_ptr.dtype.element_ty), mask=m2)
"""
    return offsets + """
        plane = (pid_b * 0 + batch) * dim * L  # int64: the scratch buffer may pass 2^31 elements
        tl.store(ybuf_ptr + dir64 * plane + ooffs, y, mask=m2)
        tl.debug_barrier()
        old = tl.atomic_add(flag_ptr + (pid_b * tl.num_programs(0) + pid_d) * n_tiles + k, 1)
        if old == 1:
            other = tl.load(ybuf_ptr + (1 - dir64) * plane + ooffs, mask=m2, other=0.0, cache_modifier=".cg")
            ysum = (y + other) * scale
            if store_ypre != 0:
                tl.store(ypre_ptr + ooffs, ysum.to(ypre_ptr.dtype.element_ty), mask=m2)
            if HAS_Z:
                zv = tl.load(z_ptr + zoffs, mask=m2, other=0.0).to(tl.float32)
                ysum = ysum * (zv * _sigmoid(zv))
            tl.store(out_ptr + ooffs, ysum.to(out_ptr.dtype.element_ty), mask=m2)
"""


SEQ_FINAL = """
    if STATE_PASS:
        tl.store(seg_ptr + seg_row * N_STATE + @n, h_@n, mask=dmask)
    elif seg == n_segs - 1:
        tl.store(hT_ptr + row * N_STATE + @n, h_@n, mask=dmask)
"""


def _processing_order(prefix: str, tile: int, bidir: bool) -> str:
    """Columns ``{prefix}m_c`` (memory order) as steps ``{prefix}_j`` (processing order); in the
    bidirectional kernel direction 1 takes them mirrored (a register select per column)."""
    if not bidir:
        return "".join(f"{prefix}_{j} = {prefix}m_{j}\n" for j in range(tile))
    return "".join(f"{prefix}_{j} = tl.where(direction == 0, {prefix}m_{j}, {prefix}m_{tile - 1 - j})\n"
                   for j in range(tile))


def _seq_fwd_source(name: str, d_state: int, tile: int, bidir: bool, channel_last: bool, bc_ahead: bool,
                    z_ahead: bool) -> str:
    src = HEADER + (f"\nN_STATE = tl.constexpr({d_state})\nT = tl.constexpr({tile})\n"
                    f"SEQ_RUNTIME_ARGS = {SEQ_RUNTIME_ARGS!r}\n")
    src += SEQ_SIGNATURE.format(name=name) + SEQ_SETUP
    src += row_bases(channel_last, FORWARD_ROWS)
    src += per_state(SEQ_PER_STATE, d_state, 4) + "\n"
    src += _seq_tile_load(channel_last, d_state, bc_ahead, z_ahead) + per_state(SEQ_CKPT_STORE, d_state, 16)
    src += "\n" + SEQ_DT
    split = column_split("dt", [f"dtm_{j}" for j in range(tile)], "_dt") + _processing_order("dt", tile, bidir)
    split += column_split("dtu", [f"dtum_{j}" for j in range(tile)], "_du") + _processing_order("dtu", tile, bidir)
    src += textwrap.indent(split, " " * 8)
    src += "".join(textwrap.indent(_seq_step(d_state, j, bc_ahead), " " * 8) for j in range(tile))
    if bc_ahead:  # the next tile's first B/C, loaded by the last step, carried into the next iteration
        carry = "".join(f"B0_{n} = B{tile}_{n}\n" for n in range(d_state))
        carry += "if not STATE_PASS:\n" + "".join(f"    C0_{n} = C{tile}_{n}\n" for n in range(d_state))
        src += textwrap.indent(carry, " " * 8)
    src += "        if not STATE_PASS:\n"
    src += textwrap.indent(_processing_order("y", tile, bidir).replace("y_", "yo_").replace("ym_", "y_"), " " * 12)
    src += f"            y = {column_join([f'yo_{j}' for j in range(tile)])}\n"
    src += "            if HAS_D:\n                y += Dv[:, None] * u\n"
    src += textwrap.indent(_seq_output(bidir, channel_last, z_ahead), "    ")
    src += per_state(SEQ_FINAL, d_state, 4) + "\n"
    src += "    if STATE_PASS:\n        tl.store(segdt_ptr + seg_row, dt_sum, mask=dmask)\n"
    return src


@functools.lru_cache(maxsize=None)
def seq_forward_kernel(d_state: int, tile: int, bidir: bool, channel_last: bool = False, bc_ahead: bool = False,
                       z_ahead: bool = False):
    """The sequential forward kernel: ``d_state`` states per thread, tiles of ``tile`` steps, with
    ``bidir`` grid axis 2 = direction x segment, with ``channel_last`` u/delta/z/out in
    channel-last memory (``row_bases``), with ``bc_ahead`` each step's B/C loaded one step
    ahead (see :func:`_seq_step`), with ``z_ahead`` (single direction only) the gate loaded a tile
    ahead (:func:`_seq_tile_load`)."""
    if z_ahead and bidir:
        raise ValueError("z_ahead: the bidirectional kernel gates in the direction that finishes second")
    name = (f"ss_fwd_seq_n{d_state}_t{tile}_{'bi' if bidir else 'uni'}{'_cl' if channel_last else ''}"
            f"{'_ahead' if bc_ahead else ''}{'_zahead' if z_ahead else ''}")
    return load_generated(name, _seq_fwd_source(name, d_state, tile, bidir, channel_last, bc_ahead, z_ahead))


@triton.jit
def stage_bc_kernel(src_ptr, dst_ptr, L, Lp, n_rows_b, n_groups, s_dir, s_b, s_g, s_n, s_t,
                    N: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr):
    """Per-token B or C (ndir, batch, groups, N, L), any strides and float dtype, to the forward's
    fp32 (ndir, batch, groups, Lp, N) buffer: one step's N values contiguous, zeros for L <= t < Lp."""
    r = tl.program_id(1).to(tl.int64)
    g = r % n_groups
    b = (r // n_groups) % n_rows_b
    d = r // (n_groups * n_rows_b)
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    n = tl.arange(0, NP)
    src = src_ptr + d * s_dir + b * s_b + g * s_g + n[None, :] * s_n + t[:, None] * s_t
    v = tl.load(src, mask=(t < L)[:, None] & (n < N)[None, :], other=0.0).to(tl.float32)
    tl.store(dst_ptr + (r * Lp + t[:, None]) * N + n[None, :], v, mask=(t < Lp)[:, None] & (n < N)[None, :])


LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def segment_combine_kernel(seg_ptr, segdt_ptr, A_ptr, init_ptr, batch, dim, n_segs,
                           N: tl.constexpr, NP: tl.constexpr, BLOCK: tl.constexpr, HAS_INIT: tl.constexpr,
                           REVERSE: tl.constexpr):
    """Chain segment-local results: on entry ``seg[.., s, :]`` is what segment s produces from a
    zero carry (forward: its end state; backward: the adjoint it passes on), on exit the carry
    entering segment s. The carry through a segment decays by exp(A * sum of its dt)."""
    direction = tl.program_id(2).to(tl.int64)
    offs_d = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_n = tl.arange(0, NP)
    dmask = offs_d < dim
    m2 = dmask[:, None] & (offs_n < N)[None, :]
    row = (direction * batch + tl.program_id(1)) * dim + offs_d.to(tl.int64)
    A2 = tl.load(A_ptr + (direction * dim + offs_d)[:, None] * N + offs_n[None, :], mask=m2, other=0.0) * LOG2E
    if HAS_INIT:
        carry = tl.load(init_ptr + row[:, None] * N + offs_n[None, :], mask=m2, other=0.0)
    else:
        carry = tl.full([BLOCK, NP], 0.0, tl.float32)
    for i in range(0, n_segs):
        if REVERSE:
            s = n_segs - 1 - i
        else:
            s = i
        ptrs = seg_ptr + (row * n_segs + s)[:, None] * N + offs_n[None, :]
        local = tl.load(ptrs, mask=m2, other=0.0)
        dsum = tl.load(segdt_ptr + row * n_segs + s, mask=dmask, other=0.0)
        tl.store(ptrs, carry, mask=m2)
        carry = tl.exp2(A2 * dsum[:, None]) * carry + local

