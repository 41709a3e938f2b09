"""The candidates answer encoded from columns is byte for byte the dicts' orjson encoding."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from candgen.serve.encode import answer_json, candidate_dicts, candidates_json
from candgen.serve.protocol import CandidatesResult

HEAD = {"user_id": "u1", "model_version": "m1", "variant": "default"}
TAIL = {"degraded": ["social"], "cache": "miss", "took_ms": 1.25}


def reference(res: CandidatesResult, head: dict, tail: dict, explain: bool = False) -> bytes:
    return orjson.dumps({**head, "candidates": candidate_dicts(res, explain), **tail})


def result(ids: list[str], scores: list[float], groups: list[list[str]], index: list[int], *,
           with_groups: bool) -> CandidatesResult:
    sources = [groups[i] for i in index]
    return CandidatesResult(item_ids=ids, scores=np.asarray(scores, np.float32), sources=sources,
                            source_groups=(groups, np.asarray(index)) if with_groups else None)


@pytest.mark.parametrize("with_groups", [True, False])
def test_answer_matches_the_dicts_encoding(with_groups: bool) -> None:
    rng = np.random.default_rng(3)
    groups = [["collaborative"], ["content", "trending"], ["social"], ["collaborative", "content", "new_items"]]
    n = 500
    index = rng.integers(0, len(groups), n).tolist()
    ids = [f"item-{i}" for i in rng.permutation(10_000)[:n]]
    res = result(ids, sorted(rng.random(n).tolist(), reverse=True), groups, index, with_groups=with_groups)
    out = answer_json(HEAD, res, TAIL)
    assert out == reference(res, HEAD, TAIL)
    body = orjson.loads(out)
    assert [c["item_id"] for c in body["candidates"]] == ids
    assert [c["sources"] for c in body["candidates"]] == [groups[i] for i in index]


@pytest.mark.parametrize("with_groups", [True, False])
def test_ids_that_need_escaping_are_cut_exactly(with_groups: bool) -> None:
    # quotes, backslashes, the separator itself, unicode, control characters, a one-character id
    ids = ['a","b', "c\\", '"', "\\\"", "ü€😀", "tab\tnl\n", "x", '","', "\\", "e"]
    groups = [["collaborative"], ['we"ird],[', "so\\urce"]]
    index = [i % 2 for i in range(len(ids))]
    res = result(ids, [1.0 - i / 10 for i in range(len(ids))], groups, index, with_groups=with_groups)
    out = answer_json(HEAD, res, TAIL)
    assert out == reference(res, HEAD, TAIL)
    assert [c["item_id"] for c in orjson.loads(out)["candidates"]] == ids


def test_scores_are_rounded_and_non_finite_scores_encode_like_orjson() -> None:
    res = result(["a", "b", "c"], [0.123456789, math.nan, -2.5], [["trending"]], [0, 0, 0], with_groups=True)
    out = answer_json(HEAD, res, TAIL)
    assert out == reference(res, HEAD, TAIL)
    assert [c["score"] for c in orjson.loads(out)["candidates"]] == [0.123457, None, -2.5]


@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("with_groups", [True, False])
def test_empty_and_single_answers(n: int, with_groups: bool) -> None:
    res = result(["only"][:n], [0.5][:n], [["content"]] if n else [], [0][:n], with_groups=with_groups)
    assert answer_json(HEAD, res, TAIL) == reference(res, HEAD, TAIL)
    assert candidates_json(res) == orjson.dumps(candidate_dicts(res, False))


def test_empty_head_or_tail() -> None:
    res = result(["a", "b"], [0.9, 0.8], [["content"]], [0, 0], with_groups=True)
    for head, tail in (({}, TAIL), (HEAD, {}), ({}, {})):
        assert answer_json(head, res, tail) == reference(res, head, tail)
        assert orjson.loads(answer_json(head, res, tail))["candidates"][1]["item_id"] == "b"


def test_explained_answers_carry_each_candidates_explain_map() -> None:
    res = result(["a", "b"], [0.9, 0.8], [["content"], ["trending"]], [0, 1], with_groups=True)
    res.explain = {"a": {"content": 0.7}}
    out = orjson.loads(answer_json(HEAD, res, TAIL, explain=True))
    assert [c["explain"] for c in out["candidates"]] == [{"content": 0.7}, {}]
    assert out["cache"] == "miss" and out["user_id"] == "u1"


@pytest.mark.parametrize("index", [[0, 1], [0], [0, -1], [0, 0, 0]])
def test_source_groups_that_do_not_fit_are_refused(index: list[int]) -> None:
    with pytest.raises(ValueError, match="source_groups"):
        CandidatesResult(item_ids=["a", "b"], scores=[0.9, 0.8], sources=[["content"], ["content"]],
                         source_groups=([["content"]], np.asarray(index)))
