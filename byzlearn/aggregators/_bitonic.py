"""Register-blocked bitonic merging: the merge step of the grouped selection kernel.

The grouped kernel (:mod:`._sortnet`) sorts groups of rows into slots of ``run`` buffer rows
("wires") and must then merge the sorted slots. Bitonic merging does it level by level: the level
that merges sorted runs of p wires into runs of 2p runs log2(2p) stages; in each block of 2p wires
the first stage compares wire i with wire 2p - 1 - i (the "flip", which turns two ascending runs
into two bitonic halves), every later stage compares wires s apart inside blocks of 2s wires
(s = p/2, p/4, ..., 1), the smaller value going to the lower wire (Batcher 1968; the flip form as
in e.g. Knuth, TAOCP vol. 3, 5.3.4).

Consecutive stages of one level close over small sets of wires: stages with strides 8s, 4s, 2s,
s act within the 16 wires ``base + s k`` (k = 0..15), and the flip of a block of 2p wires with
the next three strides within 8 wires of one residue mod p/8 in the lower half and 8 of the
mirrored residue in the upper half. A *pass* loads such a set of at most 16 wires once (one
vector of the host's widest registers per wire and column group), applies up to four stages in
registers and stores it back once: a level of log2(2p) stages costs ceil(log2(2p) / 4) loads and
stores per wire instead of one per comparator, as a loop over the merge network's pairs does.

Each pass is written directly in LLVM IR (:func:`cx_pass`): numba's loop vectoriser would need a
run-time overlap check between every pair of the 16 rows loaded and stored, which cost more than
the pass itself (the same pass in numba took 1.7 times as long at 1024 rows, and far longer on
chunks of 16 coordinates). The rows of a pass are distinct by construction, so the explicit
vectors are exact; their addresses are computed once per pass, before the loop over columns.

Comparators are ``lo = b if b < a else a``, ``hi = a if a > b else b``: the exact patterns of
vminps/vmaxps, two instructions, where ``a <= b`` with two selects took a compare and two blends
(the same values: both keep ``a`` low and ``b`` high when a == b). The kernel maps non-finite
values to +inf first, so no NaN reaches them. On an AVX-512 Xeon both forms took the same time
(the passes are bound by the buffer's L2 traffic, about 14 loads and stores of each row at 1024
rows); on a 16-register AVX2 core (AMD EPYC, Zen 3), the merge of one block of 100 rows (4 x 25
sorted rows, 256 columns, from L2), A/B in one process: 23.7 us with 512-bit vectors and
compare-and-blend, 16.8 with min/max, 19.4 with 256-bit vectors, 12.5 with both (8-wire passes
of three stages, which fit the 16 registers without spilling: 21.2). Any sorting network leaves
the same sorted values, so the statistics equal those of the odd-even merge loop this replaced,
except that zeros of opposite sign (equal under ``<=``) may come out in another order: a result
may be -0.0 where it was 0.0 (equal under ``==``; measured on inputs with many signed zeros).
"""

from __future__ import annotations

import numpy as np

from byzlearn.aggregators._simd import vector_bytes

# Bytes of one explicit vector: the host's widest register (64 with AVX-512, else 32). A pass
# holds 16 wires; on a 16-register AVX2 core 512-bit vectors (two registers each) spill: the
# merge of 100 rows took 1.2-1.3 times as long as with 256-bit ones (see the module docstring).
VECTOR_BYTES = vector_bytes()
# Most wires one pass holds in registers: 16 wires, four stages (32 wires, five stages, spill
# out of the 32 vector registers of AVX-512 and were slower at 256 and 1024 wires).
MAX_STAGES = 4
PASS_WIRES = 1 << MAX_STAGES


def pass_pairs(stages: int, flip: bool) -> list[tuple[int, int]]:
    """The compare-exchanges, on local wires 0 .. 2**stages - 1, of a pass of ``stages`` stages:
    with ``flip`` first (k, 2**stages - 1 - k), then the strides halving down to 1; without,
    the strides 2**(stages - 1) down to 1. The lower local wire receives the smaller value."""
    size = 1 << stages
    pairs = []
    strides = [size >> i for i in range(1, stages + 1)]
    if flip:
        pairs += [(k, size - 1 - k) for k in range(size // 2)]
        strides = strides[1:]
    for s in strides:
        pairs += [(k, k + s) for k in range(size) if (k // s) % 2 == 0]
    return pairs


def kind_of(stages: int, flip: bool) -> int:
    """The pass kind the kernel dispatches on: 2 (stages - 1) + flip."""
    return 2 * (stages - 1) + int(flip)


def comparators(kinds: np.ndarray, table: np.ndarray) -> list[tuple[int, int]]:
    """The compare-exchanges of the passes (``kinds``, ``table``: :func:`pruned_passes`) as
    (lower wire, upper wire), in the order the passes run them."""
    pairs = []
    for kind, row in zip(kinds.tolist(), table.tolist(), strict=True):
        stages, flip = kind // 2 + 1, bool(kind % 2)  # the inverse of kind_of
        pairs += [(row[a], row[b]) for a, b in pass_pairs(stages, flip)]
    return pairs


def merge_passes(
    wires: int, run: int, needed: tuple[int, ...] | None = None
) -> list[tuple[int, bool, list[int]]]:
    """Passes (stages, flip, wires in local order) that merge sorted runs of ``run`` wires into
    one sorted sequence of ``wires`` (both powers of two).

    With ``needed`` (positions), the last level only sorts on into the blocks that hold one of
    those positions: after a group of its stages, every block of the next size already holds
    the right values as a set (those of its ranks), so a block holding no needed position
    keeps them, unsorted. The needed positions then hold their exact ranks, and every run of
    positions between two needed ones the right set of values.

    In depth-first order: a block of 2p wires is merged as soon as its two halves are, and each
    group of stages of a level runs on one sub-block right after the group before it finished
    there. A pass thus mostly reads rows that the passes just before it wrote (in the L1 cache
    while the block fits there), rather than streaming every row of the buffer once per group of
    stages.
    """
    out: list[tuple[int, bool, list[int]]] = []

    def stage_group(p: int, done: int, lo: int, span: int, last: bool = False) -> None:
        # the stages done .. done + stages - 1 of the level merging runs of p, on [lo, lo + span)
        total = (2 * p).bit_length() - 1  # log2(2p): the flip, then strides p/2 .. 1
        stages = min(MAX_STAGES, total - done)
        half = 1 << (stages - 1)
        if done == 0:  # the flip of the 2p block and the strides p/2 .. s
            s = p >> (stages - 1)
            for r in range(s):
                low = [lo + r + k * s for k in range(half)]
                high = [lo + (s - 1 - r) + k * s for k in range(half, 2 * half)]
                out.append((stages, True, low + high))
        else:  # the strides span/2 .. s inside the block
            s = (span // 2) >> (stages - 1)
            for r in range(s):
                out.append((stages, False, [lo + r + k * s for k in range(2 * half)]))
        if done + stages < total:
            sub = 2 * (p >> (done + stages))
            for b in range(lo, lo + span, sub):
                if last and needed is not None and not any(b <= e < b + sub for e in needed):
                    continue  # holds its ranks as a set already; no needed position inside
                stage_group(p, done + stages, b, sub, last)

    def sort(lo: int, size: int) -> None:
        if size <= run:
            return
        sort(lo, size // 2)
        sort(lo + size // 2, size // 2)
        stage_group(size // 2, 0, lo, size, last=size == wires)

    sort(0, wires)
    return out


def pruned_passes(
    wires: int, run: int, surely_inf: np.ndarray, needed: tuple[int, ...] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The passes of :func:`merge_passes` that can move a value, as (kinds, wires of each pass
    padded to ``PASS_WIRES``, whether each wire is read).

    ``surely_inf`` flags the wires that hold +inf before the merge (padding). A comparator whose
    upper wire surely holds +inf changes nothing; one whose lower wire does (and the upper may
    not) swaps them, which the tracking follows. A pass is kept when one of its comparators can
    change something; every wire of a kept pass is read.
    """
    inf = surely_inf.copy()
    kinds, table = [], []
    read = np.zeros(wires, dtype=bool)
    for stages, flip, wires_of_pass in merge_passes(wires, run, needed):
        local = inf[wires_of_pass]
        useful = False
        for a, b in pass_pairs(stages, flip):
            if local[b]:
                continue
            useful = True
            if local[a]:
                local[a], local[b] = False, True
        if not useful:
            continue
        inf[wires_of_pass] = local
        read[wires_of_pass] = True
        kinds.append(kind_of(stages, flip))
        table.append(wires_of_pass + [wires_of_pass[0]] * (PASS_WIRES - len(wires_of_pass)))
    kinds_a = np.asarray(kinds, dtype=np.int64)
    table_a = np.asarray(table, dtype=np.int64).reshape(-1, PASS_WIRES)
    return kinds_a, table_a, read


try:  # the passes need numba's llvmlite; without it the grouped kernel cannot run either
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    from byzlearn.aggregators._simd import wide

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    _HAVE_NUMBA = False


if _HAVE_NUMBA:

    def cx_pass(stages: int, flip: bool):
        """An intrinsic ``f(buf, table, q, col0, col1)``: the pass ``table[q]`` on the columns
        ``col0 .. col1 - 1`` of the rows of ``buf`` (C-contiguous, 2-D; col1 - col0 a multiple
        of ``VECTOR_BYTES / itemsize``): per vector of columns, one load per wire, the
        compare-exchanges of :func:`pass_pairs`, one store per wire. The rows' addresses are
        computed once, before the loop over the columns."""
        pairs = pass_pairs(stages, flip)
        count = 1 << stages

        @intrinsic
        def run_pass(typingctx, buf, table, q, col0, col1):  # pragma: no cover (compiled)
            sig = types.void(buf, table, q, col0, col1)

            def codegen(context, builder, signature, args):
                buf_t, table_t, q_t, c0_t, c1_t = signature.args
                rows = context.make_array(buf_t)(context, builder, args[0])
                tab = context.make_array(table_t)(context, builder, args[1])
                q_v = context.cast(builder, args[2], q_t, types.intp)
                c0 = context.cast(builder, args[3], c0_t, types.intp)
                c1 = context.cast(builder, args[4], c1_t, types.intp)
                element = context.get_data_type(buf_t.dtype)
                size = context.get_abi_sizeof(element)
                lanes = VECTOR_BYTES // size
                vector = ir.VectorType(element, lanes)
                intp = context.get_value_type(types.intp)
                row_len = builder.extract_value(rows.shape, 1)
                first = builder.mul(q_v, builder.extract_value(tab.shape, 1))
                starts = []
                for k in range(count):
                    wire = builder.load(builder.gep(tab.data, [builder.add(first, intp(k))]))
                    starts.append(builder.gep(rows.data, [builder.mul(wire, row_len)]))
                # A one-stage pass stores to each wire the select of its own loaded value and
                # the other's; LLVM turns that into a masked store of the other value
                # (``vmaskmovps``, microcoded on AMD cores). Stored through a copy of the row
                # address that LLVM cannot see through (an empty asm statement on a general
                # register, valid on every target), it stays a plain store. The passes alone on
                # a Zen 3 core, one process: 64 rows 9.1-11.1 -> 5.6-8.1 us per block, 500 rows
                # 193-249 -> 138-199, 1000 rows 566-749 -> 454-649 (200 rows, without such
                # passes, equal).
                targets = starts
                if stages == 1:
                    opaque = ir.FunctionType(starts[0].type, [starts[0].type])
                    targets = [builder.asm(opaque, "", "=r,0", [s], False) for s in starts]
                with cgutils.for_range_slice(builder, c0, c1, intp(lanes)) as (col, _):
                    pointers, values = [], []
                    for start, target in zip(starts, targets, strict=True):
                        pointer = builder.bitcast(builder.gep(start, [col]), vector.as_pointer())
                        values.append(builder.load(pointer, align=size))
                        target = builder.bitcast(builder.gep(target, [col]), vector.as_pointer())
                        pointers.append(target)
                    for a, b in pairs:
                        # vminps / vmaxps: b < a ? b : a and a > b ? a : b
                        lt = builder.fcmp_ordered("<", values[b], values[a])
                        low = builder.select(lt, values[b], values[a])
                        gt = builder.fcmp_ordered(">", values[a], values[b])
                        high = builder.select(gt, values[a], values[b])
                        values[a], values[b] = low, high
                    for pointer, value in zip(pointers, values, strict=True):
                        builder.store(value, pointer, align=size)
                return context.get_dummy_value()

            return sig, codegen

        return run_pass

    _p1, _p1f, _p2, _p2f, _p3, _p3f, _p4, _p4f = (
        cx_pass(stages, flip) for stages in range(1, MAX_STAGES + 1) for flip in (False, True)
    )

    @njit(cache=True, error_model="numpy", boundscheck=False, nogil=True)
    def run_passes(buf, kinds, table, w, chunk):  # pragma: no cover (compiled)
        """Run the passes (``kinds``, ``table``) on columns 0 .. w - 1 of ``buf`` (rounded up to
        whole vectors: ``buf`` must have that many columns), ``chunk`` columns at a time."""
        wide()  # full-width registers for the loops numba vectorises itself
        step = VECTOR_BYTES // buf.itemsize
        for c0 in range(0, w, chunk):
            c1 = c0 + ((min(w, c0 + chunk) - c0 + step - 1) // step) * step
            for q in range(kinds.shape[0]):
                kind = kinds[q]
                if kind == 7:
                    _p4f(buf, table, q, c0, c1)
                elif kind == 6:
                    _p4(buf, table, q, c0, c1)
                elif kind == 5:
                    _p3f(buf, table, q, c0, c1)
                elif kind == 4:
                    _p3(buf, table, q, c0, c1)
                elif kind == 3:
                    _p2f(buf, table, q, c0, c1)
                elif kind == 2:
                    _p2(buf, table, q, c0, c1)
                elif kind == 1:
                    _p1f(buf, table, q, c0, c1)
                else:
                    _p1(buf, table, q, c0, c1)
