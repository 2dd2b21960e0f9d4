"""What regplug relies on in torch's non-public API (regplug.adapters.torch._compat), one test
per entry, proved on the installed torch; and that nothing else in the adapter uses such API.

A torch release that changes one of these fails here, by name, rather than inside a training
run.
"""

from __future__ import annotations

import ast
import io
import re
import threading
import tokenize
from pathlib import Path

import torch
from torch import nn

import regplug.adapters.torch
from regplug.adapters.torch import _compat

SHAPES = [(3,), (2, 5), (4, 1, 3), ()]


def _tensors(seed: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for shape in SHAPES]


def _clones(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.clone() for t in tensors]


def _assert_equal(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def _assert_in_place(tensors: list[torch.Tensor], before: list[int]) -> None:
    assert [t.data_ptr() for t in tensors] == before


# -- set_grad_enabled -----------------------------------------------------------------------
def test_set_grad_enabled_false_turns_autograd_off_like_no_grad_and_true_turns_it_back_on():
    x = torch.ones(3, requires_grad=True)
    assert torch.is_grad_enabled()
    with torch.no_grad():
        reference = (x * 2).requires_grad
    try:
        _compat.set_grad_enabled(False)
        assert not torch.is_grad_enabled()
        y = x * 2
        assert y.requires_grad is reference is False
        assert y.grad_fn is None
    finally:
        _compat.set_grad_enabled(True)
    assert torch.is_grad_enabled()
    z = x * 2
    assert z.requires_grad and z.grad_fn is not None


def test_set_grad_enabled_is_thread_local_like_no_grad():
    seen: list[bool] = []
    try:
        _compat.set_grad_enabled(False)
        thread = threading.Thread(target=lambda: seen.append(torch.is_grad_enabled()))
        thread.start()
        thread.join()
        assert not torch.is_grad_enabled()
    finally:
        _compat.set_grad_enabled(True)
    assert seen == [True]  # another thread's autograd switch is untouched


# -- the foreach kernels --------------------------------------------------------------------
def test_foreach_add__adds_each_pair_in_place_with_a_float_alpha():
    a, b = _tensors(0), _tensors(1)
    want = [x + 0.25 * y for x, y in zip(a, b)]
    ptrs = [t.data_ptr() for t in a]
    _compat.foreach_add_(a, b, alpha=0.25)
    _assert_equal(a, want)
    _assert_in_place(a, ptrs)


def test_foreach_add__without_alpha_adds_each_pair_in_place():
    a, b = _tensors(0), _tensors(1)
    want = [x + y for x, y in zip(a, b)]
    ptrs = [t.data_ptr() for t in a]
    _compat.foreach_add_(a, b)
    _assert_equal(a, want)
    _assert_in_place(a, ptrs)


def test_foreach_mul_returns_new_tensors_scaled_by_a_tensor_scalar_without_touching_inputs():
    # TorchOps._foreach_add_scaled_ multiplies by a 0-d tensor strength that stays on device.
    a = _tensors(2)
    original = _clones(a)
    alpha = torch.tensor(0.3)
    out = _compat.foreach_mul(a, alpha)
    _assert_equal(out, [t * alpha for t in original])
    _assert_equal(a, original)
    assert all(o.data_ptr() != t.data_ptr() for o, t in zip(out, a) if t.numel())


def test_foreach_mul_with_a_float_returns_new_tensors():
    a = _tensors(3)
    out = _compat.foreach_mul(a, 1.5)
    _assert_equal(out, [t * 1.5 for t in a])


def test_foreach_mul__scales_in_place_by_a_float_and_by_a_tensor_scalar():
    a = _tensors(4)
    want = [t * 0.9 for t in a]
    ptrs = [t.data_ptr() for t in a]
    _compat.foreach_mul_(a, 0.9)
    _assert_equal(a, want)
    _assert_in_place(a, ptrs)
    factor = torch.tensor(0.5)
    want = [t * factor for t in a]
    _compat.foreach_mul_(a, factor)
    _assert_equal(a, want)
    _assert_in_place(a, ptrs)


def test_foreach_sign_returns_new_tensors_of_signs():
    a = _tensors(5)
    a[0][0] = 0.0  # sign(0) == 0
    original = _clones(a)
    out = _compat.foreach_sign(a)
    _assert_equal(out, [torch.sign(t) for t in original])
    _assert_equal(a, original)
    assert out[0][0] == 0


def test_foreach_clamp_max_returns_new_tensors_clamped_from_above():
    a = _tensors(6)
    original = _clones(a)
    out = _compat.foreach_clamp_max(a, 0.2)
    _assert_equal(out, [torch.clamp(t, max=0.2) for t in original])
    _assert_equal(a, original)


def test_foreach_clamp_min__clamps_from_below_in_place():
    a = _tensors(7)
    want = [torch.clamp(t, min=-0.2) for t in a]
    ptrs = [t.data_ptr() for t in a]
    _compat.foreach_clamp_min_(a, -0.2)
    _assert_equal(a, want)
    _assert_in_place(a, ptrs)


def test_foreach_sub__subtracts_each_pair_in_place():
    a, b = _tensors(8), _tensors(9)
    want = [x - y for x, y in zip(a, b)]
    ptrs = [t.data_ptr() for t in a]
    _compat.foreach_sub_(a, b)
    _assert_equal(a, want)
    _assert_in_place(a, ptrs)


def test_foreach_kernels_compose_into_the_soft_threshold_of_ops():
    # TorchOps.soft_threshold_: θ − clamp(θ, −t, t) == sign(θ)·max(|θ|−t, 0), exact zeros.
    a = _tensors(10, torch.float64)
    want = [torch.sign(t) * torch.clamp(t.abs() - 0.5, min=0) for t in a]
    inside = _compat.foreach_clamp_max(a, 0.5)
    _compat.foreach_clamp_min_(inside, -0.5)
    _compat.foreach_sub_(a, inside)
    _assert_equal(a, want)


# -- compiled_original ----------------------------------------------------------------------
def test_compiled_original_of_a_torch_compile_wrapper_is_the_users_module():
    module = nn.Linear(3, 2)
    compiled = torch.compile(module)  # lazy: nothing is compiled until it is called
    assert compiled is not module
    assert _compat.compiled_original(compiled) is module
    # the names regplug reports are the original's
    assert ([n for n, _ in module.named_parameters()]
            == [n for n, _ in _compat.compiled_original(compiled).named_parameters()])


def test_compiled_original_of_a_plain_module_is_none():
    assert _compat.compiled_original(nn.Linear(3, 2)) is None
    assert _compat.compiled_original(nn.Sequential(nn.Linear(3, 2), nn.ReLU())) is None


def test_compiled_original_ignores_an_orig_mod_attribute_that_is_not_a_module():
    module = nn.Linear(3, 2)
    module._orig_mod = "not a module"  # type: ignore[assignment]
    assert _compat.compiled_original(module) is None


# -- has_forward_hooks / global_forward_hooks -----------------------------------------------
def test_has_forward_hooks_sees_each_kind_of_forward_hook_until_its_handle_removes_it():
    module = nn.Linear(3, 2)
    assert not _compat.has_forward_hooks(module)
    registrations = [
        lambda: module.register_forward_hook(lambda m, i, o: o + 1),
        lambda: module.register_forward_hook(lambda m, a, k, o: o, with_kwargs=True),
        lambda: module.register_forward_hook(lambda m, i, o: o, always_call=True),
        lambda: module.register_forward_pre_hook(lambda m, i: None),
        lambda: module.register_forward_pre_hook(lambda m, a, k: None, with_kwargs=True),
    ]
    for register in registrations:
        handle = register()
        assert _compat.has_forward_hooks(module)
        handle.remove()
        assert not _compat.has_forward_hooks(module)
    module.register_full_backward_hook(lambda m, gi, go: None)  # not a forward hook
    assert not _compat.has_forward_hooks(module)


def test_a_forward_hook_changes_the_output_which_is_why_hooked_modules_are_not_reused():
    module = nn.Linear(3, 2)
    x = torch.ones(1, 3)
    handle = module.register_forward_hook(lambda m, i, o: o + 1)
    try:
        torch.testing.assert_close(module(x), module.forward(x) + 1)
    finally:
        handle.remove()


def test_global_forward_hooks_sees_hooks_registered_for_every_module_until_removed():
    from torch.nn.modules.module import (
        register_module_forward_hook,
        register_module_forward_pre_hook,
    )

    assert not _compat.global_forward_hooks()
    calls: list[str] = []
    for register in (register_module_forward_hook, register_module_forward_pre_hook):
        handle = register(lambda m, *args: calls.append(type(m).__name__))
        try:
            assert _compat.global_forward_hooks()
            nn.ReLU()(torch.ones(2))  # runs on a module it was never given
        finally:
            handle.remove()
        assert not _compat.global_forward_hooks()
    assert calls == ["ReLU", "ReLU"]


# -- default_call_impl ----------------------------------------------------------------------
class _OwnForward(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


class _OwnCallImpl(nn.Linear):
    def _call_impl(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return super()._call_impl(*args, **kwargs) + 1


def test_default_call_impl_holds_for_built_in_modules_and_subclasses_overriding_forward():
    assert _compat.default_call_impl(nn.Linear(3, 2))
    assert _compat.default_call_impl(nn.Sequential(nn.ReLU()))
    assert _compat.default_call_impl(_OwnForward(3, 2))


def test_default_call_impl_is_false_when_a_subclass_overrides_call_impl_and_changes_the_call():
    module = _OwnCallImpl(3, 2)
    assert not _compat.default_call_impl(module)
    assert type(module).__call__ is nn.Module.__call__  # __call__ alone does not tell ...
    x = torch.ones(1, 3)
    torch.testing.assert_close(module(x), module.forward(x) + 1)  # ... yet the call differs


# -- no private API elsewhere ---------------------------------------------------------------
#: Uses of non-public torch API (``torch.__version__`` and other dunders are public).
#: Private attributes of nn.Module and of torch.nn.modules.module are named as such, as code,
#: as strings (``getattr(m, "_forward_hooks")``) or imported names.
PRIVATE_TORCH = [r"torch\._(?!_)", r"\._orig_mod\b", r"\b_NormBase\b", r"\b_BatchNorm\b",
                 r"torch\._C\b", r"\b_(?:global_)?(?:forward|backward)(?:_pre)?_hooks\b",
                 r"\b_call_impl\b", r"\b_wrapped_call_impl\b"]


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """The file's lines with comments and docstrings (prose, doctest output) blanked out:
    a docstring may name ``torch._foreach_*``; code may not."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            for i in range(node.lineno - 1, node.end_lineno or node.lineno):
                lines[i] = ""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            lines[row - 1] = lines[row - 1][:col]
    return list(enumerate(lines, 1))


def _adapter_sources() -> list[Path]:
    files = sorted({f for folder in regplug.adapters.torch.__path__
                    for f in Path(folder).glob("*.py")})
    assert any(f.name == "_compat.py" for f in files), files
    return [f for f in files if f.name != "_compat.py"]


def test_the_scan_for_private_torch_api_sees_code_but_not_prose(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""Uses ``torch._foreach_add_``."""\n'
                      "import torch  # torch._C\n"
                      "version = torch.__version__\n"
                      "kernel = torch._foreach_mul\n"
                      "def _has_forward_hooks(m):  # m._forward_hooks\n"
                      "    return bool(getattr(m, '_forward_hooks', None))\n"
                      "hooks = module_module._global_forward_pre_hooks\n"
                      "own = type(m)._call_impl is nn.Module._call_impl\n", encoding="utf-8")
    pattern = re.compile("|".join(PRIVATE_TORCH))
    assert [n for n, line in _code_lines(sample) if pattern.search(line)] == [4, 6, 7, 8]


def test_the_scan_for_private_torch_api_catches_the_global_hook_dicts():
    # The lines mc_predict's prefix reuse had before they moved to _compat.
    sample = ["    return bool(getattr(module_module, \"_global_forward_hooks\", None)",
              "                or getattr(module_module, \"_global_forward_pre_hooks\", None))",
              "    return bool(getattr(module, \"_forward_hooks\", None)",
              "            and type(module)._call_impl is nn.Module._call_impl)"]
    pattern = re.compile("|".join(PRIVATE_TORCH))
    assert all(pattern.search(line) for line in sample)


def test_adapter_modules_other_than_compat_use_no_private_torch_api():
    sources = _adapter_sources()
    assert len(sources) >= 5, sources
    pattern = re.compile("|".join(PRIVATE_TORCH))
    offences = [f"{path}:{number}: {line.strip()}"
                for path in sources
                for number, line in _code_lines(path)
                if pattern.search(line)]
    assert not offences, "private torch API outside _compat.py:\n" + "\n".join(offences)
