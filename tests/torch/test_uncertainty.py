"""MC dropout for PyTorch modules: regplug.adapters.torch.mc_predict."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from regplug import RegplugWarning  # noqa: E402
from regplug.adapters.torch import is_dropout_module, mc_predict  # noqa: E402
from regplug.adapters.torch import uncertainty as torch_uncertainty  # noqa: E402


def bn_dropout_mlp(p: float = 0.3, seed: int = 0) -> nn.Module:
    """Linear → BatchNorm → ReLU → Dropout → Linear, with BN statistics away from their
    initial values (a few training-mode passes)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(p),
                          nn.Linear(32, 2))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(64, 4) * 2 + 1)
    return model


def inputs(n: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))


def test_samples_differ_with_dropout_active():
    p = mc_predict(bn_dropout_mlp(), inputs(), samples=20, seed=0, keep_samples=True)
    assert p.samples.shape == (20, 10, 2)
    assert len({s.tobytes() for s in p.samples}) == 20
    assert (p.std > 0).all()


def test_batchnorm_running_statistics_are_not_updated():
    model = bn_dropout_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mc_predict(model, inputs(), samples=50)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name  # bit-exact, num_batches_tracked too


def test_batchnorm_normalizes_with_running_statistics_not_batch_statistics():
    # One row: in training mode BatchNorm1d refuses a batch of one; in eval mode it is fine,
    # and the T=1 prediction with dropout off is exactly the eval-mode prediction.
    model = bn_dropout_mlp(p=0.0)
    x = inputs(1)
    p = mc_predict(model, x, samples=1)
    with torch.no_grad():
        plain = model.eval()(x)
    np.testing.assert_array_equal(p.mean, plain.numpy().astype(np.float64))


@pytest.mark.parametrize("dropout", [0.0, None])
def test_one_sample_with_dropout_off_equals_the_plain_prediction(dropout):
    torch.manual_seed(3)
    layers = [nn.Linear(4, 16), nn.BatchNorm1d(16), nn.Tanh()]
    layers += [] if dropout is None else [nn.Dropout(dropout)]
    model = nn.Sequential(*layers, nn.Linear(16, 1))
    x = inputs(12)
    p = mc_predict(model, x, samples=1)
    with torch.no_grad():
        plain = model.eval()(x).numpy()
    np.testing.assert_array_equal(p.mean, plain.astype(np.float64))
    np.testing.assert_array_equal(p.lower, p.mean)
    np.testing.assert_array_equal(p.std, 0.0)


def test_same_seed_repeats_exactly_and_another_seed_differs():
    model, x = bn_dropout_mlp(), inputs()
    a = mc_predict(model, x, samples=8, seed=7, keep_samples=True)
    b = mc_predict(model, x, samples=8, seed=7, keep_samples=True)
    c = mc_predict(model, x, samples=8, seed=8, keep_samples=True)
    np.testing.assert_array_equal(a.samples, b.samples)
    np.testing.assert_array_equal(a.upper, b.upper)
    assert not np.array_equal(a.samples, c.samples)


def test_a_seed_leaves_the_global_rng_untouched_and_no_seed_draws_from_it():
    model, x = bn_dropout_mlp(), inputs()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    mc_predict(model, x, samples=4, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(5)
    a = mc_predict(model, x, samples=4, keep_samples=True)
    assert not torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(5)
    b = mc_predict(model, x, samples=4, keep_samples=True)
    np.testing.assert_array_equal(a.samples, b.samples)  # seed=None follows torch.manual_seed


def test_training_flags_are_restored_exactly():
    model = bn_dropout_mlp()
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a model in training mode
    flags = [m.training for m in model.modules()]
    mc_predict(model, inputs(), samples=3)
    assert [m.training for m in model.modules()] == flags
    model.eval()
    mc_predict(model, inputs(), samples=3)
    assert not any(m.training for m in model.modules())


def test_training_flags_are_restored_when_the_forward_raises():
    model = bn_dropout_mlp().train()
    with pytest.raises(RuntimeError):
        mc_predict(model, torch.zeros(5, 7), samples=3)  # wrong width
    assert all(m.training for m in model.modules())


def test_stacked_samples_draw_the_same_distribution_as_one_sample_per_pass():
    model, x = bn_dropout_mlp(p=0.5), inputs(2)
    stacked = mc_predict(model, x, samples=2000, seed=0, samples_per_batch=500,
                         interval="normal")
    single = mc_predict(model, x, samples=400, seed=1, samples_per_batch=1,
                        interval="normal")
    # Means agree within 5 standard errors; standard deviations within 15 %.
    se = np.sqrt(stacked.std ** 2 / 2000 + single.std ** 2 / 400)
    assert (np.abs(stacked.mean - single.mean) < 5 * se).all()
    np.testing.assert_allclose(stacked.std, single.std, rtol=0.15)
    again = mc_predict(model, x, samples=2000, seed=0, samples_per_batch=500,
                       interval="normal")
    np.testing.assert_array_equal(stacked.mean, again.mean)


def test_batches_of_rows_give_the_same_rows_in_order():
    model, x = bn_dropout_mlp(p=0.0), inputs(10)
    whole = mc_predict(model, x, samples=1)
    parts = mc_predict(model, x, samples=1, batch_size=4)
    np.testing.assert_allclose(parts.mean, whole.mean, rtol=1e-6, atol=1e-7)
    sampled = mc_predict(bn_dropout_mlp(), x, samples=3, batch_size=4, keep_samples=True)
    assert sampled.samples.shape == (3, 10, 2) and sampled.shape == (10, 2)


def test_streaming_and_quantile_modes_see_the_same_samples():
    model, x = bn_dropout_mlp(), inputs()
    q = mc_predict(model, x, samples=30, seed=4, keep_samples=True)
    n = mc_predict(model, x, samples=30, seed=4, interval="normal", level=0.9)
    np.testing.assert_allclose(n.mean, q.mean, rtol=1e-12)
    np.testing.assert_allclose(n.std, q.std, rtol=1e-9)
    np.testing.assert_allclose(n.upper, n.mean + 1.6448536269514722 * n.std, rtol=1e-12)
    np.testing.assert_array_equal(q.mean, q.samples.astype(np.float64).mean(axis=0))
    assert n.samples is None and (n.interval, n.level) == ("normal", 0.9)


def test_uncertainty_is_larger_far_from_the_training_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 64),
                          nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 1))
    x = torch.linspace(-1, 1, 128).unsqueeze(1)
    y = torch.sin(3 * x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    # A ReLU network extrapolates linearly, and so does the spread its dropout masks give.
    far = torch.tensor([[-10.0], [10.0]])
    near = torch.linspace(-1, 1, 9).unsqueeze(1)
    p = mc_predict(model, torch.cat([far, near]), samples=200, seed=0)
    # (One side may extrapolate flat, where every ReLU path is dead: compare the average.)
    assert p.std[:2].mean() > 3 * p.std[2:].max()
    width = p.upper - p.lower
    assert width[:2].mean() > 3 * width[2:].max()


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.drop = nn.Linear(3, 2), nn.Linear(5, 2), nn.Dropout(0.5)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return self.drop(self.a(left) + self.b(right))


def test_tuple_dict_and_numpy_inputs():
    torch.manual_seed(0)
    model = TwoInputs()
    left, right = torch.randn(6, 3), torch.randn(6, 5)
    by_position = mc_predict(model, (left, right), samples=5, seed=2)
    by_name = mc_predict(model, {"left": left, "right": right}, samples=5, seed=2)
    from_numpy = mc_predict(model, (left.double().numpy(), right.double().numpy()), samples=5,
                            seed=2)  # float64 arrays take the model's float32
    assert by_position.shape == (6, 2)
    np.testing.assert_array_equal(by_position.mean, by_name.mean)
    np.testing.assert_array_equal(by_position.mean, from_numpy.mean)


def test_a_model_without_dropout_warns_that_samples_are_identical():
    model = nn.Sequential(nn.Linear(4, 1))
    with pytest.warns(RegplugWarning, match=r"mc_predict: all 5 samples are identical.*no dropout"):
        p = mc_predict(model, inputs(), samples=5)
    np.testing.assert_array_equal(p.std, 0.0)


class FunctionalDropout(nn.Module):
    """Dropout written with the functional API: found only through ``is_dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(x, 0.5, training=self.training)


def test_is_dropout_chooses_which_modules_sample():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), FunctionalDropout(), nn.Linear(8, 1))
    with pytest.warns(RegplugWarning, match="no dropout module"):
        mc_predict(model, inputs(), samples=4)
    p = mc_predict(model, inputs(), samples=4,
                   is_dropout=lambda m: is_dropout_module(m) or isinstance(m, FunctionalDropout))
    assert (p.std > 0).any()
    assert model.training  # left as it was


def test_transformer_fast_path_is_off_while_sampling_and_restored_after():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.2,
                                       batch_first=True).eval()
    x = torch.randn(3, 5, 8)
    p = mc_predict(layer, x, samples=6, seed=0, keep_samples=True)
    assert len({s.tobytes() for s in p.samples}) == 6  # the fused eval kernel would skip dropout
    assert torch.backends.mha.get_fastpath_enabled()


def test_recurrent_and_attention_dropout_sample_by_default():
    assert is_dropout_module(nn.LSTM(2, 3, num_layers=2, dropout=0.3))
    assert is_dropout_module(nn.MultiheadAttention(4, 2, dropout=0.1))
    assert not is_dropout_module(nn.MultiheadAttention(4, 2))
    assert not is_dropout_module(nn.BatchNorm1d(3))


class Pair(nn.Module):
    def __init__(self, reduce: bool = False) -> None:
        super().__init__()
        self.lin, self.drop, self.reduce = nn.Linear(4, 1), nn.Dropout(0.1), reduce

    def forward(self, x: torch.Tensor):
        y = self.drop(self.lin(x))
        return y.mean(dim=0) if self.reduce else (y, y)


def test_outputs_must_be_one_tensor_with_a_row_per_input_row():
    with pytest.raises(TypeError, match="mc_predict: the model must return one tensor, got tuple"):
        mc_predict(Pair(), inputs(), samples=2)
    with pytest.raises(ValueError, match="one row per input row"):
        mc_predict(Pair(reduce=True), inputs(), samples=2)


def test_bad_arguments_name_the_function_and_argument():
    model = bn_dropout_mlp()
    with pytest.raises(ValueError, match="mc_predict: argument 'samples' must be an integer >= 1"):
        mc_predict(model, inputs(), samples=0)
    with pytest.raises(ValueError, match=r"mc_predict: argument 'level' .* in \(0, 1\)"):
        mc_predict(model, inputs(), level=1.5)
    with pytest.raises(TypeError, match="mc_predict: argument 'model' must be a torch.nn.Module"):
        mc_predict(lambda x: x, inputs())
    with pytest.raises(TypeError, match="mc_predict: argument 'x' must be a tensor or array"):
        mc_predict(model, "not data")
    with pytest.raises(ValueError, match="mc_predict: the tensors of 'x' must share a first axis"):
        mc_predict(TwoInputs(), (torch.zeros(2, 3), torch.zeros(3, 5)))


# -- prefix reuse ------------------------------------------------------------------------------
def first_dropout_mlp(p: float = 0.5, seed: int = 0, d: int = 6) -> nn.Sequential:
    """Linear → ReLU → Dropout → Linear → Tanh → Dropout → Linear: split after the ReLU."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, 8), nn.Tanh(),
                         nn.Dropout(p / 2), nn.Linear(8, 2))


def reference_samples(model: nn.Sequential, x: torch.Tensor, samples: int, seed: int
                      ) -> np.ndarray:
    """The documented reuse path written out by hand, one sample per pass: the prefix once,
    then per sample each dropout's mask drawn as ``torch.rand(shape) >= p``, in chain order,
    from a generator seeded with ``seed``, and applied as ``x * (mask / (1 - p))``."""
    layers = list(model)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        h = layers[1](layers[0](x))
        out = []
        for _ in range(samples):
            z = h
            for layer in layers[2:]:
                if isinstance(layer, nn.Dropout):
                    mask = (torch.rand(z.shape) >= layer.p).to(z.dtype)
                    z = z * (mask / (1.0 - layer.p))
                else:
                    z = layer(z)
            out.append(z.numpy())
    return np.stack(out)


def test_the_deterministic_prefix_is_reused_and_named():
    model, x = first_dropout_mlp(), torch.randn(10, 6)
    p = mc_predict(model, x, samples=4, seed=0)
    assert p.reused == ("0", "1")  # Linear, ReLU; sampling starts at the Dropout
    assert mc_predict(model, x, samples=4, seed=0, reuse_prefix=False).reused == ()
    nested = nn.Sequential(nn.Sequential(model[0], model[1]), nn.Sequential(*model[2:]))
    q = mc_predict(nested, x, samples=4, seed=0, keep_samples=True)
    assert q.reused == ("0.0", "0.1")  # plain Sequential containers are flattened
    np.testing.assert_array_equal(q.samples, mc_predict(model, x, samples=4, seed=0,
                                                        keep_samples=True).samples)
    bn = mc_predict(bn_dropout_mlp(), inputs(), samples=3)
    assert bn.reused == ("0", "1", "2")  # Linear, BatchNorm (eval mode), ReLU


def test_reuse_draws_exactly_the_documented_masks():
    model, x = first_dropout_mlp(p=0.4), torch.randn(7, 6)
    p = mc_predict(model, x, samples=6, seed=11, samples_per_batch=1, keep_samples=True)
    expected = reference_samples(model, x, 6, seed=11)
    np.testing.assert_array_equal(p.samples, expected)
    # Without the prefix's ReLU, or with a dropout skipped, the samples would differ:
    assert len({s.tobytes() for s in p.samples}) == 6
    # Several samples per pass draw one mask for all their stacked rows, chunk by chunk.
    stacked = mc_predict(model, x, samples=6, seed=11, samples_per_batch=3, keep_samples=True)
    assert not np.array_equal(stacked.samples, p.samples)
    np.testing.assert_allclose(stacked.mean, expected.mean(axis=0), atol=1.0)  # same scale


def test_rate_zero_gives_the_deterministic_forward_for_every_sample():
    model, x = first_dropout_mlp(p=0.0), torch.randn(12, 6)
    with pytest.warns(RegplugWarning, match="all 5 samples are identical"):
        p = mc_predict(model, x, samples=5, samples_per_batch=1, keep_samples=True)
    assert p.reused == ("0", "1")
    with torch.no_grad():
        plain = model.eval()(x).numpy()
    for sample in p.samples:
        np.testing.assert_array_equal(sample, plain)


def test_reuse_agrees_with_the_naive_loop_in_mean_and_spread():
    # Tanh after the dropout makes the MC mean differ from the eval-mode output, so a dropped
    # prefix, a skipped dropout or a wrong rescaling all move mean or std out of the bounds.
    model = first_dropout_mlp(p=0.5, seed=4)
    x = 3 * torch.randn(3, 6, generator=torch.Generator().manual_seed(5))  # Tanh saturates
    t = 4000
    p = mc_predict(model, x, samples=t, seed=0, interval="normal")
    model.train()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        naive = torch.stack([model(x) for _ in range(t)]).double().numpy()
    se = np.sqrt(p.std ** 2 / t + naive.std(axis=0) ** 2 / t)
    assert (np.abs(p.mean - naive.mean(axis=0)) < 5 * se).all()
    np.testing.assert_allclose(p.std, naive.std(axis=0), rtol=0.08)
    with torch.no_grad():
        deterministic = model.eval()(x).double().numpy()
    assert np.abs(p.mean - deterministic).max() > 10 * se.max()  # dropout really sampled
    assert (p.std > 0.05).all()


def test_the_prefix_runs_once_per_row_block_and_stacks_within_the_row_bound(monkeypatch):
    model, x = first_dropout_mlp(), torch.randn(10, 6)
    calls: list[tuple[int, int]] = []
    forward = nn.Linear.forward

    def counted(self, z):  # a class-level patch: the modules stay built-in and hook-free
        calls.append((self.in_features, int(z.shape[0])))
        return forward(self, z)

    monkeypatch.setattr(nn.Linear, "forward", counted)
    p = mc_predict(model, x, samples=500, batch_size=4, seed=0)
    assert p.shape == (10, 2) and p.reused == ("0", "1")
    first = [rows for width, rows in calls if width == 6]
    assert first == [4, 4, 2]  # the prefix: once per row block, on the block's rows
    later = [rows for width, rows in calls if width == 16]
    assert max(later) <= 1024 and sum(later) == 500 * 10  # stacked copies, at most 1024 rows


@pytest.mark.parametrize("case", ["custom forward", "hook", "global hook", "first samples",
                                  "subclass forward"])
def test_models_that_cannot_be_split_give_the_same_numbers_as_before(case):
    model: nn.Module = first_dropout_mlp(p=0.3)
    x, handle = torch.randn(9, 6), None
    if case == "custom forward":
        model = Residual(model)
    elif case == "hook":
        handle = model[0].register_forward_hook(lambda m, i, o: o + torch.rand_like(o))
    elif case == "global hook":
        handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    elif case == "first samples":
        model = nn.Sequential(nn.Dropout(0.2), *model)
    elif case == "subclass forward":
        model = ChainTwice(*model[:3], nn.Linear(16, 16))
    try:
        new = mc_predict(model, x, samples=5, seed=3, keep_samples=True)
        old = mc_predict(model, x, samples=5, seed=3, keep_samples=True, reuse_prefix=False)
    finally:
        if handle is not None:
            handle.remove()
    assert new.reused == ()
    np.testing.assert_array_equal(new.samples, old.samples)


def test_an_in_place_first_sampled_module_does_not_corrupt_the_shared_prefix():
    # AlphaDropout(inplace=True) writes its input: each sample must get a fresh copy of the
    # prefix's output, so the samples equal those of the whole-model path (same masks).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.SELU(), nn.AlphaDropout(0.3, inplace=True),
                          nn.Linear(8, 1))
    x = torch.randn(5, 6)
    new = mc_predict(model, x, samples=6, seed=1, samples_per_batch=1, keep_samples=True)
    old = mc_predict(model, x, samples=6, seed=1, samples_per_batch=1, keep_samples=True,
                     reuse_prefix=False)
    assert new.reused == ("0", "1")
    np.testing.assert_array_equal(new.samples, old.samples)


class Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body, self.skip = body, nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class ChainTwice(nn.Sequential):
    """A Sequential with its own forward: not a plain chain."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x) + super().forward(x)


def test_reuse_prefix_must_be_a_bool():
    with pytest.raises(TypeError, match="argument 'reuse_prefix' must be True or False"):
        mc_predict(first_dropout_mlp(), torch.randn(2, 6), reuse_prefix="yes")


def test_module_docstring_examples_run():
    result = doctest.testmod(torch_uncertainty, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
