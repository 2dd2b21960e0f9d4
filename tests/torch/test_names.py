"""Parameter names plugins see in PyTorch: ``named_parameters()``'s, the framework-neutral
form (:func:`regplug.conventions.param_name`) that Keras models get too."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from regplug.adapters.torch import attach  # noqa: E402
from regplug.adapters.torch.discovery import discover_parameters  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# The ShrinkHead example of the README or of the docs pages, wherever it is now.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def readme_shrink_head() -> type:
    """The docs' ``ShrinkHead`` example (README.md or docs/), run as written."""
    page, block = next((page, b) for page in PAGES
                       for b in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
                       if "class ShrinkHead" in b)
    namespace: dict[str, Any] = {}
    exec(compile(block, f"{page}:ShrinkHead", "exec"), namespace)
    return namespace["ShrinkHead"]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 4), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x: Any) -> Any:
        return self.head(self.body(x))


def test_the_readme_shrink_head_example_changes_exactly_the_heads_weights():
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with attach(model, optimizer, [readme_shrink_head()(0.5)]) as reg:
        for _ in range(2):
            optimizer.zero_grad()
            reg.loss(0.0 * model(torch.ones(4, 8)).sum()).backward()  # no gradient signal
            optimizer.step()
    after = dict(model.named_parameters())
    torch.testing.assert_close(after["head.weight"].detach(), before["head.weight"] * 0.25)
    for name in ("body.0.weight", "body.0.bias", "head.bias"):
        torch.testing.assert_close(after[name].detach(), before[name])


def test_names_are_named_parameters_and_the_native_name_is_the_same():
    model = Net()
    handles = discover_parameters(model, model.parameters())
    assert [h.name for h in handles] == [n for n, _ in model.named_parameters()]
    assert all(h.native_name == h.name for h in handles)
    assert [h.name for h in handles] == ["body.0.weight", "body.0.bias", "head.weight",
                                         "head.bias"]


def test_a_sequential_model_nested_in_another_is_named_by_its_position():
    model = nn.Sequential(nn.Sequential(nn.Linear(3, 4)), nn.Linear(4, 1))
    assert [h.name for h in discover_parameters(model, model.parameters())] == [
        "0.0.weight", "0.0.bias", "1.weight", "1.bias"]
