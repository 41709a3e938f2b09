"""The towers' training path (one bag sum per table) against the per-feature reference path: same outputs and
gradients; the fused tables export under the per-feature names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_world import planted_world

from candgen.model.bags import Bags, history_bags, id_bags
from candgen.model.features import FeatureSpace, history_len_bucket
from candgen.model.towers import EXPORT_TABLES, TwoTower, bag_sum


def _reference_bag_sum(weight: torch.Tensor, bags: Bags) -> torch.Tensor:
    rows = [(weight[torch.from_numpy(bags.idx[a:b])] * torch.from_numpy(bags.weight[a:b])[:, None]).sum(0)
            for a, b in zip(bags.ptr[:-1], bags.ptr[1:], strict=True)]
    return torch.stack(rows)


@pytest.mark.parametrize("sparse", [False, True])
def test_bag_sum_matches_a_gather_and_sum(sparse):
    torch.manual_seed(0)
    w = torch.randn(6, 3, requires_grad=True)
    bags = Bags.from_padded(np.array([[1, 4, 4], [-1, -1, -1], [5, 0, -1]]),
                            np.array([[0.5, 2.0, 1.0], [1, 1, 1], [1.5, -1.0, 1.0]]))
    got = bag_sum(w, bags, sparse=sparse)
    ref_w = w.detach().clone().requires_grad_()
    ref = _reference_bag_sum(ref_w, bags)
    torch.testing.assert_close(got, ref)
    g = torch.randn(3, 3)
    (grad,) = torch.autograd.grad(got, w, g)
    ref.backward(g)
    assert grad.is_sparse == sparse
    torch.testing.assert_close(grad.to_dense() if sparse else grad, ref_w.grad)
    if sparse:  # only the rows the bags touch, sorted and summed
        assert grad.is_coalesced() and grad._indices().tolist() == [[0, 1, 4, 5]]


def test_bag_sum_of_empty_bags_is_zero_with_zero_gradient():
    w = torch.randn(4, 2, requires_grad=True)
    bags = Bags.from_padded(np.full((3, 2), -1))
    out = bag_sum(w, bags)
    assert out.shape == (3, 2) and not out.any()
    out.sum().backward()
    assert w.grad is not None and not w.grad.any()


@pytest.fixture(scope="module")
def world():
    return planted_world()


def _trained_a_little(space: FeatureSpace) -> TwoTower:
    """A model whose every row differs from its initial value (the zero rows excepted)."""
    torch.manual_seed(3)
    model = TwoTower(space, 8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        keep_zero = [start for name, (start, _) in model.tables.layout.spans.items() if name not in ("age",
                                                                                                  "history_len")]
        model.tables.feats[keep_zero] = 0.0
        model.tables.ids[0] = 0.0
    return model


def test_encode_matches_the_reference_towers_with_gradients(world):
    space = FeatureSpace.from_dataset(world, id_buckets=1000, history_len=4)
    model = _trained_a_little(space)
    layout = model.tables.layout
    codes = space.encode_catalog(world)
    rng = np.random.default_rng(0)
    # items: some with their id dropped, various ages; users: attributes, interests, hours, short histories
    items = np.array([0, 5, 5, 30, 99])
    ids = codes.id_bucket[items] * np.array([1, 1, 0, 1, 1])
    age = np.array([1, 2, 2, 0, 8])
    users = np.array([0, 40, 119])
    attrs = space.encode_user_attributes(world, users)
    interests = space.encode_user_interests(world, users)
    hour = np.array([0, 3, 24])
    device = np.array([0, 2, 0])
    hist = rng.integers(0, world.n_items, (3, 4))
    hw = np.array([[0.4, 0.3, 0.2, 0.1], [1.0, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    hist_ids = codes.id_bucket[hist] * (hw > 0)
    hv = torch.randn(3, 8)
    hlen = history_len_bucket((hw > 0).sum(1))
    t = torch.from_numpy

    ref_model = _trained_a_little(space)
    v_ref = ref_model.item(t(ids), t(codes.tags[items].astype(np.int64)), t(codes.category[items].astype(np.int64)),
                           t(codes.creator[items].astype(np.int64)), t(age))
    u_ref = ref_model.user(t(attrs.astype(np.int64)), t(interests.astype(np.int64)), t(device), t(hour),
                           t(hlen.astype(np.int64)), t(hist_ids), hv, t(hw))
    id_rows = Bags.concat([id_bags(ids), history_bags(np.where(hist_ids > 0, hist_ids, -1), hw)])
    feats = Bags.concat([
        layout.item_bags(codes.tags[items], codes.category[items], codes.creator[items], age),
        layout.user_bags(attrs, interests, device, hour, hlen),
    ])
    u, v = model.encode(id_rows, feats, len(items), hv)
    torch.testing.assert_close(v, v_ref)
    torch.testing.assert_close(u, u_ref)
    g_u, g_v = torch.randn_like(u), torch.randn_like(v)
    ((u * g_u).sum() + (v * g_v).sum()).backward()
    ((u_ref * g_u).sum() + (v_ref * g_v).sum()).backward()
    grads = dict(model.named_parameters())
    for name, p in ref_model.named_parameters():
        assert p.grad is not None and grads[name].grad is not None, name
        torch.testing.assert_close(grads[name].grad, p.grad, msg=name)
    assert model.tables.ids.grad is not None and model.tables.ids.grad[0].abs().sum() == 0  # unknown id: no gradient


def test_export_weights_names_every_table_and_layer(world):
    space = FeatureSpace.from_dataset(world, id_buckets=1000, history_len=4)
    model = TwoTower(space, 8)
    w = model.export_weights()
    assert set(EXPORT_TABLES) <= set(w)
    assert {"item.mlp.fc1.weight", "user.mlp.fc2.bias", "user.history_bank_proj.weight",
            "user.history_id_proj.weight"} <= set(w)
    assert not any(k.startswith("tables.") for k in w)
    assert w["item.id_emb.weight"].shape == (space.id_buckets, 8)
    assert w["item.tag_emb.weight"].shape == (len(space.tags) + 1, 8)
    for key, name in EXPORT_TABLES.items():
        if name not in ("age", "history_len"):  # padded tables: row 0 (unknown) is zero
            assert not w[key][0].any(), key
    assert not w["user.device_emb.weight"].any()  # devices start neutral
    w["item.tag_emb.weight"][1] = 99.0  # copies, not views of the parameters
    assert model.tables.table("tag")[1, 0].item() != 99.0
    np.testing.assert_array_equal(model.tables.table("hour").detach().numpy(), w["user.hour_emb.weight"])


def test_reference_item_tower_mean_of_tags_ignores_padding(world):
    space = FeatureSpace.from_dataset(world, id_buckets=1000, history_len=4)
    model = TwoTower(space, 8)
    tags = torch.tensor([[1, 2, 0]])
    x = model.item.mlp  # the head is shared: compare the pre-head sums through a zeroed MLP
    with torch.no_grad():
        for p in x.parameters():
            p.zero_()
        got = model.item(torch.tensor([0]), tags, torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
        tag_t = model.tables.table("tag")
        expect = F.normalize((tag_t[1] + tag_t[2]) / 2 + model.tables.table("age")[0], dim=-1)
    torch.testing.assert_close(got[0], expect)


def test_fused_head_matches_autograd_including_a_zero_vector():
    """The hand-written head (residual MLP + L2 normalisation) of `fused.py` against autograd, with one row whose
    MLP output is exactly zero (the normalisation's clamp is active there and its radial term must vanish)."""
    from candgen.model.fused import _head_backward, _head_forward
    from candgen.model.towers import ResidualMLP

    torch.manual_seed(0)
    mlp = ResidualMLP(4, 8)
    with torch.no_grad():
        mlp.fc1.bias.zero_()
        mlp.fc2.bias.zero_()
    x = torch.randn(5, 4)
    x[2] = 0.0  # y = x + fc2(relu(fc1 x)) = 0
    g = torch.randn(5, 4)
    with torch.no_grad():
        h, norm, out = _head_forward(x, mlp)
        g_x, grads = _head_backward(g, x, h, norm, out, mlp)
    xr = x.clone().requires_grad_()
    ref = F.normalize(mlp(xr), dim=-1)
    torch.testing.assert_close(out, ref.detach())
    ref.backward(g)
    torch.testing.assert_close(g_x, xr.grad)
    for got, p in zip(grads, (mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias), strict=True):
        torch.testing.assert_close(got, p.grad)
    assert norm[2].item() == pytest.approx(1e-12) and g_x[2].abs().sum() > 0
