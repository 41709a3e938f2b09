import numpy as np
import pytest

from candgen.blend.normalize import NORMALIZATIONS, normalize, normalize_lists, ranks
from candgen.types import Candidates


def test_rank_is_reciprocal_rank_scaled_to_one():
    out = normalize(np.array([9.0, 5.0, 1.0]), "rank", c=60.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [1.0, 60 / 61, 60 / 62], rtol=1e-6)


def test_rank_ignores_scale_but_follows_order_even_unsorted():
    a = normalize(np.array([0.3, 0.9, 0.1]), "rank")
    b = normalize(np.array([300.0, 9000.0, 1.0]), "rank")
    np.testing.assert_array_equal(a, b)
    assert a[1] == 1.0 and a[0] > a[2]
    np.testing.assert_array_equal(ranks(np.array([0.3, 0.9, 0.1])), [1, 0, 2])


def test_percentile_minmax_zscore_none():
    s = np.array([4.0, 3.0, 2.0, 1.0])
    np.testing.assert_allclose(normalize(s, "percentile"), [1.0, 0.75, 0.5, 0.25])
    np.testing.assert_allclose(normalize(s, "minmax"), [1.0, 2 / 3, 1 / 3, 0.0], rtol=1e-6)
    z = normalize(s, "zscore")
    assert abs(float(z.mean())) < 1e-6 and abs(float(z.std()) - 1.0) < 1e-5
    np.testing.assert_array_equal(normalize(s, "none"), s.astype(np.float32))


def test_constant_and_empty_scores():
    const = np.full(3, 7.0)
    np.testing.assert_array_equal(normalize(const, "minmax"), [1, 1, 1])
    np.testing.assert_array_equal(normalize(const, "zscore"), [0, 0, 0])
    for method in NORMALIZATIONS:
        assert len(normalize(np.empty(0), method)) == 0


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown score normalisation 'softmax'"):
        normalize(np.ones(2), "softmax")


def test_normalize_lists_keeps_ids_and_source():
    out = normalize_lists([Candidates(np.array([5, 3]), np.array([2.0, 1.0], np.float32), "trending")], "percentile")
    assert out[0].source == "trending" and out[0].ids.tolist() == [5, 3]
    np.testing.assert_allclose(out[0].scores, [1.0, 0.5])
