"""The package's shape: a public API at the top level and imports that flow one way."""

import ast
from pathlib import Path

import attnres

SRC = Path(attnres.__file__).parent


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the attnres modules it imports (function-level imports included)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else base)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        # a package's __init__ re-exporting its own submodules is not a cycle
        graph[name] = {t for t in targets & modules.keys()
                       if t != name and not t.startswith(name + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done, path = set(), []

    def visit(node):
        path.append(node)
        for nxt in sorted(graph[node]):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done and (cycle := visit(nxt)):
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_in_the_package():
    cycle = find_cycle(import_graph(SRC))
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "attnres"
    (pkg / "experiments").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "experiments" / "__init__.py").write_text("")
    (pkg / "experiments" / "report.py").write_text("def f():\n    from attnres.experiments import ablate\n")
    (pkg / "experiments" / "ablate.py").write_text("from attnres.experiments import report\n")
    assert find_cycle(import_graph(pkg)) == ["attnres.experiments.ablate", "attnres.experiments.report",
                                             "attnres.experiments.ablate"]


def test_public_api_at_the_top_level():
    import torch
    for name in attnres.__all__:
        assert getattr(attnres, name) is not None, name
    d = 8
    sources = [torch.randn(2, 3, d, dtype=torch.float64) for _ in range(3)]
    h = attnres.depth_attention(torch.zeros(d, dtype=torch.float64), sources)
    torch.testing.assert_close(h, sum(sources) / 3)  # zero query: the uniform mean
    cfg = attnres.dense_config("tiny", residual=attnres.ResidualConfig("block", block_size=2))
    model = attnres.DenseLM(cfg)
    assert model.residual.block_size == 2 and model.cfg.residual is cfg.residual
    assert (SRC / "py.typed").is_file()
