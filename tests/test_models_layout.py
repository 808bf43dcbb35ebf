"""The model side's layout: old import paths alias the moved modules, the package's imports have no
cycle, and a model argument is resolved once per load."""

import ast
import importlib
import sys
from pathlib import Path

import pytest
import torch

import rpmetric
from rpmetric.models import hub

PACKAGE = Path(rpmetric.__file__).parent

MOVED = ["spec", "hub", "preprocess", "encoder", "heads", "backbones", "backbones.hf_clip", "backbones.hf_vit",
         "backbones.openclip", "backbones.remap", "backbones.timm_model", "backbones.weights"]


@pytest.mark.parametrize("name", MOVED)
def test_old_paths_are_the_moved_modules(name):
    old, new = importlib.import_module(f"rpmetric.{name}"), importlib.import_module(f"rpmetric.models.{name}")
    assert old is new and sys.modules[f"rpmetric.{name}"] is new


def test_old_from_imports_give_the_same_objects():
    from rpmetric.backbones.weights import read_weights
    from rpmetric.heads import HeadConfig
    from rpmetric.hub import ModelFiles
    from rpmetric.models.backbones import weights
    from rpmetric.models.hub import ModelFiles as moved_files
    from rpmetric.models.spec import HeadConfig as moved_config

    assert read_weights is weights.read_weights and ModelFiles is moved_files and HeadConfig is moved_config


def test_load_encoder_still_imports_from_its_old_module():
    from rpmetric.encoder import load_encoder
    from rpmetric.models import load_encoder as moved

    assert load_encoder is moved


def test_the_zoo_ships_in_the_models_package():
    from importlib import resources

    assert resources.files("rpmetric.models").joinpath("zoo.json").is_file()
    assert not (PACKAGE / "zoo.json").exists()  # one copy, where spec reads it
    assert "r-clip-f-convnext" in rpmetric.list_models()


# -- the import graph, from the AST: top-level and function-level imports ---------------------------
def import_graph(root: Path) -> dict:
    """``{module: set of the package's modules it imports}`` for the package in ``root``, counting
    every ``import`` statement wherever it stands (module level, functions, branches)."""
    package = root.name

    def module_name(path: Path) -> str:
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    paths = {module_name(p): p for p in sorted(root.rglob("*.py"))}

    def known(name: str):
        while name and name not in paths:  # `from .a import b`: module a.b if there is one, else a
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in paths.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(known(a.name) for a in node.names if a.name.split(".")[0] == package)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[:len(here.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] == package:
                    targets.update(known(f"{source}.{a.name}") for a in node.names)
        targets.discard(None)
        targets.discard(name)
        graph[name] = targets
    return graph


def find_cycle(graph: dict):
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_function_level_import_cycles(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("def f():\n    import json\n")
    assert find_cycle(import_graph(pkg)) is None


def test_the_package_imports_have_no_cycle():
    graph = import_graph(PACKAGE)
    assert "rpmetric.models.hub" in graph["rpmetric.models.loading"]  # the graph is the package's
    assert find_cycle(graph) is None


def test_functional_imports_no_metric_and_the_model_side_imports_nothing_after_it():
    graph = import_graph(PACKAGE)
    assert "rpmetric.metric" not in graph["rpmetric.functional"]
    # The model side's stages import only earlier ones, and nothing of the package outside models/
    # but the leaf helpers.
    leaves = {"rpmetric._version", "rpmetric.errors", "rpmetric.files", "rpmetric.validation"}
    for name, targets in graph.items():
        if name.startswith("rpmetric.models"):
            assert targets <= leaves | {t for t in graph if t.startswith("rpmetric.models")}, name
    assert "rpmetric.models.encoder" not in graph["rpmetric.models.hub"]
    assert "rpmetric.models.heads" not in graph["rpmetric.models.encoder"] | graph["rpmetric.models.hub"]


# -- one resolve per load -------------------------------------------------------------------------------
@pytest.fixture()
def resolve_calls(monkeypatch):
    calls = {"resolve": [], "fetch": []}
    real_resolve, real_fetch = hub.resolve, hub.fetch
    monkeypatch.setattr(hub, "resolve", lambda model, **kw: calls["resolve"].append(model) or real_resolve(model, **kw))
    monkeypatch.setattr(hub, "fetch", lambda spec, **kw: calls["fetch"].append(spec.name) or real_fetch(spec, **kw))
    return calls


@pytest.fixture(scope="module")
def head_folder(vit_folder, tmp_path_factory):
    from rpmetric.models import load_encoder
    from rpmetric.models.heads import HeadConfig, attach_head, head_state_dict, save_head_folder

    module, config = attach_head(load_encoder(str(vit_folder)).backbone, HeadConfig("mlp", hidden=8), dim=24)
    return save_head_folder(tmp_path_factory.mktemp("layout") / "head", str(vit_folder), config,
                            head_state_dict(module))


def test_a_plain_model_is_resolved_once(vit_folder, resolve_calls):
    rpmetric.RobustDistance(str(vit_folder), device="cpu")
    assert resolve_calls == {"resolve": [str(vit_folder)], "fetch": [str(vit_folder)]}


def test_a_head_is_resolved_once_with_its_base(vit_folder, head_folder, resolve_calls):
    from rpmetric.models import load_encoder

    encoder = load_encoder(str(head_folder))
    assert resolve_calls["resolve"] == [str(head_folder)]
    assert resolve_calls["fetch"] == [str(vit_folder)]  # the base's files, fetched once
    assert encoder.spec.local_path == str(head_folder) and encoder.spec.notes.startswith("mlp head on ")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert encoder(x).shape == (2, 24)


def test_resolve_describes_a_head_and_its_base(vit_folder, head_folder):
    resolved = hub.resolve(str(head_folder))
    assert resolved.spec.local_path == str(vit_folder.resolve()) and resolved.spec.family is not None
    assert resolved.files.weights.parent == vit_folder.resolve()
    assert resolved.head.weights == head_folder / "head.safetensors" and resolved.head.config.type == "mlp"
    assert hub.resolve(str(vit_folder)).head is None
