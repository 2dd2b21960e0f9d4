"""Mutation testing of regplug: one mutant at a time, in a private copy of the tree.

Not a test module (pytest does not collect it); run by hand, see docs (Mutation testing):

    python tests/mutation/mutate.py list regplug/window.py
    python tests/mutation/mutate.py show regplug/window.py 11
    python tests/mutation/mutate.py run regplug/window.py tests/torch/test_adapter.py \\
        [--ids 1,2] [--max N] [--seed S] [--out mutation-results]

``run`` copies regplug/, plugins/, adapters/, tests/ and pyproject.toml to a temporary folder,
writes each mutant there, and runs ``pytest -x`` on the given tests with the *editable*
install of regplug redirected to the copy (a ``sitecustomize`` that repoints the editable
finder), so the working tree is never touched. A mutant is killed when pytest fails. Results
are appended to ``<out>/<module>.jsonl``. Operators: comparison and arithmetic swaps,
and/or, numeric constants (+1, 0<->1), True<->False, ``not x`` -> ``x``, deleted call
statements and augmented assignments, ``return X`` -> ``return None``, ``raise`` -> ``pass``,
``if`` tests -> ``False``. Needs ``pip install -e .`` (the dev setup).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COPIED = ("regplug", "plugins", "adapters", "tests", "pyproject.toml")
SITECUSTOMIZE = """
import os, sys
root = os.environ.get("REGPLUG_MUTATION_ROOT")
if root:
    for name in list(sys.modules):
        if name.startswith("__editable___regplug") and name.endswith("_finder"):
            sys.modules[name].MAPPING.update({
                "regplug": root + "/regplug", "regplug.adapters": root + "/adapters",
                "regplug.plugins": root + "/plugins"})
"""

CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
            ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
            ast.In: ast.NotIn, ast.NotIn: ast.In}
BIN_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
            ast.Pow: ast.Mult, ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv}


def docstring_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0]))
    return out


def annotation_ids(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        anns = []
        if isinstance(node, ast.arg) and node.annotation is not None:
            anns.append(node.annotation)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
            anns.append(node.returns)
        if isinstance(node, ast.AnnAssign):
            anns.append(node.annotation)
        for a in anns:
            out.update(id(n) for n in ast.walk(a))
    return out


def in_type_checking_or_all(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for n in ast.walk(node))
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            out.update(id(n) for n in ast.walk(node))
    return out


def mutants(source: str):
    """Yield (index, lineno, description, mutate) where mutate(tree_copy) applies it."""
    tree = ast.parse(source)
    skip = docstring_nodes(tree) | annotation_ids(tree) | in_type_checking_or_all(tree)
    nodes = [n for n in ast.walk(tree) if id(n) not in skip]
    order = {id(n): i for i, n in enumerate(ast.walk(tree))}
    found = []

    def add(node, desc, fn):
        found.append((order[id(node)], getattr(node, "lineno", 0), desc, fn))

    for node in nodes:
        if isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                if type(op) in CMP_SWAP:
                    new = CMP_SWAP[type(op)]
                    add(node, f"{type(op).__name__}->{new.__name__} #{k}",
                        lambda n, k=k, new=new: n.ops.__setitem__(k, new()))
        elif isinstance(node, ast.BinOp) and type(node.op) in BIN_SWAP:
            new = BIN_SWAP[type(node.op)]
            add(node, f"{type(node.op).__name__}->{new.__name__}",
                lambda n, new=new: setattr(n, "op", new()))
        elif isinstance(node, ast.AugAssign) and type(node.op) in BIN_SWAP:
            new = BIN_SWAP[type(node.op)]
            add(node, f"aug {type(node.op).__name__}->{new.__name__}",
                lambda n, new=new: setattr(n, "op", new()))
        elif isinstance(node, ast.BoolOp):
            new = ast.Or if isinstance(node.op, ast.And) else ast.And
            add(node, f"{type(node.op).__name__}->{new.__name__}",
                lambda n, new=new: setattr(n, "op", new()))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            add(node, "not x -> x", "UNWRAP")
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
            v = node.value
            new = 1 if v == 0 else (0 if v == 1 else v + 1)
            add(node, f"{v!r}->{new!r}", lambda n, new=new: setattr(n, "value", new))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            add(node, f"{node.value}->{not node.value}",
                lambda n: setattr(n, "value", not n.value))
        if isinstance(node, ast.If):
            add(node, "if guard -> if False", lambda n: setattr(
                n, "test", ast.Constant(False)))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            add(node, "delete call statement", "PASS")
        elif isinstance(node, ast.AugAssign):
            add(node, "delete augmented assignment", "PASS")
        elif isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            add(node, "return X -> return None", lambda n: setattr(n, "value", None))
        elif isinstance(node, ast.Raise):
            add(node, "raise -> pass", "PASS")
    found.sort(key=lambda t: t[0])
    return [(i, line, desc, fn, pos) for i, (pos, line, desc, fn) in enumerate(found)]


def apply(source: str, pos: int, fn) -> str:
    tree = ast.parse(source)
    all_nodes = list(ast.walk(tree))
    target = all_nodes[pos]
    if fn == "PASS" or fn == "UNWRAP":
        for parent in all_nodes:
            for field, value in ast.iter_fields(parent):
                if isinstance(value, list) and target in value:
                    idx = value.index(target)
                    value[idx] = ast.Pass() if fn == "PASS" else target.operand
                    ast.copy_location(value[idx], target)
                elif value is target:
                    setattr(parent, field, target.operand)
    else:
        fn(target)
    ast.fix_missing_locations(tree)
    return ast.unparse(tree)


def make_copy() -> Path:
    root = Path(tempfile.mkdtemp(prefix="regplug-mutation-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=ignore)
        else:
            shutil.copy2(src, root / name)
    site = root / "_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return root


def check_redirect(root: Path, env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-c", "import regplug.plugins as p; print(p.__file__)"],
                         cwd=root, env=env, capture_output=True, text=True).stdout.strip()
    if not out.startswith(str(root)):
        sys.exit(f"mutate.py: regplug is not imported from the copy ({out or 'no regplug'}); "
                 "this needs the editable install (pip install -e .)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("list", "show", "run"))
    parser.add_argument("module", help="a source file, relative to the repository root")
    parser.add_argument("rest", nargs="*", help="show: the mutant id; run: the test paths")
    parser.add_argument("--ids", help="run only these mutant ids (comma-separated)")
    parser.add_argument("--max", type=int, help="run a random sample of this many mutants")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    parser.add_argument("--out", default="mutation-results", help="results folder")
    args = parser.parse_args()
    source = (REPO / args.module).read_text()
    found = mutants(source)
    if args.command == "list":
        for i, line, desc, _fn, _pos in found:
            print(i, line, desc)
        print(len(found), "mutants")
        return
    if args.command == "show":
        i, line, desc, fn, pos = found[int(args.rest[0])]
        base = ast.unparse(ast.parse(source)).splitlines()
        print(f"line {line}: {desc}")
        print("\n".join(difflib.unified_diff(base, apply(source, pos, fn).splitlines(),
                                             lineterm="", n=1)))
        return
    chosen = found
    if args.ids:
        ids = {int(x) for x in args.ids.split(",")}
        chosen = [m for m in found if m[0] in ids]
    if args.max is not None and len(chosen) > args.max:
        chosen = sorted(random.Random(args.seed).sample(chosen, args.max), key=lambda m: m[0])
    root = make_copy()
    env = dict(os.environ, REGPLUG_MUTATION_ROOT=str(root), PYTHONPATH=str(root / "_site"),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               HYPOTHESIS_PROFILE="ci")
    check_redirect(root, env)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = root / args.module
    killed = 0
    try:
        with open(out_dir / f"{args.module.replace('/', '_')}.jsonl", "a") as out:
            for i, line, desc, fn, pos in chosen:
                target.write_text(apply(source, pos, fn))
                t0 = time.time()
                try:
                    r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q",
                                        "-p", "no:cacheprovider", *args.rest], cwd=root,
                                       env=env, capture_output=True, text=True, timeout=600)
                    rc = r.returncode
                except subprocess.TimeoutExpired:
                    rc = -1
                status = ("survived" if rc == 0 else "killed" if rc in (1, -1)
                          else f"error (pytest exit {rc})")
                killed += status == "killed"
                record = dict(module=args.module, id=i, line=line, mutation=desc,
                              status=status, seconds=round(time.time() - t0, 1),
                              tests=args.rest)
                out.write(json.dumps(record) + "\n")
                out.flush()
                print(i, line, desc, status, record["seconds"], flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{killed} of {len(chosen)} mutants killed")


if __name__ == "__main__":
    main()
