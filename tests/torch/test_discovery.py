"""regplug.adapters.torch.discovery: parameter handles and their kinds, tied parameters
(whatever order their modules were registered in), parameters left out of the optimizer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regplug.adapters.torch import attach, discover_parameters
from regplug.plugins import L2

VOCAB, DIM = 7, 4


class TiedLM(nn.Module):
    """An embedding tied to the output layer (``head.weight = emb.weight``), with a hidden
    Linear in between; ``head_first`` registers the output layer before the embedding."""

    def __init__(self, head_first: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        if head_first:
            self.head = nn.Linear(DIM, VOCAB, bias=False)
            self.emb = nn.Embedding(VOCAB, DIM)
        else:
            self.emb = nn.Embedding(VOCAB, DIM)
            self.head = nn.Linear(DIM, VOCAB, bias=False)
        self.hidden = nn.Linear(DIM, DIM)
        with torch.no_grad():  # the same numbers in both orders
            gen = torch.Generator().manual_seed(1)
            self.emb.weight.copy_(torch.randn(VOCAB, DIM, generator=gen))
            self.hidden.weight.copy_(torch.randn(DIM, DIM, generator=gen))
            self.hidden.bias.copy_(torch.randn(DIM, generator=gen))
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(self.emb(ids))))


ORDERS = pytest.mark.parametrize("head_first", [False, True], ids=["embedding_first",
                                                                    "head_first"])


def _by_name(handles):  # type: ignore[no-untyped-def]
    return {h.name: h for h in handles}


@ORDERS
def test_a_tied_embedding_and_output_matrix_is_one_handle_of_kind_embedding(head_first):
    model = TiedLM(head_first)
    assert model.head.weight is model.emb.weight
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    handles = discover_parameters(model, optimizer)
    tied = [h for h in handles if h.tensor is model.emb.weight]
    assert len(tied) == 1
    (handle,) = tied
    assert handle.kind == "embedding"
    assert handle.layer_type == "Embedding"
    assert handle.unit_axis == 0 and handle.shape == (VOCAB, DIM)
    # named after its first registration
    assert handle.name == ("head.weight" if head_first else "emb.weight")
    assert len(handles) == len({id(h.tensor) for h in handles}) == 3
    kinds = {h.name: h.kind for h in handles if h.tensor is not model.emb.weight}
    assert kinds == {"hidden.weight": "weight", "hidden.bias": "bias"}


def _one_step(head_first: bool, plugins: list[object], fused: bool = True) -> TiedLM:
    model = TiedLM(head_first)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.tensor([[0, 3, 5], [6, 2, 1]])
    targets = torch.tensor([[3, 5, 6], [2, 1, 0]])
    with attach(model, optimizer, plugins, fused=fused) as reg:
        optimizer.zero_grad()
        logits = model(ids)
        loss = reg.loss(nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)))
        loss.backward()
        optimizer.step()
    return model


@ORDERS
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "autograd"])
def test_l2_default_selection_leaves_a_tied_embedding_alone_in_either_order(head_first, fused):
    plain = _one_step(head_first, [])
    penalized = _one_step(head_first, [L2(0.5)], fused=fused)
    # the tied matrix gets no penalty gradient: the same update as without L2
    torch.testing.assert_close(penalized.emb.weight, plain.emb.weight, rtol=0, atol=0)
    assert penalized.head.weight is penalized.emb.weight
    # ... while L2 does act on the (untied) weights it selects, and not on the bias
    assert not torch.allclose(penalized.hidden.weight, plain.hidden.weight)
    torch.testing.assert_close(penalized.hidden.bias, plain.hidden.bias)


def test_parameters_frozen_out_of_the_optimizer_are_not_handed_out():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    handles = discover_parameters(model, optimizer)
    assert [h.name for h in handles] == ["2.weight", "2.bias"]
    assert [h.kind for h in handles] == ["weight", "bias"]


def test_parameters_of_another_optimizer_are_not_handed_out_but_a_union_can_be():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    first = torch.optim.SGD(model[0].parameters(), lr=0.1)
    second = torch.optim.Adam(model[1].parameters(), lr=0.1)
    assert [h.name for h in discover_parameters(model, first)] == ["0.weight", "0.bias"]
    assert [h.name for h in discover_parameters(model, second)] == ["1.weight", "1.bias"]
    union = [p for opt in (first, second) for g in opt.param_groups for p in g["params"]]
    assert [h.name for h in discover_parameters(model, union)] == [
        "0.weight", "0.bias", "1.weight", "1.bias"]


def test_param_groups_of_one_optimizer_are_all_handed_out():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    optimizer = torch.optim.SGD([{"params": model[0].parameters()},
                                 {"params": [model[1].weight], "lr": 0.01}], lr=0.1)
    assert [h.name for h in discover_parameters(model, optimizer)] == [
        "0.weight", "0.bias", "1.weight"]


def test_kinds_and_unit_axes_come_from_module_types():
    model = nn.Sequential(nn.Embedding(5, 3), nn.LayerNorm(3), nn.Linear(3, 4),
                          nn.BatchNorm1d(4), nn.ConvTranspose1d(4, 2, 3))
    handles = _by_name(discover_parameters(model, model.parameters()))
    assert {n: h.kind for n, h in handles.items()} == {
        "0.weight": "embedding", "1.weight": "normalization", "1.bias": "normalization",
        "2.weight": "weight", "2.bias": "bias", "3.weight": "normalization",
        "3.bias": "normalization", "4.weight": "weight", "4.bias": "bias"}
    assert handles["0.weight"].unit_axis == 0
    assert handles["2.weight"].unit_axis == 0
    assert handles["4.weight"].unit_axis == 1  # (in, out, k): output units on axis 1
    assert handles["2.bias"].unit_axis is None


def test_names_are_those_of_the_module_inside_a_compile_wrapper():
    model = nn.Sequential(nn.Linear(3, 4))
    compiled = torch.compile(model)  # lazy: nothing compiles until it is called
    assert [h.name for h in discover_parameters(compiled, model.parameters())] == [
        "0.weight", "0.bias"]
