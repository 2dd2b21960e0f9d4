"""LoRA adapters are their own parameter kind: a hand-written LoRA layer and, where installed,
PEFT's; weight decay on the adapters and on the base can differ."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from regplug import RegplugWarning
from regplug.adapters.torch import attach, discover_parameters
from regplug.plugins import L2, DecoupledWeightDecay


class LoRALinear(nn.Module):
    """A frozen base Linear plus a trainable low-rank update B·A (B starts at zero)."""

    def __init__(self, d_in: int, d_out: int, rank: int = 2) -> None:
        super().__init__()
        self.base = nn.Linear(d_in, d_out)
        self.base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.randn(rank, d_in) * 0.1)
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + x @ self.lora_A.T @ self.lora_B.T


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 4)
        self.emb.lora_embedding_A = nn.Parameter(torch.randn(2, 10) * 0.1)  # PEFT's names
        self.emb.lora_embedding_B = nn.Parameter(torch.randn(4, 2) * 0.1)
        self.block = LoRALinear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.emb.lora_embedding_A, self.emb.lora_embedding_B
        e = self.emb(x) + (b @ a).T[x]  # the embedding's low-rank update, PEFT's layout
        return self.head(torch.relu(self.block(e.mean(1))))


def _kinds(model: nn.Module) -> dict[str, str]:
    return {p.name: p.kind for p in discover_parameters(model, model.parameters())}


def test_lora_matrices_are_kind_lora_whatever_the_layer():
    kinds = _kinds(Net())
    assert kinds == {
        "emb.weight": "embedding", "emb.lora_embedding_A": "lora",
        "emb.lora_embedding_B": "lora", "block.base.weight": "weight",
        "block.base.bias": "bias", "block.lora_A": "lora", "block.lora_B": "lora",
        "head.weight": "weight", "head.bias": "bias"}


def test_default_kinds_leave_adapters_alone_and_kinds_lora_decays_only_them():
    def train(plugin: object) -> dict[str, torch.Tensor]:
        model = Net()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        reg = attach(model, opt, [plugin])
        for _ in range(3):
            opt.zero_grad()
            reg.loss(0.0 * model(torch.zeros(2, 3, dtype=torch.long)).sum()).backward()
            opt.step()
        reg.close()
        return {n: p.detach() - before[n] for n, p in model.named_parameters()}

    with pytest.warns(RegplugWarning, match=r"^DecoupledWeightDecay: the model has 4 LoRA "
                      r"adapter parameters .* leave out; pass kinds=\('weight', 'lora'\)"):
        default = train(DecoupledWeightDecay(0.5))
    adapters = train(DecoupledWeightDecay(0.5, kinds="lora"))
    lora = {"emb.lora_embedding_A", "emb.lora_embedding_B", "block.lora_A", "block.lora_B"}
    # lora_B starts at zero: decay leaves it there
    moved = {n for n, d in adapters.items() if d.abs().max() > 0}
    assert moved == lora - {"block.lora_B"}
    assert {n for n, d in default.items() if d.abs().max() > 0} == {"head.weight"}
    # the frozen base is left alone in every case
    assert all(d.abs().max() == 0 for n, d in adapters.items() if n.startswith("block.base"))


def test_kinds_lora_is_accepted_and_a_typo_names_it():
    assert L2(kinds=["weight", "lora"]).selection.kinds == ("weight", "lora")
    with pytest.raises(ValueError, match="'lora' for LoRA adapter matrices"):
        L2(kinds="loras")


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed")
def test_peft_lora_adapters_are_kind_lora():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = nn.Sequential()
    base.add_module("q_proj", nn.Linear(4, 4))
    base.add_module("head", nn.Linear(4, 2))
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    handles = discover_parameters(model, [p for p in model.parameters() if p.requires_grad])
    kinds = {h.name: h.kind for h in handles}
    assert kinds and set(kinds.values()) == {"lora"}
    assert any("lora_A" in n for n in kinds) and any("lora_B" in n for n in kinds)
    everything = discover_parameters(model, model.parameters())
    assert {h.kind for h in everything if "base_layer" in h.name} == {"weight", "bias"}
