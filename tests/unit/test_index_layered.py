"""LayeredIndex: a never-written base plus an exact delta for writes made while serving."""

import numpy as np
import pytest

from candgen.errors import CandgenError
from candgen.index.flat import FlatIndex
from candgen.index.ivf import IVFIndex
from candgen.index.layered import LayeredIndex


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(params=["flat", "ivf"])
def layered(request):
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(500, 8)))
    base = FlatIndex(dim=8) if request.param == "flat" else IVFIndex(dim=8, nlist=8, nprobe=8)
    base.add(x, np.arange(500, dtype=np.int64))
    return LayeredIndex(base), x


def test_an_added_item_is_found_and_the_base_is_never_written(layered):
    idx, x = layered
    before = len(idx.base)
    q = unit(np.ones((1, 8)))
    idx.add(q, np.array([1000]))
    res = idx.search(q, 5)
    assert res.ids[0, 0] == 1000 and len(idx.base) == before and len(idx) == before + 1
    assert np.allclose(idx.reconstruct(np.array([1000, 3])), np.vstack([q, x[3:4]]), atol=1e-5)


def test_replacing_and_removing_base_items_hides_their_old_vectors(layered):
    idx, x = layered
    far = unit(-x[7:8])
    idx.add(far, np.array([7]))  # item 7 moves far away from where it was
    res = idx.search(x[7:8], 10)
    assert 7 not in res.ids[0]
    assert idx.search(far, 1).ids[0, 0] == 7
    idx.remove(np.array([3, 7]))
    res = idx.search(np.vstack([x[3:4], far]), 20)
    assert 3 not in res.ids and 7 not in res.ids and len(idx) == 498


def test_exclude_k_and_ordering(layered):
    idx, x = layered
    idx.add(unit(x[:2] + 0.01), np.array([900, 901]))
    res = idx.search(x[:2], 4, exclude=[{0, 900}, None])
    assert 0 not in res.ids[0] and 900 not in res.ids[0]
    assert np.all(np.diff(res.scores, axis=1) <= 1e-6)
    assert res.ids.shape == (2, 4)


def test_params_go_to_the_base_and_saving_is_refused(layered, tmp_path):
    idx, _ = layered
    assert idx.params == idx.base.params
    with pytest.raises(CandgenError, match="not saved"):
        idx.save(tmp_path / "x")
