"""The rooms of ``emo`` and the arrows between them, read from the source (no import runs but the last test).

Data flows one way: release -> manifest (``datasets``) -> decoded frames and audio (``decode``) -> frozen
encoders (``encoders``) -> shards (``extract`` writes, ``cache`` stores and loads) -> ``heads``; ``cli``
sits on top. These tests fail when a module reaches into another's private names, when two modules
import each other (directly or round a longer circle), when an arrow points back up, or when a
third-party model library is imported outside its one adapter file.
"""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EMO = ROOT / "emo"

# package -> the emo packages it may import (besides itself)
ALLOWED = {
    "cache": set(),
    "decode": set(),
    "encoders": set(),
    "datasets": {"cache", "decode", "encoders"},
    "extract": {"cache", "decode", "encoders", "datasets"},
    "heads": {"cache", "encoders"},
    "cli": {"cache", "decode", "encoders", "datasets", "extract", "heads"},
}

# third-party library -> the only files that may import it
ADAPTERS = {
    "open_clip": {"emo/encoders/clip.py"},
    "transformers": {"emo/encoders/hf.py"},
    "torchvision": {"emo/encoders/detector.py"},
    "feat": {"emo/encoders/pyfeat.py"},
    "decord": {"emo/decode/decord_backend.py"},
    "mamba_ssm": {"emo/heads/layers/scan.py"},
    "distributed": {"emo/extract/cluster.py", "emo/heads/distributed.py"},
    "dask": {"emo/extract/cluster.py", "emo/heads/distributed.py"},
    "av": {"emo/decode/probe.py", "emo/decode/pyav_backend.py", "emo/decode/gpu.py", "emo/decode/audio.py", "emo/decode/strided.py", "emo/datasets/synthetic.py"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(EMO.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> list[tuple[str, list[str], int]]:
    """``(imported module, names taken from it, line)`` for every import in the module, at any depth."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    package = name if _is_package(name) else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            out.append((source, [a.name for a in node.names], node.lineno))
    return out


def _edges(name: str) -> set[str]:
    """The emo modules ``name`` imports: ``from pkg import sub`` counts as importing ``pkg.sub``."""
    out = set()
    for source, names, _ in _imports(name):
        if not source.startswith("emo"):
            continue
        subs = [f"{source}.{n}" for n in names if f"{source}.{n}" in MODULES]
        if subs:
            out.update(subs)
        if not subs or len(subs) < len(names):
            out.add(source)
    out.discard(name)
    return out


def test_the_rooms_are_the_documented_ones():
    rooms = {p.name for p in EMO.iterdir() if (p / "__init__.py").is_file()}
    assert rooms == set(ALLOWED)
    for room in rooms:  # every package says what it is for
        assert ast.get_docstring(ast.parse((EMO / room / "__init__.py").read_text())), room


def test_no_module_imports_another_modules_private_names():
    found = []
    for name in MODULES:
        for source, names, line in _imports(name):
            if source.startswith("emo") and source != name:
                found += [f"{name}:{line} takes {n} from {source}" for n in names if n.startswith("_") and not n.endswith("__")]
    assert not found, "\n".join(found)


def test_no_import_circles():
    graph = {name: _edges(name) & set(MODULES) for name in MODULES}
    # a module importing its own package's __init__ (or the reverse) is how packages load, not a circle
    for name, targets in graph.items():
        targets -= {t for t in targets if name.startswith(t + ".") or t.startswith(name + ".") and _is_package(name)}
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, circles


def test_arrows_point_one_way():
    found = []
    for name in MODULES:
        room = name.split(".")[1] if "." in name else None
        if room not in ALLOWED:
            continue
        for target in _edges(name):
            other = target.split(".")[1] if "." in target else None
            if other and other != room and other not in ALLOWED[room]:
                found.append(f"{name} imports {target}")
    assert not found, "\n".join(found)


def test_each_model_library_has_one_adapter_file():
    found = []
    for name, path in MODULES.items():
        rel = path.relative_to(ROOT).as_posix()
        for source, _, line in _imports(name):
            top = (source or "").split(".")[0]
            if top in ADAPTERS and rel not in ADAPTERS[top]:
                found.append(f"{rel}:{line} imports {source}")
    assert not found, "\n".join(found)


def test_the_layout_checks_can_fail(tmp_path):
    """The checks above see a private import, a circle and a back arrow when there is one."""
    global MODULES
    saved = dict(MODULES)
    try:
        a, b = tmp_path / "a.py", tmp_path / "b.py"
        a.write_text("from emo.heads.zz_b import _secret\nfrom emo.extract import runner\n")
        b.write_text("import emo.heads.zz_a\n")
        MODULES["emo.heads.zz_a"], MODULES["emo.heads.zz_b"] = a, b
        with pytest.raises(AssertionError, match="_secret"):
            test_no_module_imports_another_modules_private_names()
        with pytest.raises(AssertionError, match="zz_a"):
            test_no_import_circles()
        with pytest.raises(AssertionError, match="emo.heads.zz_a imports emo.extract"):
            test_arrows_point_one_way()
    finally:
        MODULES = saved


@pytest.mark.parametrize("old", sorted(importlib.import_module("emo.extract.moved").MOVED))
def test_old_import_paths_still_work_and_warn(old):
    from emo.extract.moved import MOVED

    new = importlib.import_module(MOVED[old])
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {MOVED[old]}"):
        module = importlib.import_module(old)
    assert module is new  # one module object: attributes and monkeypatching behave as with the new path
    assert module.__spec__.name == MOVED[old]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.import_module(MOVED[old])  # the new path never warns
