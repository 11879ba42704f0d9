"""Shards: a stable, balanced partition of the models, each shard in its own state file."""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
import subprocess
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli_support import TOKEN, empty_config, emulator, run_args, sim_stats, start
from fleet.models import Lifecycle, ModelSpec
from fleet.selection import select
from fleet.shards import Shard, shard_of

if TYPE_CHECKING:
    from conftest import FleetHere

model_ids = st.sets(st.uuids().map(str), max_size=60)
shard_counts = st.integers(min_value=1, max_value=40)


def _specs(ids: list[str]) -> list[ModelSpec]:
    return [ModelSpec(id=i, name=f"m-{i[:8]}", lifecycle=Lifecycle()) for i in ids]


@given(model_ids, shard_counts)
def test_every_model_is_in_exactly_one_shard(ids: set[str], n: int) -> None:
    """Over shards 0/N … (N-1)/N, each model is selected once and none is left out."""
    specs = _specs(sorted(ids))
    taken = [spec.id for k in range(n) for spec in select(specs, shard=Shard(k, n))]
    assert sorted(taken) == sorted(ids)


@given(model_ids, model_ids, shard_counts)
def test_adding_models_moves_no_existing_model(before: set[str], added: set[str], n: int) -> None:
    """A shard of a larger fleet holds exactly the same old models as before, whatever order."""
    old = _specs(sorted(before))
    new = _specs(sorted(added - before)) + list(reversed(old))
    for k in range(n):
        then = {spec.id for spec in select(old, shard=Shard(k, n))}
        now = {spec.id for spec in select(new, shard=Shard(k, n))}
        assert now & before == then


@pytest.mark.parametrize("n", [2, 3, 8, 16])
def test_ten_thousand_models_spread_evenly(n: int) -> None:
    """10,000 random UUIDs: every shard within 15% of an even share."""
    rng = random.Random(20261125)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(10_000)]
    sizes = Counter(shard_of(i, n) for i in ids)
    even = 10_000 / n
    assert set(sizes) == set(range(n))
    assert all(abs(size - even) <= 0.15 * even for size in sizes.values()), sizes


def test_the_shard_is_sha256_of_the_id_and_never_changes() -> None:
    """Pinned values: a model keeps its shard across fleet versions, machines and processes."""
    model = "088d1992-06bc-46cc-9f92-c2a1c2b03ca9"
    digest = hashlib.sha256(model.encode()).digest()
    assert shard_of(model, 8) == int.from_bytes(digest[:8], "big") % 8
    assert [shard_of(model, n) for n in (2, 3, 8, 100)] == [1, 1, 5, 37]
    assert [shard_of("a6c8eee0-5ef6-4183-866b-feceb260172d", n) for n in (2, 8)] == [0, 4]


@pytest.mark.parametrize(
    ("text", "shard"), [("0/1", Shard(0, 1)), ("3/8", Shard(3, 8)), (" 7 / 8 ", Shard(7, 8))]
)
def test_k_of_n_parses(text: str, shard: Shard) -> None:
    """K/N, K counted from 0, spaces allowed; it prints back as K/N."""
    assert Shard.parse(text) == shard
    assert str(shard) == text.replace(" ", "")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("3/3", "K counts from 0, so with N = 3 it is 0 to 2"),
        ("0/0", "N, the number of shards, must be at least 1"),
        ("x/2", "is not K/N"),
        ("-1/4", "is not K/N"),
        ("3", "is not K/N"),
        ("1/2/3", "is not K/N"),
    ],
)
def test_a_bad_shard_says_what_is_expected(text: str, says: str) -> None:
    """Out of range, no shards at all, or not K/N: a ValueError that says which."""
    with pytest.raises(ValueError, match=re.escape(says)):
        Shard.parse(text)


@pytest.mark.parametrize(
    ("db", "expected"),
    [
        ("fleet.db", "fleet.shard-3-of-8.db"),
        ("/data/state/fleet.sqlite", "/data/state/fleet.shard-3-of-8.sqlite"),
        ("state", "state.shard-3-of-8"),
        ("fleet.shard-3-of-8.db", "fleet.shard-3-of-8.db"),
    ],
)
def test_each_shard_has_its_own_state_file_beside_the_configured_one(
    db: str, expected: str
) -> None:
    """`.shard-K-of-N` goes before the suffix, in the same directory, and only once."""
    assert Shard(3, 8).state_file(Path(db)) == Path(expected)


# -- end to end ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["3/3", "x/2", "0/0", "-1/4"])
def test_a_bad_shard_flag_is_one_line_and_exit_2(
    tmp_path: Path, value: str, fleet_here: FleetHere
) -> None:
    """`fleet run --shard` with a shard that cannot be: one line naming the flag, exit 2."""
    done = fleet_here(
        "run", "--config", str(empty_config(tmp_path)), "--shard", value,
        cwd=tmp_path, env={"FLEET_API__TOKEN": TOKEN},
    )  # fmt: skip
    assert done.code == 2, done.err
    [line] = done.err.strip().splitlines()
    assert line.startswith("fleet: configuration error: shard (from flag --shard): ")
    assert not list(tmp_path.glob("*.db*"))


@pytest.mark.e2e
def test_two_shards_run_every_model_once_each_in_its_own_state_file(
    tmp_path: Path, fleet_here: FleetHere
) -> None:
    """Two shards at once: each runs its own models in its own file, together all, none twice."""
    with emulator(tmp_path, "--models", "16", "--time-scale", "5000") as url:
        procs = [
            start([*run_args(tmp_path, "night"), "--shard", f"{k}/2"], tmp_path, url,
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for k in (0, 1)
        ]  # fmt: skip
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        stats = sim_stats(url)
    with (tmp_path / "models.csv").open() as handle:
        every = {row["id"] for row in csv.DictReader(handle)}
    assert stats["jobs_by_type"]["TRAINING"] == len(every) == 16  # type: ignore[index]
    assert stats["max_jobs_per_model_and_type"] == 1
    assert not (tmp_path / "fleet.db").exists()
    held = {}
    for k in (0, 1):
        db = tmp_path / f"fleet.shard-{k}-of-2.db"
        status = fleet_here("status", "night", "--db", str(db), "--json", cwd=tmp_path)
        assert status.code == 0, status.err
        held[k] = {m["model_id"] for m in json.loads(status.out)["models"]}
        assert held[k] == {i for i in every if shard_of(i, 2) == k}
        assert held[k]
    assert held[0] | held[1] == every
    assert not held[0] & held[1]
    both = fleet_here("status", "--db", "fleet.shard-*.db", "--json", cwd=tmp_path)
    merged = json.loads(both.out)
    assert {m["model_id"] for m in merged["models"]} == every
    assert merged["stages"]["retire"] == {"succeeded": 16}
    assert merged["warnings"] == []
    plan = fleet_here(
        "plan", "--run-id", "night", "--shard", "1/2", "--models-file", "models.csv",
        "--config", str(empty_config(tmp_path)), "--json", cwd=tmp_path,
    )  # fmt: skip
    assert plan.code == 0, plan.err
    document = json.loads(plan.out)
    assert (document["shard"], document["db"]) == ("1/2", "fleet.shard-1-of-2.db")
    assert document["totals"] == {"skip": len(held[1])}
    assert "in shard 1/2" in document["run"]
