"""Perceptual dedup: 64-bit pHash within Hamming distance ``t``, found without an all-pairs scan.

Search (multi-index hashing with the generalised pigeonhole rule): split the 64 bits into
``m`` contiguous blocks and give block ``i`` a radius ``r_i`` with ``Σ (r_i + 1) = t + 1``.
Two hashes within distance ``t`` differ in at most ``t`` bits, so at least one block ``i``
differs in at most ``r_i`` bits. With every ``r_i = 0`` (``m = t + 1``) this is the plain rule
"agree exactly on one block". Each block's values are sorted once; for each flip pattern of
weight ``≤ r_i`` the candidate partners of a hash are one contiguous run of that sorted order,
and candidates are verified with a popcount in bounded chunks. A pair found in several blocks
is kept only from the first one. ``m`` and the radii are chosen per call by a cost model
(probe work ``∝ n·Σ patterns``, verification ``∝`` candidate pairs counted exactly from the
block histograms where cheap): at ``t = 10`` the plain ``t + 1`` split has 5–6-bit blocks,
so every bucket holds ``n/64`` hashes and the search is nearly all-pairs; four 16-bit blocks
with radii ``(2, 2, 2, 1)`` check about 150× fewer candidates.

Identical hashes are collapsed first, so blank images (all-zero hashes) or any exact repeats
cost one entry, not a quadratic bucket.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

import numpy as np
import pandas as pd

from nemo_frames.dedup._table import (
    collect,
    empty_dup_table,
    finish_dup_table,
    group_min_key,
    group_survivors,
    key_rank,
    rank_order,
)
from nemo_frames.schema import KEY, PHASH

_CHUNK = 1 << 22  # candidate pairs verified per step (bounded memory: ~100 MB of temporaries)
# Cost model constants (seconds), measured on this machine's numpy: per (hash, pattern) probe,
# per verified candidate, per pattern pass, per brute-force pair.
_ALPHA, _BETA, _GAMMA, _BRUTE = 3e-8, 1.2e-8, 5e-5, 1e-8


# --------------------------------------------------------------------------- pHash
def phash_image(rgb: np.ndarray) -> int:
    """The 64-bit perceptual hash of an image, bit-compatible with imagededup's ``PHash``.

    Gray of a 32×32 Lanczos resize (Pillow: resize the RGB image, then convert to ``L``), 2-D
    DCT-II, the top-left 8×8 coefficients, bit = coefficient ≥ median of the 63 AC
    coefficients, packed row-major with the first coefficient as the most significant bit.

    Parameters
    ----------
    rgb : ndarray
        ``(H, W, 3)`` RGB or ``(H, W)`` gray, uint8.

    Returns
    -------
    int
        The hash as a Python int in ``[0, 2**64)`` (store it as ``uint64``).

    Examples
    --------
    >>> import numpy as np
    >>> from skimage import data
    >>> h = phash_image(data.astronaut())
    >>> f"{h:016x}" == f"{phash_image(data.astronaut()[:, ::-1][:, ::-1]):016x}"
    True
    """
    from PIL import Image
    from scipy.fft import dct

    arr = np.asarray(rgb)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"phash_image: expected an (H, W, 3) RGB or (H, W) gray array, found shape {arr.shape}")
    img = Image.fromarray(arr.astype(np.uint8, copy=False))
    small = np.asarray(img.resize((32, 32), Image.Resampling.LANCZOS).convert("L"), dtype=np.float64)
    coef = dct(dct(small, axis=0), axis=1)[:8, :8].ravel()
    bits = coef >= np.median(coef[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


# --------------------------------------------------------------------------- search plan
@dataclass(frozen=True)
class Block:
    """Bits ``[shift, shift + width)`` of the hash, searched within ``radius`` flips."""

    shift: int
    width: int
    radius: int

    @property
    def mask(self) -> int:
        return (1 << self.width) - 1

    def patterns(self) -> np.ndarray:
        out = [0]
        for k in range(1, self.radius + 1):
            out.extend(sum(1 << b for b in c) for c in combinations(range(self.width), k))
        return np.asarray(out, dtype=np.int64)


def _layout(m: int, t: int) -> list[Block]:
    widths = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
    extra = t + 1 - m  # Σ r_i
    radii = [extra // m + (1 if i < extra % m else 0) for i in range(m)]
    blocks, shift = [], 64
    for w, r in zip(widths, radii, strict=True):
        shift -= w
        blocks.append(Block(shift=shift, width=w, radius=r))
    return blocks


def _n_patterns(b: Block) -> int:
    return sum(math.comb(b.width, k) for k in range(b.radius + 1))


def _block_values(u: np.ndarray, b: Block) -> np.ndarray:
    return ((u >> np.uint64(b.shift)) & np.uint64(b.mask)).astype(np.int64)


def _candidates(u: np.ndarray, b: Block) -> float:
    """Candidate pairs block ``b`` generates: exact from the histogram when cheap, else uniform."""
    n, p = len(u), _n_patterns(b)
    if (1 << b.width) * p > 3e7:
        return n * n / 2 * p / (1 << b.width)
    cnt = np.bincount(_block_values(u, b), minlength=1 << b.width).astype(np.float64)
    idx = np.arange(1 << b.width)
    total = float((cnt * (cnt - 1) / 2).sum())
    for f in b.patterns()[1:]:
        partner = idx ^ f
        sel = partner > idx
        total += float((cnt[sel] * cnt[partner[sel]]).sum())
    return total


def plan_search(u: np.ndarray, threshold: int, *, allow_brute: bool = True) -> tuple[list[Block] | None, float]:
    """The block layout with the lowest estimated cost (``None`` = brute force) and that cost."""
    n = len(u)
    best: tuple[list[Block] | None, float] = (None, _BRUTE * n * n / 2 if allow_brute else math.inf)
    for m in range(2, min(threshold + 1, 16) + 1):
        blocks = _layout(m, threshold)
        probes = sum(_n_patterns(b) for b in blocks)
        if probes > 50_000 or any(b.width > 32 for b in blocks):
            continue
        cost = _ALPHA * n * probes + _GAMMA * probes
        if cost >= best[1]:
            continue
        cost += _BETA * sum(_candidates(u, b) for b in blocks)
        if cost < best[1]:
            best = (blocks, cost)
    return best


# --------------------------------------------------------------------------- search
def _expand(q: np.ndarray, start: np.ndarray, count: np.ndarray, chunk: int) -> Any:
    """Yield ``(query, partner)`` position arrays: partners ``start .. start+count-1`` of each query."""
    big = count > chunk
    if big.any():  # split giant runs so that one step never exceeds ``chunk`` pairs
        pieces = np.where(big, -(-count // chunk), 1)
        rep = np.repeat(np.arange(len(q)), pieces)
        k = np.arange(len(rep)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        q, start = q[rep], start[rep] + k * chunk
        count = np.minimum(count[rep] - k * chunk, chunk)
    csum = np.cumsum(count)
    lo = 0
    while lo < len(q):
        base = csum[lo - 1] if lo else 0
        hi = max(int(np.searchsorted(csum, base + chunk, side="right")), lo + 1)
        c = count[lo:hi]
        total = int(c.sum())
        if total:
            a = np.repeat(q[lo:hi], c)
            off = np.arange(total) - np.repeat(np.cumsum(c) - c, c)
            yield a, np.repeat(start[lo:hi], c) + off
        lo = hi


def _verified(a: np.ndarray, c: np.ndarray, x: np.ndarray, blocks: list[Block], i: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop pairs that an earlier block (index < i) also finds, so each pair is reported once."""
    for j in range(i):
        bj = blocks[j]
        again = np.bitwise_count((x >> np.uint64(bj.shift)) & np.uint64(bj.mask)) <= bj.radius
        a, c, x = a[~again], c[~again], x[~again]
    return a, c


@dataclass
class _Prepared:
    """One block's sorted index, shared read-only by the threads that search its patterns."""

    order: np.ndarray
    sv: np.ndarray
    su: np.ndarray
    cnt: np.ndarray | None
    off: np.ndarray | None
    table: np.ndarray | None
    width: int


def _prepare_block(u: np.ndarray, b: Block) -> _Prepared:
    vals = _block_values(u, b)
    order = np.argsort(vals, kind="stable")
    sv, su = vals[order], u[order]
    n = len(u)
    cnt = off = table = None
    width = 0
    if b.width <= 24:
        cnt = np.bincount(sv, minlength=1 << b.width)
        off = np.concatenate(([0], np.cumsum(cnt)))
    if b.width <= 24 and n >= 4 << b.width:  # runs long enough for the padded table
        # A padded (value, slot) table of the first R hashes of every run: the partners of a
        # query are then one row, verified with a broadcast XOR instead of a ragged expansion.
        assert cnt is not None and off is not None
        nonempty = cnt[cnt > 0]
        width = int(np.clip(np.quantile(nonempty, 0.99) if len(nonempty) else 1, 1, 64))
        width = max(1, min(width, (1 << 25) // (1 << b.width)))
        slot = np.arange(n) - off[sv]
        table = np.zeros((1 << b.width, width), dtype=np.uint64)
        fits = slot < width
        table[sv[fits], slot[fits]] = su[fits]
    return _Prepared(order, sv, su, cnt, off, table, width)


def _search_block(
    u: np.ndarray, blocks: list[Block], i: int, patterns: np.ndarray, t: int, prep: _Prepared | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs within distance ``t`` whose block ``i`` values differ by one of ``patterns``."""
    b = blocks[i]
    pr = prep if prep is not None else _prepare_block(u, b)
    order, sv, su, cnt, off, table, width = pr.order, pr.sv, pr.su, pr.cnt, pr.off, pr.table, pr.width
    n = len(u)
    dense = table is not None
    pos = np.arange(n)
    out_a, out_b = [], []

    def emit(a: np.ndarray, c: np.ndarray) -> None:
        x = su[a] ^ su[c]
        ok = np.bitwise_count(x) <= t
        if ok.any():
            a, c = _verified(a[ok], c[ok], x[ok], blocks, i)
            out_a.append(order[a])
            out_b.append(order[c])

    for f in patterns:
        if f == 0:  # pairs inside runs of equal block value
            run_end = np.searchsorted(sv, sv, side="right")
            for a, c in _expand(pos, pos + 1, run_end - pos - 1, _CHUNK):
                emit(a, c)
            continue
        target = sv ^ f
        keep = target > sv  # each unordered pair once
        q, target = pos[keep], target[keep]
        if not dense:
            if cnt is not None and off is not None:
                start, count = off[target], cnt[target]
            else:
                start = np.searchsorted(sv, target, side="left")
                count = np.searchsorted(sv, target, side="right") - start
            for a, c in _expand(q, start, count, _CHUNK):
                emit(a, c)
            continue
        assert cnt is not None and off is not None and table is not None
        count = cnt[target]
        nz = count > 0
        q, target, count = q[nz], target[nz], count[nz]
        step = max(1, _CHUNK // width)
        for lo in range(0, len(q), step):
            qq, tt = q[lo : lo + step], target[lo : lo + step]
            x = table[tt]  # a fresh gather: XOR and count in place (fewer temporaries, GIL released)
            np.bitwise_xor(x, su[qq][:, None], out=x)
            r, k = np.nonzero(np.bitwise_count(x) <= t)
            real = k < count[lo : lo + step][r]  # padding slots hold 0, not a hash
            r, k = r[real], k[real]
            if len(r):
                a, c = qq[r], off[tt[r]] + k
                x = su[a] ^ su[c]
                a, c = _verified(a, c, x, blocks, i)
                out_a.append(order[a])
                out_b.append(order[c])
        over = count > width  # long runs: the members past the table, the ragged way
        if over.any():
            for a, c in _expand(q[over], off[target[over]] + width, count[over] - width, _CHUNK):
                emit(a, c)
    if not out_a:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(out_a), np.concatenate(out_b)


def _brute(u: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    out_a, out_b = [], []
    step = max(1, _CHUNK // max(len(u), 1))
    for lo in range(0, len(u), step):
        blk = u[lo : lo + step]
        r, c = np.nonzero(np.bitwise_count(blk[:, None] ^ u[None, :]) <= t)
        r = r + lo
        keep = c > r
        out_a.append(r[keep])
        out_b.append(c[keep])
    if not out_a:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(out_a), np.concatenate(out_b)


def hamming_pairs(
    hashes: np.ndarray,
    *,
    threshold: int = 10,
    method: Literal["auto", "index", "brute"] = "auto",
    n_threads: int | None = None,
    distinct: bool = False,
) -> pd.DataFrame:
    """All pairs of 64-bit hashes within Hamming distance ``threshold``.

    Parameters
    ----------
    hashes : ndarray of uint64
    threshold : int
        Inclusive maximum Hamming distance, 0..64.
    method : {"auto", "index", "brute"}
        ``auto`` picks the multi-index layout (or brute force for tiny inputs) by cost;
        ``brute`` is the all-pairs reference.
    n_threads : int, optional
        Threads for the block searches (default: CPU count, at most 8).
    distinct : bool
        Input hashes are already unique (skips collapsing repeats). Otherwise pairs of equal
        hashes are listed too, which is quadratic in the size of each repeat group.

    Returns
    -------
    DataFrame
        ``i``, ``j`` (positions, ``i < j``) and ``distance``, sorted by ``(i, j)``.
        ``attrs["candidates"]`` holds the estimated candidate count, ``attrs["layout"]`` the plan.

    Examples
    --------
    >>> import numpy as np
    >>> h = np.array([0, 0b111, 2**63, 0b1], dtype=np.uint64)
    >>> hamming_pairs(h, threshold=2).values.tolist()
    [[0, 2, 1], [0, 3, 1], [1, 3, 2], [2, 3, 2]]
    """
    if not 0 <= int(threshold) <= 64:
        raise ValueError(f"threshold must be an int in 0..64, found {threshold}")
    t = int(threshold)
    h = np.ascontiguousarray(np.asarray(hashes).astype(np.uint64, copy=False))
    if distinct:
        u, inv = h, None
    else:
        u, inv = np.unique(h, return_inverse=True)
    if method not in ("auto", "index", "brute"):
        raise ValueError(f"method must be 'auto', 'index' or 'brute', found {method!r}")
    blocks, cost = (None, 0.0) if method == "brute" or t == 0 else plan_search(u, t, allow_brute=method == "auto")
    if t == 0:
        a = b = np.empty(0, np.int64)
    elif blocks is None:
        a, b = _brute(u, t)
    else:
        threads = n_threads or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(threads) as ex:
            # each block's index is built once (in parallel) and shared; its patterns are then
            # searched in small units so every thread stays busy to the end (numpy releases the GIL)
            preps = list(ex.map(lambda blk: _prepare_block(u, blk), blocks))
            units = [(i, p) for i, blk in enumerate(blocks)
                     for p in np.array_split(blk.patterns(), max(1, min(_n_patterns(blk) // 8, 4 * threads)))]
            units.sort(key=lambda ip: -len(ip[1]))
            parts = list(ex.map(lambda ip: _search_block(u, blocks, ip[0], ip[1], t, preps[ip[0]]), units))
        a = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
        b = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    if inv is not None:
        lo, hi = _expand_repeats(inv, lo, hi)
    d = np.bitwise_count(h[lo] ^ h[hi]).astype(np.int64) if len(lo) else np.empty(0, np.int64)
    out = pd.DataFrame({"i": lo, "j": hi, "distance": d}).sort_values(["i", "j"], kind="stable").reset_index(drop=True)
    out.attrs.update({"layout": [(x.shift, x.width, x.radius) for x in blocks] if blocks else "brute", "estimated_s": cost})
    return out


def _expand_repeats(inv: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of unique values → pairs of positions (plus pairs among equal hashes)."""
    order = np.argsort(inv, kind="stable")
    cnt = np.bincount(inv, minlength=int(inv.max()) + 1 if len(inv) else 0)
    off = np.concatenate(([0], np.cumsum(cnt)))
    parts_a, parts_b = [], []
    # equal hashes: all pairs inside each group
    pos = np.arange(len(order))
    grp_end = off[inv[order] + 1]
    for a, b in _expand(pos, pos + 1, grp_end - pos - 1, _CHUNK):
        parts_a.append(order[a])
        parts_b.append(order[b])
    # distinct values: every member of one × every member of the other
    if len(lo):
        ca, cb = cnt[lo], cnt[hi]
        rep = np.repeat(np.arange(len(lo)), ca)
        ia = off[lo][rep] + (np.arange(len(rep)) - np.repeat(np.cumsum(ca) - ca, ca))
        for a, b in _expand(ia, off[hi][rep], cb[rep], _CHUNK):
            parts_a.append(order[a])
            parts_b.append(order[b])
    if not parts_a:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    a, b = np.concatenate(parts_a), np.concatenate(parts_b)
    return np.minimum(a, b), np.maximum(a, b)


# --------------------------------------------------------------------------- dedup
def perceptual_duplicates(
    df: Any,
    *,
    threshold: int = 10,
    policy: Literal["smallest_key", "max_score"] = "smallest_key",
    score_column: str | None = None,
    hash_column: str = PHASH,
    n_threads: int | None = None,
) -> pd.DataFrame:
    """Groups of samples whose pHashes are within Hamming distance ``threshold``, transitively.

    Edges join hashes at distance ``≤ threshold``; groups are the connected components
    (``scipy.sparse.csgraph``), so a chain of small edits forms one group even when its ends
    are farther apart. One survivor per group by ``policy``.

    Parameters
    ----------
    df : pandas or Dask DataFrame
        With ``key`` and ``hash_column`` (uint64); only ``nf_status == 'ok'`` rows with a hash take part.
    threshold : int
        Inclusive Hamming distance, 0..64 (imagededup's default is 10).
    policy : {"smallest_key", "max_score"}
        Which member of a group is kept.
    score_column : str, optional
        Numeric column for ``policy='max_score'``.
    hash_column : str
        Column holding the 64-bit hash (default ``phash``).
    n_threads : int, optional
        Threads for the index search.

    Returns
    -------
    DataFrame
        The duplicates table. ``matched_key`` is the row's nearest member of its group (an
        identical hash first), ``max_similarity`` = ``1 − distance/64`` to it.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> df = pd.DataFrame({"key": ["a", "b", "c"], "phash": np.array([0, 0b11, 2**63 - 1], dtype=np.uint64)})
    >>> perceptual_duplicates(df, threshold=4)[["key", "is_survivor", "matched_key"]].values.tolist()
    [['a', True, 'b'], ['b', False, 'a']]
    """
    if policy == "max_score" and not score_column:
        raise ValueError("perceptual_duplicates: policy='max_score' needs score_column=<a numeric column>")
    cols = [KEY, hash_column] + ([score_column] if score_column else [])
    pdf = collect(df, cols, stage="perceptual_duplicates")
    n_rows = len(pdf)
    pdf = pdf[pdf[hash_column].notna()].reset_index(drop=True)
    h = pdf[hash_column].to_numpy(dtype=np.uint64)
    u, inv = np.unique(h, return_inverse=True)
    pairs = hamming_pairs(u, threshold=threshold, n_threads=n_threads, distinct=True)
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    nu = len(u)
    ia, ib, dist = (pairs[c].to_numpy() for c in ("i", "j", "distance"))
    graph = coo_array((np.ones(len(ia), np.int8), (ia, ib)), shape=(nu, nu)).tocsr()
    _, comp = connected_components(graph, directed=False, return_labels=True)
    labels = comp[inv]
    size = np.bincount(labels, minlength=comp.max() + 1 if nu else 0)
    in_group = size[labels] > 1
    attrs = {"threshold": int(threshold), "layout": pairs.attrs.get("layout"), "distinct_hashes": int(nu)}
    if not in_group.any():
        out = empty_dup_table()
        out.attrs.update({"n_rows": n_rows, "method": "perceptual", **attrs})
        return out
    g = pdf[in_group].reset_index(drop=True)
    keys = g[KEY].to_numpy(dtype=object)
    lab, ginv = labels[in_group], inv[in_group]
    score = g[score_column].to_numpy(dtype=np.float64) if policy == "max_score" else None
    order = rank_order(keys, policy=policy, score=score)
    rank = np.empty(len(keys), np.int64)
    rank[order] = np.arange(len(keys))
    surv = group_survivors(lab, rank)

    # nearest neighbour: another row with the same hash (distance 0), else the closest hash
    krank = key_rank(keys)
    o = np.lexsort((krank, ginv))  # by hash, then key
    hs = ginv[o]
    pos = np.arange(len(o))
    start = np.maximum.accumulate(np.where(np.r_[True, hs[1:] != hs[:-1]], pos, 0))
    first = keys[o][start]
    second = keys[o][np.minimum(start + 1, len(o) - 1)]
    same = np.empty(len(keys), dtype=object)
    same[o] = np.where(pos == start, second, first)  # another row with the identical hash
    mult = np.bincount(ginv)[ginv]
    # the smallest key of each hash, on integer key ranks (a string groupby-min runs in Python)
    kord = np.argsort(krank)
    best = np.full(int(ginv.max()) + 1, len(keys), np.int64)
    np.minimum.at(best, ginv, krank)
    has = best < len(keys)
    min_key_of_hash = pd.Series(keys[kord[best[has]]], index=np.nonzero(has)[0], dtype=object)
    src = np.concatenate([ia, ib])
    dst = np.concatenate([ib, ia])
    dd_ = np.concatenate([dist, dist])
    o = np.lexsort((dst, dd_, src))
    src, dst, dd_ = src[o], dst[o], dd_[o]
    firsts = np.r_[True, src[1:] != src[:-1]] if len(src) else np.zeros(0, bool)
    nn_dst = pd.Series(dst[firsts], index=src[firsts])
    nn_dist = pd.Series(dd_[firsts], index=src[firsts])
    near_key = min_key_of_hash.reindex(nn_dst.reindex(ginv).to_numpy()).to_numpy(dtype=object)
    near_d = nn_dist.reindex(ginv).to_numpy(dtype=np.float64)
    use_same = mult > 1
    matched = np.where(use_same, same, near_key)
    d = np.where(use_same, 0.0, near_d)
    table = pd.DataFrame(
        {
            "key": keys,
            "group_id": group_min_key(lab, keys),
            "is_survivor": surv,
            "max_similarity": 1.0 - d / 64.0,
            "matched_key": matched,
            "method": "perceptual",
        }
    )
    return finish_dup_table(table, n_rows=n_rows, method="perceptual", **attrs)
