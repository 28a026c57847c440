"""Suffix-tree drafting (SuffixDecoding, Oliaro et al. 2024): continue the context the way earlier text did.

Two trees, as in the paper. A per-session tree over the session's own context (prompt and tokens
generated so far), kept in `session.state[name]`; and one global tree over earlier finished *outputs*,
added by `finish` when a session is released. Prompts stay out of the global tree, as in SuffixDecoding:
the outputs are what later requests repeat (agentic loops, re-asked questions); a prompt is only ever
useful to its own request, where the per-session tree already has it.

Each tree is a suffix trie truncated at `max_depth` tokens: inserting position i of a sequence adds the
path seq[i : i + max_depth], and every node counts the paths through it, i.e. the occurrences of its
string. To propose, take the longest suffix of the context (at least `min_match` tokens) whose node has
a continuation, then follow the most frequent child while the product of the empirical probabilities
(child count / sum of the children's counts) stays at or above `threshold`: the draft is long where the
history agrees and short where it branches (SuffixDecoding's adaptive speculation length). The match
is capped at max_depth - num_tokens tokens when that is ≥ min_match, because a match of L tokens leaves
only max_depth - L tokens of continuation in the tree. Both trees are queried; the longer match wins,
ties go to the higher score (sum of the path probabilities).

Asked for a token tree of at most T tokens, it grows one from the match best first: of the continuations
seen, the T most probable (the product of the empirical probabilities along the path, at or above
`threshold`, no deeper than γ), so each branch stops where the chain's rule would stop it. The score of a
tree is the sum of its nodes' probabilities, the expected number of tokens the target accepts if the
history's frequencies hold.

Cost. The session tree is updated incrementally: a "frontier" holds the nodes of the context's
suffixes that occurred before, so a new token costs O(max_depth) and finding the session's match costs
O(max_depth). The global tree is matched by walking context[-L:], binary searching L: O(max_depth log
max_depth).

Memory. A plain trie has up to max_depth nodes per token (about 6 KB per token in CPython). A node
seen once (count 1) has a single path below it, so it is stored as a reference into its sequence
(seq, pos, limit) instead of a chain of nodes, and only strings seen at least twice get real nodes.
The form is canonical (count 1 ⟺ a reference), so removing a sequence restores the tree exactly. The
global tree remembers at most `memory_tokens` output tokens and at most `max_nodes` node objects
(repetitive text makes up to max_depth nodes per token): past either, the oldest outputs are evicted
(FIFO) by decrementing the counts along their paths and deleting nodes that drop to zero.

Spec: NAME=suffix[:DEPTH[:MEMORY_TOKENS|off]] (off or 0: no learning across requests).
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Self

from banditspec.v1 import draft_pb2
from services.draft.drafters.base import (
    Drafter,
    DraftSession,
    Kind,
    ModelFree,
    Proposal,
    ServiceSettings,
    optional_field,
    spec_count,
    tree_proposal,
)

DEFAULT_MAX_DEPTH = 24
DEFAULT_MEMORY_TOKENS = 200_000
MAX_DEPTH = 256  # matching costs up to max_depth steps per token


@dataclass(frozen=True)
class SuffixOptions:
    max_depth: int | None = None
    memory_tokens: int | None = None  # 0: remember no outputs

    def __post_init__(self) -> None:
        if self.max_depth is not None and not 1 <= self.max_depth <= MAX_DEPTH:
            raise ValueError(f"max_depth must be in [1, {MAX_DEPTH}], got {self.max_depth}")
        if self.memory_tokens is not None and self.memory_tokens < 0:
            raise ValueError(f"memory_tokens must be >= 0, got {self.memory_tokens}")

    @classmethod
    def parse(cls, args: str) -> Self:
        depth, _, memory = args.partition(":")
        if depth == "off" and not memory:
            depth, memory = "", "off"
        return cls(spec_count(depth), 0 if memory in ("off", "0") else spec_count(memory))

    @classmethod
    def from_pb(cls, pb: draft_pb2.SuffixOptions) -> Self:
        return cls(optional_field(pb, "max_depth"), optional_field(pb, "memory_tokens"))

    def to_pb(self) -> draft_pb2.SuffixOptions:
        return draft_pb2.SuffixOptions(max_depth=self.max_depth, memory_tokens=self.memory_tokens)

    def build(self, name: str, settings: ServiceSettings) -> Drafter:
        return SuffixDrafter(
            name,
            DEFAULT_MAX_DEPTH if self.max_depth is None else self.max_depth,
            DEFAULT_MEMORY_TOKENS if self.memory_tokens is None else self.memory_tokens,
        )


KIND = Kind("suffix", draft_pb2.DRAFTER_KIND_SUFFIX, "NAME=suffix[:DEPTH[:MEMORY_TOKENS|off]]", SuffixOptions)


class _Node:
    """Explicit (children is a dict) or, with count 1, a reference: its only path continues with
    seq[pos : min(limit, len(seq))]."""

    __slots__ = ("children", "count", "limit", "pos", "seq", "total")

    def __init__(self, count: int = 0, seq: Sequence[int] | None = None, pos: int = 0, limit: int = 0) -> None:
        self.count = count
        self.total = 0  # sum of the children's counts (explicit nodes)
        self.children: dict[int, _Node] | None = {} if seq is None else None
        self.seq = seq
        self.pos = pos
        self.limit = limit


def _goes_on(node: _Node, offset: int) -> bool:
    """Whether a path continues past this position (a node, and how far into its reference)."""
    if node.children is not None:
        return node.total > 0
    return node.pos + offset < min(node.limit, len(node.seq))


class SuffixTrie:
    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.root = _Node()
        self.nodes = 1  # node objects, root included

    def leaf(self, seq: Sequence[int], pos: int, limit: int) -> _Node:
        self.nodes += 1
        return _Node(1, seq, pos, limit)

    def expand(self, node: _Node) -> None:
        """Turn a reference into an explicit node with the same single path (before a second path joins)."""
        seq, pos, limit = node.seq, node.pos, node.limit
        node.children, node.seq = {}, None
        if pos < min(limit, len(seq)):
            node.children[seq[pos]] = self.leaf(seq, pos + 1, limit)
            node.total = 1

    def _collapse(self, node: _Node, string: tuple[int, ...]) -> None:
        """Back to a reference once one path is left (`string` is the node's own string)."""
        if node.children:  # it continues the way its only child does
            ((_, child),) = node.children.items()
            node.seq, node.pos, node.limit = child.seq, child.pos - 1, child.limit
            self.nodes -= 1
        else:  # the path ends here; a copy of the string lets the parents collapse onto it in turn
            node.seq, node.pos, node.limit = string, len(string), len(string)
        node.children, node.total = None, 0

    def add(self, seq: Sequence[int]) -> None:
        for start in range(len(seq)):
            node = self.root
            for k in range(start, min(start + self.max_depth, len(seq))):
                node.total += 1
                child = node.children.get(seq[k])
                if child is None:  # first time this string is seen: the rest of the path is a reference
                    node.children[seq[k]] = self.leaf(seq, k + 1, start + self.max_depth)
                    break
                if child.children is None:
                    self.expand(child)
                child.count += 1
                node = child

    def remove(self, seq: Sequence[int]) -> None:
        """Undo add(seq); seq must have been added."""
        for start in range(len(seq)):
            path: list[tuple[_Node, int, _Node]] = []
            node = self.root
            for k in range(start, min(start + self.max_depth, len(seq))):
                parent, node = node, node.children[seq[k]]
                path.append((parent, seq[k], node))
                if node.children is None:  # a reference: the rest of its path is this one
                    break
            # Deepest first, so a node collapses after its children did.
            for depth in range(len(path), 0, -1):
                parent, token, node = path[depth - 1]
                node.count -= 1
                parent.total -= 1
                if node.count == 0:
                    del parent.children[token]
                    self.nodes -= 1
                elif node.count == 1:
                    self._collapse(node, tuple(seq[start : start + depth]))

    def find(self, tokens: Sequence[int]) -> tuple[_Node, int] | None:
        """The position of `tokens` in the trie: a node and how far into its reference, or None."""
        node, offset = self.root, 0
        for token in tokens:
            if node.children is not None:
                child = node.children.get(token)
                if child is None:
                    return None
                node = child
            else:
                at = node.pos + offset
                if at >= min(node.limit, len(node.seq)) or node.seq[at] != token:
                    return None
                offset += 1
        return node, offset


@dataclass
class _SessionTree:
    trie: SuffixTrie
    context: list[int]  # the session's own list: references into it grow with it
    indexed: int = 0
    # (L, node) for each suffix of context[:indexed] of L < max_depth tokens that has an explicit node
    # (count ≥ 2: it occurred before), shortest first; the root is L = 0.
    frontier: list[tuple[int, _Node]] = field(default_factory=list)

    def update(self) -> None:
        trie, context = self.trie, self.context
        for n in range(self.indexed, len(context)):
            token = context[n]
            frontier = [(0, trie.root)]
            for length, node in self.frontier:
                node.total += 1
                child = node.children.get(token)
                if child is None:  # seen once so far: a reference, which grows with the context
                    node.children[token] = trie.leaf(context, n + 1, n - length + trie.max_depth)
                    continue
                if child.children is None:
                    trie.expand(child)
                child.count += 1
                if length + 1 < trie.max_depth:
                    frontier.append((length + 1, child))
            self.frontier = frontier
        self.indexed = len(context)


class SuffixDrafter(ModelFree):
    kind = KIND.name
    vocab_fingerprint = ""
    learns_from_outputs = True
    proposes_trees = True  # the most probable branches

    def __init__(
        self,
        name: str = "suffix",
        max_depth: int = DEFAULT_MAX_DEPTH,
        memory_tokens: int = DEFAULT_MEMORY_TOKENS,
        min_match: int = 2,
        threshold: float = 0.1,
        max_nodes: int = 1_000_000,  # ~150 MB of CPython objects
    ) -> None:
        if not 1 <= min_match < max_depth:
            raise ValueError(f"suffix drafter needs 1 <= min_match < max_depth, got {min_match}, {max_depth}")
        if memory_tokens < 0 or max_nodes < 1 or not 0.0 <= threshold <= 1.0:
            raise ValueError("suffix drafter needs memory_tokens >= 0, max_nodes >= 1 and 0 <= threshold <= 1")
        self.name = name
        self.max_depth = max_depth
        self.memory_tokens = memory_tokens
        self.min_match = min_match
        self.threshold = threshold
        self.max_nodes = max_nodes
        self.source = (
            f"suffix trees, depth {max_depth}, min match {min_match}, threshold {threshold}, "
            f"remembers {memory_tokens} output tokens in at most {max_nodes} nodes"
        )
        self.global_tree = SuffixTrie(max_depth)
        self.outputs: deque[tuple[int, ...]] = deque()  # remembered outputs, oldest first
        self.remembered_tokens = 0
        # The draft service inserts finished outputs on a thread while proposals read the global tree.
        self.global_lock = threading.Lock()

    def _session_tree(self, session: DraftSession) -> _SessionTree:
        tree = session.state.get(self.name)
        if tree is None or tree.context is not session.context or tree.indexed > len(session.context):
            trie = SuffixTrie(self.max_depth)
            tree = session.state[self.name] = _SessionTree(trie, session.context, frontier=[(0, trie.root)])
        tree.update()
        return tree

    def _global_match(self, context: list[int], longest: int) -> tuple[int, _Node, int] | None:
        # A suffix that occurs with a continuation implies its shorter suffixes do: binary search.
        best = None
        low, high = self.min_match, longest
        while low <= high:
            length = (low + high) // 2
            found = self.global_tree.find(context[-length:])
            if found is not None and _goes_on(*found):
                best, low = (length, *found), length + 1
            else:
                high = length - 1
        return best

    def _draft(self, node: _Node, offset: int, num_tokens: int) -> tuple[list[int], float]:
        """Follow the most frequent continuation while the path's probability stays ≥ threshold."""
        tokens: list[int] = []
        probability, score = 1.0, 0.0
        while len(tokens) < num_tokens:
            if node.children is None:  # a single path: every step has probability 1
                start = node.pos + offset
                end = min(node.limit, len(node.seq), start + num_tokens - len(tokens))
                tokens.extend(node.seq[start:end])
                score += probability * max(0, end - start)
                break
            if node.total == 0:
                break
            # Ties go to the smaller token id, so the draft does not depend on insertion order.
            token, child = max(node.children.items(), key=lambda item: (item[1].count, -item[0]))
            probability *= child.count / node.total
            if probability < self.threshold:
                break
            tokens.append(token)
            score += probability
            node, offset = child, 0
        return tokens, score

    def _draft_tree(self, node: _Node, offset: int, num_tokens: int, tree_tokens: int) -> tuple[Proposal, float]:
        """The tree_tokens most probable continuations (path probability ≥ threshold, depth ≤ num_tokens)."""
        token_ids: list[int] = []
        parents: list[int] = []
        score = 0.0
        # (-probability, depth, token, parent index, node, offset): the most probable first; ties go to the
        # shallower, then the smaller token id, as in the chain. A child is pushed when its parent is taken,
        # and is no more probable, so parents come before children and siblings best first.
        heap: list[tuple[float, int, int, int, _Node, int]] = []

        def push_children(probability: float, depth: int, index: int, node: _Node, offset: int) -> None:
            if depth >= num_tokens:
                return
            if node.children is None:  # a single path: probability 1 per step
                at = node.pos + offset
                if at < min(node.limit, len(node.seq)):
                    heapq.heappush(heap, (-probability, depth + 1, node.seq[at], index, node, offset + 1))
                return
            for token, child in node.children.items():
                child_probability = probability * (child.count / node.total)  # as the chain multiplies
                if child_probability >= self.threshold:
                    heapq.heappush(heap, (-child_probability, depth + 1, token, index, child, 0))

        push_children(1.0, 0, -1, node, offset)
        while heap and len(token_ids) < tree_tokens:
            negative, depth, token, parent, node, offset = heapq.heappop(heap)
            push_children(-negative, depth, len(token_ids), node, offset)
            token_ids.append(token)
            parents.append(parent)
            score -= negative
        return tree_proposal(token_ids, parents), score

    def propose(self, session: DraftSession, num_tokens: int, tree_tokens: int = 0) -> Proposal:
        if num_tokens <= 0:
            return Proposal([])
        context = session.context
        tree = self._session_tree(session)
        longest = min(len(context), self.max_depth - 1, max(self.min_match, self.max_depth - num_tokens))

        def draft(node: _Node, offset: int) -> tuple[Proposal, float]:
            if tree_tokens > 0:
                return self._draft_tree(node, offset, num_tokens, tree_tokens)
            tokens, score = self._draft(node, offset, num_tokens)
            return Proposal(tokens), score

        candidates = []  # (match length, score, proposal)
        for length, node in reversed(tree.frontier):
            if self.min_match <= length <= longest and node.total > 0:
                proposal, score = draft(node, 0)
                if proposal.token_ids:
                    candidates.append((length, score, proposal))
                break
        # While the learner inserts an output (it holds the lock), this round skips the global tree rather
        # than stall the service's event loop for the insertion.
        if self.global_lock.acquire(blocking=False):
            try:
                match = self._global_match(context, longest) if self.outputs else None
                if match is not None:
                    proposal, score = draft(match[1], match[2])
                    if proposal.token_ids:
                        candidates.append((match[0], score, proposal))
            finally:
                self.global_lock.release()
        if not candidates:
            return Proposal([])
        return max(candidates, key=lambda c: (c[0], c[1]))[2]

    def finish(self, session: DraftSession) -> None:
        """Remember the session's output; evict the oldest outputs past memory_tokens or max_nodes."""
        output = tuple(session.context[session.prompt_length :])
        if not output or self.memory_tokens == 0:
            return
        output = output[-self.memory_tokens :]  # one output longer than the memory keeps its end
        with self.global_lock:
            self._remember(output)

    def _remember(self, output: tuple[int, ...]) -> None:
        self.outputs.append(output)
        self.global_tree.add(output)
        self.remembered_tokens += len(output)
        while self.outputs and (self.remembered_tokens > self.memory_tokens or self.global_tree.nodes > self.max_nodes):
            oldest = self.outputs.popleft()
            self.global_tree.remove(oldest)
            self.remembered_tokens -= len(oldest)

    def close(self) -> None:
        with self.global_lock:
            self.outputs.clear()
            self.global_tree = SuffixTrie(self.max_depth)
            self.remembered_tokens = 0
