"""MC-dropout predictions of a PyTorch module: dropout sampling, everything else in eval mode.

``model.eval()`` switches dropout off and ``model.train()`` also makes BatchNorm normalize
with the batch statistics *and update its running averages* — neither is MC dropout.
:func:`mc_predict` samples with the dropout modules alone in training mode, under
``torch.no_grad()``, and puts every module's ``training`` flag back afterwards, also when the
forward raises; several samples share one forward pass, and the deterministic first modules
of an ``nn.Sequential`` run once (prefix reuse). The statistics and the result type are in
:mod:`regplug.uncertainty`.

Docs: docs/plugins/uncertainty.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from regplug.uncertainty import (
    MCAccumulator,
    MCPrediction,
    check_mc_arguments,
    deterministic_prefix,
    row_batches,
    sample_chunks,
    warn_if_constant,
)
from regplug.validation import check_bool

from . import _compat
from .discovery import DROPOUT_TYPES

__all__ = ["mc_predict", "is_dropout_module"]

_OWNER = "mc_predict"
_log = logging.getLogger(__name__)


def is_dropout_module(module: nn.Module) -> bool:
    """Whether :func:`mc_predict` keeps ``module`` sampling by default.

    The ``nn.Dropout`` family (``Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``,
    ``FeatureAlphaDropout``), and the modules that apply dropout internally only in
    training mode: ``nn.MultiheadAttention`` (attention weights) and ``nn.RNN/LSTM/GRU``
    (between stacked layers), when their ``dropout`` is above 0.

    >>> is_dropout_module(nn.Dropout(0.1)), is_dropout_module(nn.LSTM(2, 2, dropout=0.0))
    (True, False)
    """
    if isinstance(module, DROPOUT_TYPES):
        return True
    if isinstance(module, (nn.MultiheadAttention, nn.RNNBase)):
        return float(module.dropout) > 0.0
    return False


def mc_predict(model: nn.Module, x: Any, *, samples: int = 30, batch_size: int | None = None,
               samples_per_batch: int | None = None, seed: int | None = None,
               level: float = 0.95, interval: str = "quantile", keep_samples: bool = False,
               is_dropout: Callable[[nn.Module], bool] | None = None,
               reuse_prefix: bool = True) -> MCPrediction:
    """Predict ``x`` ``samples`` times with dropout sampling and summarize the predictions.

    :param model: the module; it must return one tensor whose first axis indexes the rows
        of ``x`` (wrap it in a small module to pick one output of several).
    :param x: a tensor or array (``model(x)``), a tuple or list of them (``model(*x)``), or
        a dict (``model(**x)``); all share their first axis (the rows). Moved to the
        model's device; floating NumPy arrays take the model's floating dtype.
    :param samples: T, the number of stochastic forward passes per row (>= 1).
    :param batch_size: rows predicted together (``None``: all of ``x`` at once). With
        ``interval="quantile"`` the samples of one batch are what is held in memory.
    :param samples_per_batch: how many samples one forward pass evaluates, by stacking that
        many copies of the batch; ``None`` stacks as many as fit in
        ``max(batch rows, 1024)`` rows (:data:`regplug.uncertainty.DEFAULT_ROWS_PER_FORWARD`).
        Use 1 for a model whose rows are not independent in eval mode.
    :param seed: ``None`` draws from torch's global RNG (advancing it, as any dropout forward
        does); an integer gives reproducible samples and leaves the global RNG untouched.
    :param level: coverage of the central interval, in (0, 1).
    :param interval: ``"quantile"`` (empirical quantiles of the samples) or ``"normal"``
        (``mean ± z·std``; needs no stored samples, so memory does not grow with T).
    :param keep_samples: also return the ``(T, N, …)`` samples as ``.samples``.
    :param is_dropout: which modules keep sampling (default :func:`is_dropout_module`); add
        your own dropout modules with e.g. ``lambda m: is_dropout_module(m) or
        isinstance(m, MyDropout)``. Every other module runs in eval mode.
    :param reuse_prefix: compute the deterministic leading modules of an ``nn.Sequential``
        once per row block (below); ``False`` runs the whole model for every sample, drawing
        the masks exactly as earlier versions did.
    :returns: an :class:`regplug.uncertainty.MCPrediction` of NumPy float64 arrays.

    A :class:`regplug.RegplugWarning` says when ``samples > 1`` predictions came out all
    identical (no dropout found, rates of 0, or a forward that bypasses the dropout).
    PyTorch's fused inference path of ``nn.MultiheadAttention``/``nn.TransformerEncoderLayer``
    (which skips dropout modules) is switched off while sampling.

    Stacked samples: the input batch is repeated along its first axis (``samples_per_batch``
    copies), and each row gets its own dropout mask, so a stacked pass draws exactly as many
    independent samples as separate passes would. With a ``seed`` the result repeats exactly
    for the same arguments (on the same device and torch version), and the caller's global
    RNG state is left as it was (``torch.random.fork_rng``); a different
    ``samples_per_batch`` or ``batch_size`` draws other masks from the same distribution.

    Prefix reuse: when the model is an ``nn.Sequential`` (nested plain ``Sequential``
    containers are flattened into the chain), its leading modules that are provably
    deterministic while sampling — built-in ``torch.nn`` modules, in eval mode, without
    dropout or ``is_dropout`` modules inside, without forward hooks — run once per row block;
    the rest of the chain runs on stacked copies of their output (within the bound of
    :data:`regplug.uncertainty.DEFAULT_ROWS_PER_FORWARD`). A plain ``nn.Dropout`` of that
    rest, on a float32/float64 CPU tensor, draws its mask as ``torch.rand(…) >= p`` (4×
    faster than ``nn.Dropout``'s Bernoulli kernel) and scales it as ``nn.Dropout`` does: the
    same values for a given mask, the same distribution of masks (to the 2⁻²⁴ resolution of
    ``torch.rand``, that of torch's own float Bernoulli), but other masks for a given seed
    than ``reuse_prefix=False``. Any other model (a custom ``forward``, several inputs,
    global forward hooks, a first module that samples or is not provably deterministic) runs
    whole for every sample; ``MCPrediction.reused`` names the modules computed once, and the
    ``regplug`` logger says at DEBUG level what was split, or why nothing was.

    >>> import torch
    >>> from regplug.adapters.torch import mc_predict
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.ReLU(),
    ...                             torch.nn.Dropout(0.2), torch.nn.Linear(32, 1))
    >>> p = mc_predict(model, torch.linspace(-1, 1, 5).unsqueeze(1), samples=50, seed=0)
    >>> p
    MCPrediction(T=50, shape=(5, 1), level=0.95, interval='quantile')
    >>> bool((p.std > 0).all()), bool((p.lower <= p.mean).all()), model.training
    (True, True, True)
    """
    check_mc_arguments(_OWNER, samples=samples, level=level, interval=interval,
                       batch_size=batch_size, samples_per_batch=samples_per_batch, seed=seed,
                       keep_samples=keep_samples)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{_OWNER}: argument 'model' must be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    if is_dropout is not None and not callable(is_dropout):
        raise TypeError(f"{_OWNER}: argument 'is_dropout' must be a function of a module, "
                        f"got {is_dropout!r}")
    check_bool(_OWNER, "reuse_prefix", reuse_prefix)
    select = is_dropout_module if is_dropout is None else is_dropout
    modules = list(model.modules())
    stochastic = [m for m in modules if select(m)]
    device, dtype = _placement(model)
    inputs = _Inputs(x, device, dtype)
    chain = _split(model, select, inputs) if reuse_prefix else None

    flags = [(m, m.training) for m in modules]
    parts, varies = [], False
    try:
        for m in modules:
            m.training = False
        for m in stochastic:
            m.training = True
        with torch.no_grad(), _mha_fastpath_off(), seeded_torch_rng(seed, device):
            for start, stop in row_batches(inputs.rows, batch_size):
                rows = stop - start
                acc = MCAccumulator(level=level, interval=interval, keep_samples=keep_samples,
                                    capacity=samples)
                chunks = sample_chunks(samples, rows, samples_per_batch)
                if chain is not None and not chain.sample(acc, inputs.args[0][start:stop],
                                                          chunks):
                    chain = None  # the same for every block: the prefix changes the rows
                if chain is None:
                    stacked = inputs.stacked(start, stop, max(chunks))
                    for k in chunks:  # the first k·rows stacked rows are k copies of the batch
                        args = [t[:k * rows] for t in stacked[0]]
                        kwargs = {name: t[:k * rows] for name, t in stacked[1].items()}
                        acc.add(_to_numpy(model(*args, **kwargs), k, rows))
                varies = varies or acc.varies
                parts.append(acc.result())
    finally:
        for m, flag in flags:
            m.training = flag
    warn_if_constant(_OWNER, samples, varies, len(stochastic))
    result = MCPrediction.concatenate(parts)
    return result if chain is None else dataclasses.replace(result, reused=chain.reused)


# -- prefix reuse ---------------------------------------------------------------------------
def _plain_call(module: nn.Module) -> bool:
    """Whether calling ``module`` runs its class's own ``forward`` and nothing else (a hook
    may do anything, so a module with one is never split or computed fewer times)."""
    return ("forward" not in module.__dict__ and not _compat.has_forward_hooks(module)
            and type(module).__call__ is nn.Module.__call__
            and _compat.default_call_impl(module))


def _is_chain(module: nn.Module) -> bool:
    """An ``nn.Sequential`` whose call is ``Sequential.forward``: its children in order."""
    return (isinstance(module, nn.Sequential) and _plain_call(module)
            and type(module).forward is nn.Sequential.forward)


def _flatten(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    steps: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        steps += _flatten(child, f"{path}.") if _is_chain(child) else [(path, child)]
    return steps


def _deterministic(module: nn.Module, select: Callable[[nn.Module], bool]) -> bool:
    """Whether ``module`` computes the same output every time while sampling: every module
    in it is a built-in ``torch.nn`` one (in eval mode), none samples, none has hooks.
    Recurrent and attention modules (tuple outputs) are left to the sampled part."""
    return all(type(m).__module__.startswith("torch.nn.modules.") and _plain_call(m)
               and not select(m) and not isinstance(m, (nn.RNNBase, nn.MultiheadAttention))
               for m in module.modules())


_DROPOUT_FORWARD = nn.Dropout.forward


def _fast_dropout(module: nn.Module) -> bool:
    """A plain ``nn.Dropout`` (its own forward, no hooks) that samples with 0 < p < 1."""
    return (type(module) is nn.Dropout and _plain_call(module)
            and type(module).forward is _DROPOUT_FORWARD and module.training
            and 0.0 < float(module.p) < 1.0)


def _rate(module: nn.Module) -> float:
    """The ``p`` of a module :func:`_fast_dropout` accepted (an ``nn.Dropout``)."""
    return float(cast(nn.Dropout, module).p)


def _dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """``nn.Dropout(p)`` in training mode with the mask drawn as ``torch.rand(…) >= p``.

    Given the mask, the values are bit for bit ``nn.Dropout``'s: it multiplies the input by
    ``mask / (1 - p)``. ``x`` is not written.
    """
    noise = torch.rand(x.shape, dtype=x.dtype, device=x.device)
    return noise.ge_(p).div_(1.0 - p).mul_(x)


@dataclasses.dataclass
class _Chain:
    """A ``Sequential`` split into the prefix computed once and the steps sampled T times."""

    prefix: list[nn.Module]
    suffix: list[nn.Module]
    reused: tuple[str, ...]

    def sample(self, acc: MCAccumulator, x: torch.Tensor, chunks: list[int]) -> bool:
        """Add ``sum(chunks)`` samples of the rows ``x`` to ``acc``; ``False`` (and nothing
        added) when the prefix's output has not one row per input row, so it cannot be
        stacked."""
        h: Any = x
        for module in self.prefix:
            h = module(h)
        rows = int(x.shape[0])
        if not isinstance(h, torch.Tensor) or h.dim() == 0 or h.shape[0] != rows:
            _log.debug("%s: the prefix returned no tensor of %d rows: the whole model runs "
                       "for every sample", _OWNER, rows)
            return False
        if not self.suffix:  # nothing samples: every sample is the prefix's output
            y = _to_numpy(h, 1, rows)
            for k in chunks:
                acc.add(np.broadcast_to(y, (k, *y.shape[1:])))
            return True
        copies = max(chunks)
        stacked = h if copies == 1 else h.repeat(copies, *([1] * (h.dim() - 1)))
        first, *rest = self.suffix
        fresh = _fast_dropout(first) and _fast_input(stacked)
        for k in chunks:  # the first k·rows stacked rows are k copies of the prefix output
            # The stacked copies serve every chunk: the first step gets its own copy unless
            # it is the fast dropout, which never writes its input (an in-place module would).
            z: Any = stacked[:k * rows]
            z = _dropout(z, _rate(first)) if fresh else first(z.clone())
            for module in rest:
                z = (_dropout(z, _rate(module))
                     if _fast_dropout(module) and _fast_input(z) else module(z))
            acc.add(_to_numpy(z, k, rows))
        return True


def _fast_input(x: Any) -> bool:
    # torch.rand's resolution in half precision (2⁻¹¹) would shift p; CUDA's fused dropout
    # kernel is faster than four separate ones.
    return (isinstance(x, torch.Tensor) and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64))


def _split(model: nn.Module, select: Callable[[nn.Module], bool],
           inputs: _Inputs) -> _Chain | None:
    """The split of ``model`` at its first step that is not provably deterministic, or
    ``None`` (logged) when the model is not a chain that may be split."""
    why = ""
    if not _is_chain(model):
        why = f"{type(model).__name__} is not a plain nn.Sequential"
    elif inputs.kwargs or len(inputs.args) != 1:
        why = "an nn.Sequential takes one input"
    elif _compat.global_forward_hooks():
        why = "global forward hooks are registered"
    if why:
        _log.debug("%s: the whole model runs for every sample: %s", _OWNER, why)
        return None
    steps = _flatten(model, "")
    n = deterministic_prefix(steps, lambda step: _deterministic(step[1], select))
    if n == 0:
        _log.debug("%s: the whole model runs for every sample: its first module %r is not "
                   "provably deterministic", _OWNER, steps[0][0] if steps else "")
        return None
    chain = _Chain(prefix=[m for _, m in steps[:n]], suffix=[m for _, m in steps[n:]],
                   reused=tuple(name for name, _ in steps[:n]))
    _log.debug("%s: computed once per row block: %s; sampled: %s", _OWNER,
               ", ".join(f"{name} ({type(m).__name__})" for name, m in steps[:n]) or "nothing",
               ", ".join(f"{name} ({type(m).__name__})" for name, m in steps[n:]) or "nothing")
    return chain


def _placement(model: nn.Module) -> tuple[torch.device, torch.dtype | None]:
    """The model's device, and the dtype of its first floating parameter or buffer."""
    device, dtype = None, None
    for t in (*model.parameters(), *model.buffers()):
        if device is None:
            device = t.device
        if t.is_floating_point():
            dtype = t.dtype
            break
    return device or torch.device("cpu"), dtype


class _Inputs:
    """``x`` as positional and keyword tensors on the model's device, sliced and stacked."""

    def __init__(self, x: Any, device: torch.device, dtype: torch.dtype | None) -> None:
        def tensor(value: Any, where: str) -> torch.Tensor:
            if isinstance(value, torch.Tensor):
                return value.to(device)
            array = np.asarray(value) if not isinstance(value, (str, bytes, Mapping)) else None
            if array is None or array.dtype.kind not in "biuf":
                raise TypeError(f"{_OWNER}: argument 'x' must be a tensor or array, or a "
                                f"tuple, list or dict of them; {where} is "
                                f"{type(value).__name__}")
            t = torch.as_tensor(array, device=device)
            return t.to(dtype) if array.dtype.kind == "f" and dtype is not None else t

        arrays = (torch.Tensor, np.ndarray)
        if isinstance(x, Mapping):
            self.args: list[torch.Tensor] = []
            self.kwargs = {str(k): tensor(v, f"x[{k!r}]") for k, v in x.items()}
        elif isinstance(x, (tuple, list)) and x and all(isinstance(v, arrays) for v in x):
            self.args = [tensor(v, f"x[{i}]") for i, v in enumerate(x)]
            self.kwargs = {}
        else:  # one tensor, array, or nested lists of numbers
            self.args, self.kwargs = [tensor(x, "x")], {}
        leaves = [*self.args, *self.kwargs.values()]
        if not leaves or any(t.dim() == 0 for t in leaves):
            raise ValueError(f"{_OWNER}: argument 'x' must hold tensors with a first (row) "
                             f"axis")
        self.rows = int(leaves[0].shape[0])
        if self.rows == 0 or any(int(t.shape[0]) != self.rows for t in leaves):
            raise ValueError(f"{_OWNER}: the tensors of 'x' must share a first axis of at "
                             f"least one row, got lengths {[int(t.shape[0]) for t in leaves]}")

    def stacked(self, start: int, stop: int,
                copies: int) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        def stack(t: torch.Tensor) -> torch.Tensor:
            t = t[start:stop]
            return t if copies == 1 else t.repeat(copies, *([1] * (t.dim() - 1)))

        return [stack(t) for t in self.args], {k: stack(t) for k, t in self.kwargs.items()}


def _to_numpy(out: Any, copies: int, rows: int) -> np.ndarray:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{_OWNER}: the model must return one tensor, got "
                        f"{type(out).__name__}; wrap it in a module that returns the output "
                        f"to summarize")
    if out.dim() == 0 or out.shape[0] != copies * rows:
        raise ValueError(f"{_OWNER}: the model's output must have one row per input row: "
                         f"{copies * rows} rows in, output shape {tuple(out.shape)}")
    out = out.detach().reshape(copies, rows, *out.shape[1:])
    if out.dtype not in (torch.float16, torch.float32, torch.float64):
        out = out.float()  # bfloat16 has no NumPy dtype; integer outputs are averaged as reals
    array: np.ndarray = out.cpu().numpy()
    return array


@contextlib.contextmanager
def _mha_fastpath_off() -> Iterator[None]:
    """Keep MultiheadAttention/TransformerEncoderLayer off their fused eval-mode kernels,
    which skip the dropout modules."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


@contextlib.contextmanager
def seeded_torch_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the CPU generator and that of ``device`` (``None``: do nothing); both are
    restored on exit."""
    if seed is None:
        yield
        return
    accelerator = device.type not in ("cpu", "meta")
    module = getattr(torch, device.type) if accelerator else None
    index = None
    if module is not None:
        index = device.index if device.index is not None else module.current_device()
    with torch.random.fork_rng(devices=[] if index is None else [index],
                               device_type=device.type if accelerator else None):
        torch.default_generator.manual_seed(seed)
        if module is not None:
            on_device = getattr(module, "device", None)
            with on_device(index) if on_device is not None else contextlib.nullcontext():
                module.manual_seed(seed)
        yield
