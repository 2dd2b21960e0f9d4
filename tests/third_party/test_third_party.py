"""A plugin from another distribution, installed as its users would install it.

tox installs ``examples/regplug-group-lasso`` (entry point ``group_lasso`` in group
``regplug``) next to the regplug wheel; a development environment gets it with
``pip install -e examples/regplug-group-lasso``. These tests prove that it is listed with
its distribution and hooks, usable by name from configs and from ``regplug compare
--config``, trains in a PyTorch loop and in Keras ``fit`` with the weights of the
hand-written penalty, disappears when discovery is switched off, and that a broken plugin
beside it is reported without taking it down.
Subprocesses run outside the checkout, so they see only what is installed.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import tomllib

import regplug

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "regplug-group-lasso"

if (importlib.util.find_spec("regplug_group_lasso") is None
        and os.environ.get("REGPLUG_TESTING_WHEEL") != "1"):
    pytest.skip("the example plugin package is not installed (tox installs it; in a dev "
                "environment: pip install -e examples/regplug-group-lasso)",
                allow_module_level=True)

from regplug_group_lasso import EPS, GroupLasso  # noqa: E402  (after the skip)

PROJECT = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
DIST = f"{PROJECT['name']} {PROJECT['version']}"  # "regplug-group-lasso 0.1.0"
HOOKS = ["on_train_begin", "on_loss", "on_train_end"]


def regplug_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
                ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "regplug", *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=120)


def row(listing: str, name: str) -> str:
    return next(line for line in listing.splitlines() if line.split()[:1] == [name])


def test_the_installed_example_is_the_one_in_this_checkout():
    assert metadata.version(PROJECT["name"]) == PROJECT["version"]
    declared = PROJECT["entry-points"]["regplug"]
    found = {ep.name: ep.value for ep in metadata.entry_points(group="regplug")
             if ep.dist is not None and ep.dist.name == PROJECT["name"]}
    assert found == declared == {"group_lasso": "regplug_group_lasso:GroupLasso"}


def test_regplug_plugins_lists_it_with_its_distribution_and_hooks(tmp_path):
    text = regplug_cli("plugins", "--wide", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    line = row(text.stdout, "group_lasso")
    assert DIST in line and "regplug_group_lasso:GroupLasso" in line
    assert ", ".join(HOOKS) in line and line.endswith("  ok")
    listing = json.loads(regplug_cli("plugins", "--json", cwd=tmp_path).stdout)
    record = next(r for r in listing["plugins"] if r["name"] == "group_lasso")
    assert record == {"name": "group_lasso", "distribution": DIST, "builtin": False,
                      "target": "regplug_group_lasso:GroupLasso", "hooks": HOOKS,
                      "tunable": {"strength": "1e-06 .. 0.1, log"},
                      "status": "ok", "error": None}
    assert listing["third_party_discovery"] is True


def test_it_is_built_by_name_from_a_config_and_from_toml(tmp_path):
    (from_dict,) = regplug.build_plugins([{"name": "group_lasso", "strength": 0.01,
                                           "include": "branch_*"}])
    assert isinstance(from_dict, GroupLasso)
    assert repr(from_dict) == "GroupLasso(strength=0.01, kinds=['weight'], include=['branch_*'])"
    path = tmp_path / "reg.toml"
    path.write_text(textwrap.dedent("""
        [[plugins]]
        name = "group_lasso"
        strength = { schedule = "linear_warmup", value = 1e-3, warmup_steps = 100 }

        [[plugins]]
        name = "l2"
        l2 = 1e-4
    """))
    group_lasso, l2 = regplug.load_config(path)
    assert repr(group_lasso) == ("GroupLasso(strength=LinearWarmup(value=0.001, start=0.0, "
                                 "warmup_steps=100, warmup_epochs=None))")
    assert repr(l2) == "L2(l2=0.0001)"
    with pytest.raises(ValueError, match="GroupLasso: argument 'strength' must be a finite "
                                         "number >= 0, got -1"):
        regplug.build_plugins([{"name": "group_lasso", "strength": -1}])
    with pytest.raises(TypeError, match="plugin 'group_lasso': .*'lam'.*accepts strength, "
                                        "kinds, include, exclude"):
        regplug.build_plugins([{"name": "group_lasso", "lam": 0.1}])


# -- training in both frameworks -------------------------------------------------------------

STRENGTH = 0.02


@pytest.mark.parametrize("fused", [True, False], ids=["fused-gradient", "autograd"])
def test_it_trains_a_torch_loop_with_the_weights_of_the_hand_written_penalty(fused):
    torch = pytest.importorskip("torch")
    from regplug.adapters.torch import attach

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    by_hand = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(32, 8, generator=gen), torch.randn(32, 1, generator=gen))
            for _ in range(30)]
    mse = torch.nn.MSELoss()

    def penalty(m):  # the group lasso written out: Linear weights only, one group each
        return STRENGTH * sum(math.sqrt(w.numel()) * (w.pow(2).sum() + EPS).sqrt()
                              for w in (m[0].weight, m[2].weight))

    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with attach(model, opt, [GroupLasso(STRENGTH)], fused=fused) as reg:
        for x, y in data:
            opt.zero_grad()
            loss = reg.loss(mse(model(x), y))
            loss.backward()
            opt.step()
        reg.epoch_end({})
        logged = reg.history["group_lasso_penalty"][-1]
    opt = torch.optim.SGD(by_hand.parameters(), lr=0.05, momentum=0.9)
    for x, y in data:
        opt.zero_grad()
        (mse(by_hand(x), y) + penalty(by_hand)).backward()
        opt.step()
    for (name, ours), theirs in zip(model.state_dict().items(), by_hand.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=name)
    # The logged value is the penalty at the weights the epoch ends with.
    with torch.no_grad():
        assert logged == pytest.approx(penalty(by_hand).item(), rel=1e-5)


def test_it_trains_keras_fit_with_the_weights_of_a_hand_written_kernel_regularizer():
    keras = pytest.importorskip("keras")
    from keras import ops

    from regplug.adapters.keras import Regularize

    def group_lasso(w):  # the same penalty as a Keras regularizer, one kernel at a time
        return STRENGTH * math.sqrt(math.prod(w.shape)) * ops.sqrt(ops.sum(ops.square(w)) + EPS)

    def model(reg=None):
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((8,)),
                              keras.layers.Dense(16, activation="relu", kernel_regularizer=reg),
                              keras.layers.Dense(1, kernel_regularizer=reg)])
        m.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss="mse")
        return m

    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype("float32")
    y = rng.normal(size=(128, 1)).astype("float32")
    baseline, ours = model(group_lasso), model()
    fit = dict(epochs=3, batch_size=32, shuffle=False, verbose=0)
    h_base = baseline.fit(x, y, **fit)
    h_ours = ours.fit(x, y, callbacks=[Regularize([GroupLasso(STRENGTH)])], **fit)
    for a, b in zip(baseline.get_weights(), ours.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_ours.history["loss"], h_base.history["loss"], rtol=1e-5)
    assert len(h_ours.history["group_lasso_penalty"]) == 3
    assert all(v > 0 for v in h_ours.history["group_lasso_penalty"])


# -- discovery switched off, broken neighbours, the package's own tests -------------------------

def test_with_autoload_disabled_it_is_absent(tmp_path):
    off = {"REGPLUG_DISABLE_PLUGIN_AUTOLOAD": "1"}
    listing = regplug_cli("plugins", cwd=tmp_path, env=off)
    assert listing.returncode == 0, listing.stderr
    assert "group_lasso" not in listing.stdout and "l2" in listing.stdout
    assert "third-party discovery is off: REGPLUG_DISABLE_PLUGIN_AUTOLOAD is set" in listing.stdout
    build = subprocess.run(
        [sys.executable, "-c", "import regplug; regplug.create_plugin('group_lasso')"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **off}, timeout=120)
    assert build.returncode != 0
    assert ("UnknownPluginError: unknown plugin 'group_lasso'" in build.stderr
            and "third-party discovery is off" in build.stderr)


@pytest.fixture
def broken_neighbour(tmp_path):
    """A distribution 'acme-broken 2.0' whose plugins cannot load, on a PYTHONPATH folder."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "acme_broken.py").write_text("raise ImportError('needs libfoo')\n")
    (site / "acme_constant.py").write_text("STRENGTH = 0.1\n")
    dist = site / "acme_broken-2.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-broken\nVersion: 2.0\n")
    (dist / "entry_points.txt").write_text(
        "[regplug]\nbroken = acme_broken:Thing\nconstant = acme_constant:STRENGTH\n")
    return {"PYTHONPATH": str(site)}


def test_a_broken_plugin_is_reported_without_breaking_the_others(tmp_path, broken_neighbour):
    text = regplug_cli("plugins", "--wide", cwd=tmp_path, env=broken_neighbour)
    assert text.returncode == 0, text.stderr
    assert row(text.stdout, "broken").endswith("BROKEN: ImportError: needs libfoo")
    assert "acme-broken 2.0" in row(text.stdout, "broken")
    assert row(text.stdout, "constant").endswith(
        "BROKEN: TypeError: acme_constant:STRENGTH is a float, not a plugin class or factory")
    assert row(text.stdout, "group_lasso").endswith("  ok")
    assert row(text.stdout, "l2").endswith("  ok")
    records = {r["name"]: r for r in json.loads(
        regplug_cli("plugins", "--json", cwd=tmp_path, env=broken_neighbour).stdout)["plugins"]}
    assert records["broken"]["status"] == "broken" and records["broken"]["hooks"] == []
    assert records["broken"]["error"] == "ImportError: needs libfoo"
    assert records["group_lasso"]["status"] == "ok"
    # Configs still build the working plugins; the broken one fails by name and distribution.
    code = textwrap.dedent("""
        import regplug
        print(regplug.build_plugins([{"name": "group_lasso", "strength": 0.1}, "l2"]))
        try:
            regplug.create_plugin("broken")
        except regplug.PluginLoadError as err:
            print(err)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, **broken_neighbour}, timeout=120)
    assert out.returncode == 0, out.stderr
    built, error = out.stdout.splitlines()
    assert built == "[GroupLasso(strength=0.1), L2(l2=0.01)]"
    assert error.startswith("plugin 'broken' from acme-broken 2.0 failed to load "
                            "(acme_broken:Thing): ImportError: needs libfoo")


def test_the_example_packages_own_tests_pass_against_this_regplug():
    # They use only regplug.testing (NumPy): what a plugin author runs in their own CI.
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                            capture_output=True, text=True, cwd=EXAMPLE, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout


@pytest.mark.slow
def test_regplug_compare_trains_it_by_name_from_a_config_in_both_frameworks(tmp_path):
    for module in ("sklearn", "torch", "keras"):
        pytest.importorskip(module)
    (tmp_path / "strategies.toml").write_text(textwrap.dedent("""
        [[strategies]]
        name = "grouped"
        plugins = [{name = "group_lasso", strength = 1e-3}]
    """))
    run = regplug_cli("compare", "--preset", "notebook", "--config", "strategies.toml",
                      "--epochs", "1", "--quiet",
                      "--out", "out", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "GroupLasso(strength=0.001)" in run.stdout
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["settings"]["strategies"] == [
        {"name": "grouped", "plugins": [{"name": "group_lasso", "strength": 0.001}]}]
    rows = {r["framework"]: r for r in report["results"]}
    assert set(rows) == {"torch", "keras"}
    for framework, result in rows.items():
        assert result["strategy"] == "grouped"
        assert result["penalty"] > 0, framework  # the plugin's penalty, at the final weights
        assert result["history"]["group_lasso_penalty"][-1] > 0, framework
