from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from fleet.sim.index import JobIndex, _Ranks

KEYS = ("CREATED", "RUNNING", "COMPLETED", "ERROR")


def brute_window(
    keys: list[str | None], wanted: set[str] | None, offset: int, limit: int, *, descending: bool
) -> list[int]:
    matches = [i for i, k in enumerate(keys) if k is not None and (wanted is None or k in wanted)]
    if descending:
        matches.reverse()
    return matches[offset : offset + limit]


@pytest.mark.parametrize("seed", range(4))
def test_ranks_match_a_scan_through_growth_and_changes(seed):
    """Counts and windows agree with a plain scan, across levels added as positions grow."""
    rng = random.Random(seed)
    ranks = _Ranks()
    keys: list[str | None] = []
    for step in range(9000):
        if keys and rng.random() < 0.4:
            position = rng.randrange(len(keys))
            key = rng.choice((*KEYS, None))
            ranks.set(position, key)
            keys[position] = key
        else:
            key = rng.choice(KEYS)
            assert ranks.append(key) == len(keys)
            keys.append(key)
        if step % 600 == 0 or step == 8999:
            for wanted in (None, {"RUNNING"}, {"COMPLETED", "ERROR"}, {"NOPE"}, set(KEYS)):
                total = sum(1 for k in keys if k is not None and (wanted is None or k in wanted))
                assert ranks.count(wanted) == total
                for offset in (0, 1, 63, total // 2, max(total - 5, 0), total + 3):
                    for descending in (False, True):
                        got = ranks.window(wanted, offset, 50, descending=descending)
                        assert got == brute_window(keys, wanted, offset, 50, descending=descending)


def test_sparse_matches_are_found_past_long_gaps():
    """A match far from the previous one is found through the counts, not a long walk."""
    ranks = _Ranks()
    for i in range(20_000):
        ranks.append("ERROR" if i % 997 == 0 else "COMPLETED")
    errors = ranks.window({"ERROR"}, 0, 100, descending=False)
    assert errors == list(range(0, 20_000, 997))
    assert ranks.window({"ERROR"}, 3, 2, descending=True) == [17 * 997, 16 * 997]


def test_jobs_ended_before_the_index_are_logged_in_end_order():
    """add_ended keeps creation order for createdAt and end order for updatedAt."""
    ended = [
        SimpleNamespace(id=f"old-{i}", outcome="COMPLETED", ends_at=end)
        for i, end in enumerate((30.0, 10.0, 20.0))
    ]
    index = JobIndex()
    index.add_ended(ended)
    new = SimpleNamespace(id="new")
    index.added(new, "CREATED")
    index.changed(ended[1], "COMPLETED")  # touched again later: it moves to the end of the log
    created = index.page(None, "createdAt", 0, 10, descending=False)
    assert [j.id for j in created] == ["old-0", "old-1", "old-2", "new"]
    changed = index.page(None, "updatedAt", 0, 10, descending=False)
    assert [j.id for j in changed] == ["old-2", "old-0", "new", "old-1"]
    assert index.count({"COMPLETED"}) == 3
    with pytest.raises(ValueError, match="empty index"):
        index.add_ended(ended)
