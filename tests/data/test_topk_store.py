"""The teacher-distribution store: round trips by sample_id, crashes, damage, and its size."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kpod.data.topk_store import TokenDistributions, TopKStore, TopKStoreError, record_nbytes

K = 4
HEAD = {"k": K, "teacher": "tiny-teacher", "tokenizer": "tiny-bpe"}


def dist(sample_id: str, n: int, seed: int) -> TokenDistributions:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 500, size=(n, K)).astype(np.int32)
    ids[-1, -1] = -1  # a padded slot
    probs = rng.dirichlet(np.ones(K + 1), size=n)  # the last column: the mass outside the top k
    logp, tail = np.log(probs[:, :K]).astype(np.float16), np.log(probs[:, K]).astype(np.float16)
    starts = np.arange(n, dtype=np.int32) * 3
    return TokenDistributions(sample_id, rng.integers(0, 500, size=n).astype(np.int32),
                              np.stack([starts, starts + 2], 1), ids, logp, tail)


def same(a: TokenDistributions, b: TokenDistributions) -> bool:
    return a.sample_id == b.sample_id and all(
        np.array_equal(getattr(a, f), getattr(b, f)) for f in ("token_ids", "offsets", "top_ids", "top_logprobs", "tail_logprob"))


def test_records_round_trip_by_sample_id_not_by_position(tmp_path):
    written = {f"q{i}": dist(f"q{i}", n=3 + i, seed=i) for i in range(6)}
    with TopKStore(tmp_path, **HEAD) as store:
        for sid in ["q3", "q0", "q5", "q1", "q4", "q2"]:
            assert store.append(written[sid])
        assert not store.append(written["q0"])  # already stored: not written twice
    with TopKStore(tmp_path, **HEAD) as store:
        assert store.report.records == 6
        for sid in sorted(written, reverse=True):
            assert same(store.get(sid), written[sid]), sid
        with pytest.raises(TopKStoreError, match="no teacher distributions for sample_id 'q9'"):
            store.get("q9")


def test_size_per_thousand_tokens_is_what_the_format_says(tmp_path):
    assert record_nbytes(1000, 20) == 134_000
    with TopKStore(tmp_path, **HEAD) as store:
        store.append(dist("a", 1000, 0))
    assert (tmp_path / "shard-00000.bin").stat().st_size == record_nbytes(1000, K)


def test_shards_roll_over_and_every_record_stays_readable(tmp_path):
    written = [dist(f"s{i}", 50, i) for i in range(5)]
    with TopKStore(tmp_path, **HEAD, shard_bytes=2 * record_nbytes(50, K)) as store:
        for d in written:
            store.append(d)
    assert len(list(tmp_path.glob("shard-*.bin"))) == 3
    with TopKStore(tmp_path, **HEAD) as store:
        assert all(same(store.get(d.sample_id), d) for d in written)


def test_another_teacher_or_k_is_refused_naming_what_differs(tmp_path):
    with TopKStore(tmp_path, **HEAD):
        pass
    with pytest.raises(TopKStoreError, match="k: stored 4, asked 8"):
        TopKStore(tmp_path, **{**HEAD, "k": 8}).open()
    with pytest.raises(TopKStoreError, match="teacher: stored 'tiny-teacher'"):
        TopKStore(tmp_path, **{**HEAD, "teacher": "other"}).open()


def test_wrong_array_shapes_are_refused(tmp_path):
    d = dist("a", 5, 0)
    bad = TokenDistributions("a", d.token_ids, d.offsets, d.top_ids[:, :2], d.top_logprobs, d.tail_logprob)
    with TopKStore(tmp_path, **HEAD) as store, pytest.raises(TopKStoreError, match="k = 4"):
        store.append(bad)


def test_orphan_bytes_and_a_torn_index_line_from_a_crash_are_cut_off_and_counted(tmp_path):
    with TopKStore(tmp_path, **HEAD) as store:
        store.append(dist("a", 10, 0))
        store.append(dist("b", 10, 1))
    with open(tmp_path / "shard-00000.bin", "ab") as f:  # c's bytes reached the shard, its index line did not
        f.write(dist("c", 10, 2).to_bytes())
    with open(tmp_path / "index.jsonl", "ab") as f:
        f.write(b'{"sample_id": "c", "sha')  # and a torn index line
    with TopKStore(tmp_path, **HEAD) as store:
        assert store.report.orphan_bytes_truncated == record_nbytes(10, K)
        assert store.report.torn_index_truncated_bytes == len(b'{"sample_id": "c", "sha')
        assert "c" not in store and store.append(dist("c", 10, 2))
    with TopKStore(tmp_path, **HEAD) as store:
        assert [same(store.get(s), dist(s, 10, i)) for i, s in enumerate("abc")] == [True] * 3


def test_a_complete_last_index_line_without_its_newline_is_kept(tmp_path):
    with TopKStore(tmp_path, **HEAD) as store:
        store.append(dist("a", 10, 0))
    index = tmp_path / "index.jsonl"
    index.write_bytes(index.read_bytes().rstrip(b"\n"))
    with TopKStore(tmp_path, **HEAD) as store:
        assert store.report.torn_index_repaired == 1 and same(store.get("a"), dist("a", 10, 0))
    assert index.read_bytes().endswith(b"\n")


def test_a_corrupt_middle_line_names_file_and_line(tmp_path):
    with TopKStore(tmp_path, **HEAD) as store:
        store.append(dist("a", 10, 0))
        store.append(dist("b", 10, 1))
    index = tmp_path / "index.jsonl"
    lines = index.read_bytes().split(b"\n")
    index.write_bytes(b"\n".join([b"{not json", *lines[1:]]))
    with pytest.raises(TopKStoreError, match=r"index\.jsonl:1: corrupt index line"):
        TopKStore(tmp_path, **HEAD).open()


def test_damaged_record_bytes_fail_their_crc_naming_the_sample(tmp_path):
    with TopKStore(tmp_path, **HEAD) as store:
        store.append(dist("a", 10, 0))
        store.append(dist("b", 10, 1))
    shard = tmp_path / "shard-00000.bin"
    raw = bytearray(shard.read_bytes())
    raw[record_nbytes(10, K) + 7] ^= 0xFF  # a byte inside b's record
    shard.write_bytes(bytes(raw))
    with TopKStore(tmp_path, **HEAD) as store:
        assert same(store.get("a"), dist("a", 10, 0))
        with pytest.raises(TopKStoreError, match="sample_id 'b' is damaged"):
            store.get("b")


def test_duplicate_index_lines_keep_the_first_and_are_counted(tmp_path):
    with TopKStore(tmp_path, **HEAD) as store:
        store.append(dist("a", 10, 0))
    index = tmp_path / "index.jsonl"
    line = index.read_bytes().splitlines()[0]
    row = json.loads(line)
    index.write_bytes(line + b"\n" + json.dumps({**row, "crc32": 0}).encode() + b"\n")
    with TopKStore(tmp_path, **HEAD) as store:
        assert store.report.duplicate_rows == 1 and same(store.get("a"), dist("a", 10, 0))


def test_one_writer_at_a_time(tmp_path):
    with TopKStore(tmp_path, **HEAD), pytest.raises(TopKStoreError, match="in use by another process"):
        TopKStore(tmp_path, **HEAD).open()


WRITER = """
import sys
sys.path.insert(0, {root!r})
from tests.data.test_topk_store import HEAD, dist
from kpod.data.topk_store import TopKStore
with TopKStore({path!r}, **HEAD, shard_bytes=20000) as store:
    for i in range(100000):
        store.append(dist(f"r{{i}}", 40, i))
"""


def test_every_indexed_record_survives_a_kill_during_writing(tmp_path):
    store_dir = tmp_path / "store"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child = subprocess.Popen([sys.executable, "-c", WRITER.format(root=root, path=str(store_dir))])
    index = store_dir / "index.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not index.exists() or index.read_bytes().count(b"\n") < 20):
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    with TopKStore(store_dir, **HEAD) as store:
        n = store.report.records
        assert n >= 20
        for i in range(n):  # records are appended in order: the first n are all there, intact
            assert same(store.get(f"r{i}"), dist(f"r{i}", 40, i)), i
        assert store.append(dist(f"r{n}", 40, n))  # and writing goes on where it stopped


def test_a_reader_takes_k_from_the_store_takes_no_lock_and_cannot_write(tmp_path):
    with TopKStore(tmp_path, **HEAD) as store:
        store.append(dist("a", 10, 0))
    with open(tmp_path / "index.jsonl", "ab") as f:
        f.write(b'{"sample_id": "b"')  # a writer's crash: left alone by readers
    size = (tmp_path / "index.jsonl").stat().st_size
    with TopKStore.reader(tmp_path) as one, TopKStore.reader(tmp_path) as two:
        assert one.k == K and same(two.get("a"), dist("a", 10, 0)) and "b" not in one
        with pytest.raises(TopKStoreError, match="not open for writing"):
            one.append(dist("c", 10, 2))
        assert (tmp_path / "index.jsonl").stat().st_size == size
        with TopKStore(tmp_path, **HEAD) as writer:  # a reader does not keep a writer out
            writer.append(dist("c", 10, 2))
        assert same(one.get("a"), dist("a", 10, 0))
    with pytest.raises(TopKStoreError, match="no store.json"):
        TopKStore.reader(tmp_path / "missing")
    (tmp_path / "store.json").write_text('{"format": "kpod-topk/1", "k": "4"}')
    with pytest.raises(TopKStoreError, match="not a kpod-topk/1 header"):
        TopKStore.reader(tmp_path)
