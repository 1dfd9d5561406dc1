"""The import directions of labelgen's packages, read from the source (ast), so they cannot regress:
data/ knows nothing of the pipeline, the stores, the models or the stages; models/ never import the
Datasets; only labelgen/devices.py counts cores and GPUs."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "labelgen"

FORBIDDEN = {  # package -> modules it must not import (a prefix forbids the module and everything under it)
    "data": ("labelgen.pipeline", "labelgen.store", "labelgen.stages", "labelgen.models"),
    "models": ("labelgen.data.training", "labelgen.pipeline", "labelgen.stages"),
    "store": ("labelgen.pipeline", "labelgen.stages"),
}
COUNTING = {"sched_getaffinity", "cpu_count", "device_count"}


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` of the file names, at any depth (also inside
    functions); `from labelgen.x import y` counts as both labelgen.x and labelgen.x.y."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def violations(root: Path, package: str) -> list[str]:
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if any(module == f or module.startswith(f + ".") for f in FORBIDDEN[package]):
                found.append(f"{path.relative_to(root).as_posix()} imports {module}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_directions(package):
    assert violations(PACKAGE, package) == []


def test_the_rule_sees_a_forbidden_import(tmp_path):
    """The checker itself: imports inside functions count, and so does the name after `from x import`."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bad.py").write_text("def f():\n    from labelgen.store.artifact import file_digest\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "bad.py").write_text("from labelgen.data import training\nimport labelgen.data.masks\n")
    assert violations(tmp_path, "data") == [
        "data/bad.py imports labelgen.store.artifact",
        "data/bad.py imports labelgen.store.artifact.file_digest",
    ]
    assert violations(tmp_path, "models") == ["models/bad.py imports labelgen.data.training"]


def test_only_devices_counts_cores_and_gpus():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "devices.py" and path.parent == PACKAGE:
            continue
        tree = ast.parse(path.read_text(), str(path))
        names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        found += [f"{path.relative_to(PACKAGE.parent)}: {name}" for name in sorted(names & COUNTING)]
        found += [f"{path.relative_to(PACKAGE.parent)}: {s}" for s in strings if "/proc/driver/nvidia" in s]
    assert found == []
