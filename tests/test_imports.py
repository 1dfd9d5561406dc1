"""The import directions of labelgen's packages, read from the source (ast), so they cannot regress:
data/ knows nothing of the pipeline, the stores, the models or the stages; models/ never import the
Datasets; nothing outside stages/ imports a stage module (the DAG loads them by name, through
importlib); the numerics and the report know nothing of the pipeline; `labelgen status` and the CLI
import neither a stage nor a model; only labelgen/devices.py counts cores and GPUs."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "labelgen"

STAGES = "labelgen.stages"
# package folder or module file (relative to labelgen/) -> modules it must not import (a prefix forbids
# the module and everything under it)
FORBIDDEN = {
    "data": ("labelgen.pipeline", "labelgen.store", STAGES, "labelgen.models"),
    "models": ("labelgen.data.training", "labelgen.pipeline", STAGES),
    "store": ("labelgen.pipeline", STAGES),
    "numerics": ("labelgen.pipeline", STAGES, "labelgen.store", "labelgen.models", "labelgen.report"),
    "report": ("labelgen.pipeline", STAGES, "labelgen.formats"),
    "formats": (STAGES, "labelgen.models"),  # mask export reads a run through pipeline/, never a stage
    "training": (STAGES,),  # the one loop knows no stage: stages configure it
    "pipeline": (STAGES,),  # dag.py loads the stages by name (importlib), which no import statement names
    "pipeline/status.py": (STAGES, "labelgen.models", "torch", "timm"),  # answers in well under a second
    "cli.py": (STAGES, "labelgen.models"),
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


def violations(root: Path, package: str, forbidden: tuple[str, ...] | None = None) -> list[str]:
    """`path imports module` for each forbidden import of the package folder or module file `package`."""
    found = []
    target = root / package
    for path in sorted(target.rglob("*.py") if target.is_dir() else [target]):
        for module in sorted(imported_modules(path)):
            if any(module == f or module.startswith(f + ".") for f in forbidden or FORBIDDEN[package]):
                found.append(f"{path.relative_to(root).as_posix()} imports {module}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_directions(package):
    assert violations(PACKAGE, package) == []


def test_nothing_outside_stages_imports_a_stage_module():
    """The stages are plugins of the DAG: the runner, export, status, the report and the CLI reach
    them only through `labelgen.pipeline.dag.STAGES`, and a stage's services (the data set's root,
    splits, class list) live in data/."""
    outside = [p for p in sorted(PACKAGE.iterdir()) if p.name != "stages" and (p.is_dir() or p.suffix == ".py")]
    assert [v for p in outside for v in violations(PACKAGE, p.name, (STAGES,))] == []


def test_no_stage_imports_another_stage():
    """A stage reads another stage's files through its declared outputs (`ctx.input_path`), never by
    importing its module: train_decoder and evaluate imported the corrections stage for its reader."""
    found = []
    for path in sorted((PACKAGE / "stages").glob("*.py")):
        own = f"{STAGES}.{path.stem}"
        found += [f"{path.name} imports {m}" for m in sorted(imported_modules(path))
                  if m.startswith(STAGES + ".") and not m.startswith(own)]  # fmt: skip
    assert found == []


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


def test_every_package_is_in_the_wheel():
    """pyproject's explicit package list names every folder of labelgen/ with an __init__.py: an editable
    install (CI's) finds a forgotten one anyway, a wheel leaves it out (labelgen.training was)."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set()
