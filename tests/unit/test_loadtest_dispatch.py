"""How the load test hands a phase's prompts to its clients: one queue in the padded baseline's batch
order, so both run the same prompts and no client idles while prompts are left."""

from __future__ import annotations

from banditspec.bench.loadtest import assign, batches_of, like_for_like, queue_order
from banditspec.bench.workload import Prompt


def prompts(count: int) -> list[Prompt]:
    return [Prompt(id=f"p{i}", kind="chat", messages=None, text=f"prompt {i}") for i in range(count)]


def test_the_queue_takes_every_clients_first_prompt_then_every_second():
    assignments = assign(prompts(10), clients=3, per_client=2)
    order = queue_order(assignments)
    assert [p.id for p in order] == ["p0", "p2", "p4", "p1", "p3", "p5"]
    batches = batches_of(assignments)  # the padded baseline's batches: client c's r-th prompt in batch r
    assert [[p.id for p in batch] for batch in batches] == [["p0", "p2", "p4"], ["p1", "p3", "p5"]]
    assert batches == [[assignments[c][r] for c in range(3)] for r in range(2)]
    assert order == [p for batch in batches for p in batch]


def test_clients_with_fewer_prompts_are_skipped_not_padded():
    a, b, c = prompts(3)
    assert queue_order([[a, b], [c]]) == [a, c, b]
    assert queue_order([]) == []


def test_a_phase_of_fixed_size_runs_the_same_prompts_at_every_n_in_the_same_order():
    workload = prompts(10)
    for clients in (1, 3, 4):
        assignments = assign(workload, clients, per_client=2, per_phase=7)
        assert len(assignments) == clients
        assert [p.id for p in queue_order(assignments)] == [f"p{i}" for i in range(7)]
    assert [p.id for p in queue_order(assign(workload, 4, per_client=2, per_phase=12))][-2:] == ["p0", "p1"]


def test_by_default_every_n_runs_the_largest_ns_prompts():
    assert like_for_like([1, 2, 4, 8, 16], per_client=2, per_phase=None) == 32
    assert like_for_like([8, 1], per_client=3, per_phase=None) == 24
    assert like_for_like([1, 8], per_client=2, per_phase=5) == 5  # as asked
    assert like_for_like([1, 8], per_client=2, per_phase=0) == 0  # each N its own N × per-client prompts
    one, eight = (queue_order(assign(prompts(40), n, 2, like_for_like([1, 8], 2, None))) for n in (1, 8))
    assert one == eight and len(one) == 16
