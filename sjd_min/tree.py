"""The shape of a Jacobi window: which window token is whose parent (a fixed tree per configuration).

A window of W tokens starts at the last committed token x_{n-1} (the root, depth 0). A node at
depth d holds a candidate for output position n + d - 1 and its model output p is the target
for position n + d ("level" d). ``branches = (K_1, ..., K_D)``: every level l < D has K_{l+1}
candidates, tried in order; then a chain of single drafts continues below the all-first-branch
node of depth D (the "spine": candidate 0 at every level). Shapes:

    "full":  every node at depth l < D has all K_{l+1} candidates of level l as children
             (siblings at one level share their tokens, whatever their parent)
    "spine": only spine nodes have children; a node off the spine is a leaf

The plain Jacobi window is the tree without branches (``branches=()``): a chain, node i at depth i.
Nodes are numbered root first, then depth by depth (candidate order within a parent), then the
chain, so a chain's numbering is its depths. All tables are plain tensors, built once per
configuration: one compiled graph serves every iteration.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

import torch
from jaxtyping import Bool, Int
from torch import Tensor

Shape = Literal["full", "spine"]
SHAPES: tuple[str, ...] = get_args(Shape)


def tree_size(branches: tuple[int, ...], shape: str) -> int:
    """Nodes below the root in the branched part (the chain not included)."""
    size, width = 0, 1  # width: nodes at the current depth that have children
    for k in branches:
        size += width * k
        width = width * k if shape == "full" else 1
    return size


@dataclasses.dataclass(frozen=True)
class Tree:
    """Index tables of one window shape (W nodes, L = depth of the deepest node + 1 levels)."""

    parent: Int[Tensor, " w"]  # parent node (the root: itself)
    depth: Int[Tensor, " w"]  # root 0; node at depth d holds the token of output position n + d - 1
    rank: Int[Tensor, " w"]  # which candidate of its level a node holds (0: the spine candidate)
    children: Int[Tensor, " w"]  # how many candidates of the next level a node has as children
    ancestors: Bool[Tensor, "w w"]  # [i, j]: node j is node i or one of its ancestors (the attention mask)
    spine: Int[Tensor, " l"]  # the spine node at each depth
    carry: Int[Tensor, "w l"]  # [e, l]: where the accepted path ends at e, the node whose p proposes level l
    levels: int  # L: output positions one window can commit (its depth + 1)
    max_branch: int  # most candidates at any level (1: a chain)

    @property
    def nodes(self) -> int:
        return self.parent.shape[0]

    def to(self, device) -> "Tree":
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), Tensor)})


def build_tree(window: int, branches: tuple[int, ...] = (), shape: str = "full") -> Tree:
    """The tables of a window of `window` nodes: the branched part, then a chain filling the rest."""
    if shape not in SHAPES:
        raise ValueError(f"tree shape must be one of {SHAPES}, got {shape!r}")
    if any(k < 1 for k in branches):
        raise ValueError(f"branches must be >= 1 each, got {branches}")
    need = 1 + tree_size(branches, shape)
    if window < need:
        raise ValueError(f"window {window} cannot hold the root and the {need - 1} nodes of branches {branches} "
                         f"({shape!r}); use window >= {need}")
    parent, depth, rank = [0], [0], [0]
    frontier = [0]  # nodes at the current depth that get children
    for k in branches:
        new = []
        for par in frontier:
            for r in range(k):
                parent.append(par), depth.append(depth[par] + 1), rank.append(r)
                new.append(len(parent) - 1)
        frontier = new if shape == "full" else new[:1]
    spine = [0]
    for _ in branches:
        spine.append(next(i for i in range(len(parent)) if parent[i] == spine[-1] and rank[i] == 0 and i != 0))
    while len(parent) < window:  # the chain below the spine
        parent.append(spine[-1]), depth.append(depth[spine[-1]] + 1), rank.append(0)
        spine.append(len(parent) - 1)
    w, levels = len(parent), len(spine)
    children = [0] * w
    for i in range(1, w):
        children[parent[i]] += 1
    ancestors = torch.zeros(w, w, dtype=torch.bool)
    for i in range(w):
        j = i
        while True:
            ancestors[i, j] = True
            if j == 0:
                break
            j = parent[j]
    first_child = {parent[i]: i for i in reversed(range(1, w)) if rank[i] == 0}
    carry = torch.tensor(spine).repeat(w, 1)  # past the end of an off-spine subtree: the spine
    for e in range(w):
        node = first_child.get(e)
        while node is not None:  # below e, its first children: the contexts closest to the accepted path
            carry[e, depth[node]] = node
            node = first_child.get(node)
    return Tree(
        parent=torch.tensor(parent), depth=torch.tensor(depth), rank=torch.tensor(rank),
        children=torch.tensor(children), ancestors=ancestors, spine=torch.tensor(spine), carry=carry,
        levels=levels, max_branch=max(branches, default=1),
    )
