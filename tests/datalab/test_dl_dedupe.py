"""Exact and near-duplicate detection."""

from __future__ import annotations

import random

import numpy as np
from datasketch import MinHash, MinHashLSH

from datalab.dedupe import ClusterLog, MinHasher, NearDuplicateIndex, dedupe_text, exact_key
from datalab.formats import ChatRecord, parse_record


def _rec(user: str, answer: str) -> ChatRecord:
    _, rec, _ = parse_record(
        {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]},
        1,
    )
    assert rec is not None
    return rec


def test_exact_key_ignores_case_and_spacing_but_not_roles() -> None:
    a = dedupe_text(_rec("Hello  World", "Fine,\nthanks."))
    b = dedupe_text(_rec("hello world", "fine, thanks."))
    assert exact_key(a) == exact_key(b)
    assert exact_key(a) != exact_key(dedupe_text(_rec("Fine, thanks.", "Hello World")))


def test_signatures_equal_datasketch_minhash_on_the_same_shingles() -> None:
    hasher = MinHasher(num_perm=64, shingle_words=3, seed=1)
    texts = [b"user: hello world how are you assistant: fine thanks", b"a b", b"", b"one"]
    sigs = hasher.signatures(texts)
    hashes, owner = hasher.shingle_hashes(texts)
    for i in range(len(texts)):
        m = MinHash(num_perm=64, seed=1, hashfunc=int)
        m.update_batch([int(h) for h in hashes[owner == i]])
        assert np.array_equal(m.hashvalues, sigs[i])
    # 9 words make 7 three-word shingles; 2 words make 1; no words make none.
    assert np.sum(owner == 0) == 7 and np.sum(owner == 1) == 1 and np.sum(owner == 2) == 0


def test_signatures_do_not_depend_on_batch_composition() -> None:
    hasher = MinHasher(num_perm=32)
    texts = [f"text number {i} with some words {i * 3}".encode() for i in range(50)]
    together = hasher.signatures(texts)
    alone = np.vstack([hasher.signatures([t]) for t in texts])
    assert np.array_equal(together, alone)


def test_band_layout_comes_from_datasketch() -> None:
    index = NearDuplicateIndex(threshold=0.85, num_perm=64)
    ref = MinHashLSH(threshold=0.85, num_perm=64)
    assert (index.bands, index.rows) == (ref.b, ref.r)


def _words(rng: random.Random, n: int) -> list[str]:
    return [f"w{rng.randrange(5000)}" for _ in range(n)]


def test_near_duplicates_are_found_and_the_first_is_kept() -> None:
    rng = random.Random(0)
    base = _words(rng, 120)
    edited = list(base)
    edited[60] = "changed"  # one word in 120: Jaccard of 3-word shingles ≈ 0.95
    other = _words(rng, 120)
    texts = [" ".join(t).encode() for t in (base, other, edited, base[:40])]
    hasher, index = MinHasher(64), NearDuplicateIndex(0.85, 64)
    assert index.add_batch([10, 20, 30, 40], hasher.signatures(texts)) == [None, None, 10, None]
    # Later batches see earlier ones.
    assert index.add_batch([50], hasher.signatures([texts[2]])) == [10]
    assert len(index) == 5


def test_short_texts_that_differ_are_not_near_duplicates() -> None:
    hasher, index = MinHasher(64), NearDuplicateIndex(0.85, 64)
    texts = [b"what is 2 + 2 ? 4", b"what is 2 + 3 ? 5", b"what is 2 + 2 ? 4"]
    assert index.add_batch([1, 2, 3], hasher.signatures(texts)) == [None, None, 1]


def test_cluster_log_orders_by_size() -> None:
    log = ClusterLog()
    log.add(1, 5, "exact")
    log.add(2, 6, "near")
    log.add(2, 7, "exact")
    top = log.top()
    assert [(c.kept_line, c.duplicate_lines, c.kind, c.size) for c in top] == [
        (2, [6, 7], "mixed", 3),
        (1, [5], "exact", 2),
    ]
