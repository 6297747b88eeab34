"""N:M masks on any layer width: where the groups of M fall, and how many weights a layout prunes.

jcexp's N:M is the paper's: N pruned of every M consecutive weights of a row (along the input dimension).
SparseGPT picks its groups inside blocks of columns and restarts them at every block; Wanda walks the row.

Two layouts (``pruner.nm_layout``):

- ``exact`` (default): groups of M from column 0 of the row. SparseGPT's block becomes the largest multiple of M
  not above 128, so no group straddles a block and SparseGPT's groups are the row's.
- ``paper``: what the paper ran, llm-compressor's default block of 128 with groups restarting at each block.
  128 is not a multiple of 6 or 3, so 2:6 prunes 44 of every 128 weights (34.375%) and 1:3 43 (33.59%).

The one rule for a partial group (r < M columns: at a row's end when M does not divide the width, and in
``paper`` at each block's end): it prunes N of its r weights, the N least salient, which is what
llm-compressor's SparseGPT and Wanda do. r < N cannot hold N pruned weights and is refused before any compute.

Pure functions: the pruners apply the rule; this module says what it yields, for the checks and the measurements.
"""

from __future__ import annotations

LAYOUTS = ("exact", "paper")
SPARSEGPT_BLOCK = 128


def block_size(m: int | None, layout: str, block: int = SPARSEGPT_BLOCK) -> int:
    """SparseGPT's block of columns for this layout (unchanged without a mask)."""
    if m is None or layout == "paper":
        return int(block)
    return max(m, (int(block) // m) * m)


def group_sizes(width: int, m: int, block: int | None) -> list[int]:
    """Sizes of a row's groups, in order: groups of M restart at every block (None: one block, the row)."""
    block = width if block is None else block
    sizes = []
    for start in range(0, width, block):
        span = min(block, width - start)
        sizes += [m] * (span // m) + ([span % m] if span % m else [])
    return sizes


def pruned_per_row(width: int, n: int, m: int, block: int | None) -> int:
    """Weights a row loses under the rule (N per group, partial groups included)."""
    return sum(min(n, r) for r in group_sizes(width, m, block))


def full_group_columns(width: int, m: int, block: int | None) -> list[int]:
    """Column indices of a row's full groups, group after group (for measuring which groups hold)."""
    block = width if block is None else block
    cols: list[int] = []
    for start in range(0, width, block):
        span = min(block, width - start)
        cols += range(start, start + (span // m) * m)
    return cols


def width_problems(width: int, n: int, m: int, block: int | None) -> list[int]:
    """Partial-group sizes r with 0 < r < N: groups that cannot hold N pruned weights."""
    return sorted({r for r in group_sizes(width, m, block) if 0 < r < n})
