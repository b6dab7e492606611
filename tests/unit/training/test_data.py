"""Data order, sharding, candidate order and message resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from rmkit.errors import RmkitError
from rmkit.training.data import (
    DataOrder,
    judge_order,
    records_file,
    resolve_messages,
    shard,
    total_steps,
)


def test_order_is_a_seeded_permutation_per_epoch_and_drops_the_tail():
    order = DataOrder(n=10, per_step=4, seed=3)
    assert order.steps_per_epoch == 2
    e0 = [order.next_batch() for _ in range(2)]
    assert [e for e, _ in e0] == [0, 0]
    seen = e0[0][1] + e0[1][1]
    assert len(set(seen)) == 8 and set(seen) <= set(range(10))
    epoch, third = order.next_batch()  # 2 records left < 4: new epoch
    assert epoch == 1 and third == order.permutation(1)[:4]
    assert order.permutation(0) != order.permutation(1)
    assert DataOrder(n=10, per_step=4, seed=3).permutation(0) == order.permutation(0)
    assert DataOrder(n=10, per_step=4, seed=3, shuffle=False).permutation(5) == list(range(10))


def test_order_state_resumes_the_same_sequence():
    a = DataOrder(n=9, per_step=2, seed=1)
    for _ in range(5):
        a.next_batch()
    b = DataOrder(n=9, per_step=2, seed=1)
    b.load_state(a.state())
    assert [a.next_batch() for _ in range(4)] == [b.next_batch() for _ in range(4)]
    with pytest.raises(RmkitError, match="seed"):
        DataOrder(n=9, per_step=2, seed=2).load_state(a.state())


def test_order_needs_one_full_step():
    with pytest.raises(RmkitError, match="one step needs 8"):
        DataOrder(n=5, per_step=8, seed=0)


def test_shards_partition_the_global_batch():
    batch = [7, 3, 9, 1, 4, 0]
    assert shard(batch, 0, 1) == batch
    assert shard(batch, 0, 2) == [7, 9, 4] and shard(batch, 1, 2) == [3, 1, 0]
    assert sorted(shard(batch, 0, 3) + shard(batch, 1, 3) + shard(batch, 2, 3)) == sorted(batch)


def test_total_steps():
    assert total_steps(10, None, 4) == 10
    assert total_steps(None, 2.5, 4) == 10
    assert total_steps(3, 2.0, 4) == 3
    assert total_steps(None, 0.1, 4) == 1


def test_judge_order_is_deterministic_and_balanced():
    recs = [{"id": f"r{i}", "candidates": ["a", "b"]} for i in range(400)]
    orders = [judge_order(r, seed=0, epoch=0) for r in recs]
    assert orders == [judge_order(r, seed=0, epoch=0) for r in recs]
    first = sum(o == [0, 1] for o in orders) / len(orders)
    assert 0.42 < first < 0.58
    assert orders != [judge_order(r, seed=0, epoch=1) for r in recs]
    three = judge_order({"id": "x", "candidates": ["a", "b", "c"]}, 0, 0)
    assert sorted(three) == [0, 1, 2]


def test_resolve_messages(tmp_path):
    msgs = [
        {"role": "user", "content": [
            {"type": "image", "image": "img/a.png"},
            {"type": "caption", "text": "a red square"},
            {"type": "text", "text": "Which is better?"},
        ]},
        {"role": "assistant", "content": "<answer>1</answer>"},
    ]  # fmt: skip
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = resolve_messages(msgs, tmp_path)
    parts = out[0]["content"]
    assert parts[0] == {"type": "image", "image": str((tmp_path / "img" / "a.png").resolve())}
    assert parts[1] == {"type": "text", "text": "[Image description: a red square]"}
    assert out[1] == msgs[1]
    assert msgs[0]["content"][0]["image"] == "img/a.png"  # input untouched


def test_records_file(tmp_path):
    import hashlib
    import json

    (tmp_path / "train.jsonl").write_text("")
    empty = {"records": 0, "sha256": hashlib.sha256(b"").hexdigest()}
    (tmp_path / "manifest.json").write_text(json.dumps({"outputs": {"train.jsonl": empty}}))
    assert records_file(str(tmp_path), "train") == tmp_path / "train.jsonl"
    with pytest.raises(RmkitError, match="no val.jsonl") as e:
        records_file(str(tmp_path), "val")
    assert "train" in e.value.hint
    with pytest.raises(RmkitError, match="no such file"):
        records_file(str(tmp_path / "nope.jsonl"), "train")
    assert records_file(str(tmp_path / "train.jsonl"), "x") == Path(tmp_path / "train.jsonl")
