"""The candidates answer (DESIGN §4) encoded straight to JSON bytes from the result's columns.

An answer holds ~1000 candidates. Building a dict per candidate and handing the list to orjson costs ~0.2 ms
per answer (the dicts alone ~0.12 ms); validating 1000 pydantic models would cost more than the engine
call. Here each column is encoded by orjson in one call (item ids, scores) and cut into its elements, each
distinct source list (`CandidatesResult.source_groups`, which the engine fills) is encoded once together
with the JSON around it, and one `bytes.join` interleaves them: ~15% less time than the dicts
(benchmarks/answer_path.py), no 1000 dicts for the garbage collector to count, and byte for byte the
same output (tests/unit/test_serve_encode.py). Results without `source_groups` take the dicts.

Cutting an encoded column is exact: orjson writes `["a","b"]` and escapes every `"` inside a string as
`\\"`, so `","` occurs only between two elements (inside a string, a `"` is always preceded by `\\`); floats
never contain a comma.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from candgen.serve.protocol import CandidatesResult

SCORE_DECIMALS = 6
_OPEN = b'{"item_id":"'
_SCORE = b'","score":'


def rounded_scores(scores: np.ndarray | list[float]) -> list[float]:
    """The scores as the answer shows them: Python floats rounded to `SCORE_DECIMALS` decimals."""
    out: list[float] = np.round(np.asarray(scores, dtype=np.float64), SCORE_DECIMALS).tolist()
    return out


def _candidate_parts(res: CandidatesResult, before: bytes, after: bytes) -> list[bytes]:
    """Pieces whose concatenation is `before + <the candidates array> + after` (n >= 1 candidates)."""
    n = len(res.item_ids)
    ids = orjson.dumps(res.item_ids)[2:-2].split(b'","')
    scores = orjson.dumps(rounded_scores(res.scores))[1:-1].split(b",")
    assert res.source_groups is not None
    groups, index = res.source_groups[0], np.asarray(res.source_groups[1], dtype=np.intp)
    # each group's piece closes its candidate and opens the next one; the last candidate's closes the array
    encoded = [b',"sources":' + orjson.dumps(g) + b"}" for g in groups]
    tails = np.array([e + b"," + _OPEN for e in encoded] + [b""], dtype=object)[:-1]
    parts: list[bytes] = [_SCORE] * (4 * n + 1)
    parts[0] = before + b"[" + _OPEN
    parts[1::4] = ids
    parts[3::4] = scores
    parts[4::4] = tails.take(index).tolist()
    parts[-1] = encoded[int(index[-1])] + b"]" + after
    return parts


def candidates_json(res: CandidatesResult) -> bytes:
    """The `candidates` array of an answer without explanations: `[{"item_id", "score", "sources"}, ...]`."""
    if len(res.item_ids) == 0:
        return b"[]"
    if res.source_groups is None:
        return orjson.dumps(candidate_dicts(res, False))
    return b"".join(_candidate_parts(res, b"", b""))


def candidate_dicts(res: CandidatesResult, explain: bool) -> list[dict[str, Any]]:
    """The candidates as plain dicts (the slow, general path: used for explained answers)."""
    scores = rounded_scores(res.scores)
    if explain:
        ex = res.explain or {}
        return [{"item_id": i, "score": sc, "sources": src, "explain": ex.get(i, {})}
                for i, sc, src in zip(res.item_ids, scores, res.sources, strict=True)]
    return [{"item_id": i, "score": sc, "sources": src}
            for i, sc, src in zip(res.item_ids, scores, res.sources, strict=True)]


def answer_json(head: dict[str, Any], res: CandidatesResult, tail: dict[str, Any], *, explain: bool = False) -> bytes:
    """`{**head, "candidates": [...], **tail}` as JSON bytes, keys in that order.

    `head` and `tail` hold the answer's other fields (small; encoded by orjson). With `explain` the
    candidates carry their `explain` maps and are encoded through dicts; so are results without
    `source_groups` (grouping the lists here would cost more than the dicts save)."""
    if explain or res.source_groups is None:
        return orjson.dumps({**head, "candidates": candidate_dicts(res, explain), **tail})
    h = orjson.dumps(head)
    t = orjson.dumps(tail)
    before = h[:-1] + (b',"candidates":' if len(h) > 2 else b'"candidates":')
    after = (b"," if len(t) > 2 else b"") + t[1:]
    if len(res.item_ids) == 0:
        return before + b"[]" + after
    return b"".join(_candidate_parts(res, before, after))
