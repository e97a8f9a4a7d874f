"""The package's layers (issue 24): every module imports only from its own layer or the layers
below it, so that the import graph has no arrow back up:

    routers < modules < models < training < criterions < the package's __init__ < diagnostics

The package's __init__ is the plugin's registration (it imports the model, the criterion and the
training patches of fairseq). `pipeline` stands apart: it imports nothing of the package, and
nothing of the package imports it. Read from the source with `ast`, function-local imports
included; nothing is imported, no training runs."""
import ast
from pathlib import Path

PACKAGE = "fairseq_sparsemixer"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE
ROOT_LAYER = "__init__"  # the package's own __init__.py
LAYERS = ["routers", "modules", "models", "training", "criterions", ROOT_LAYER, "diagnostics"]
APART = "pipeline"


def layer_of(package_dir: Path, dotted: str):
    """The layer of `fairseq_sparsemixer[.X[...]]`: its subpackage X, the package's __init__ for
    the package itself (or a name defined there), None for a module loose at the package root."""
    parts = dotted.split(".")
    if len(parts) == 1:
        return ROOT_LAYER
    if (package_dir / parts[1]).is_dir():
        return parts[1]
    return None if (package_dir / f"{parts[1]}.py").is_file() else ROOT_LAYER


def imported(path: Path, package_dir: Path):
    """(line, absolute module name) of every import of the package in the file at `path`."""
    rel = path.relative_to(package_dir.parent).with_suffix("")
    here = list(rel.parts[:-1])  # the file's package (for an __init__.py, the package itself)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            # `from . import x` / `from fairseq_sparsemixer import x`: x may be a subpackage
            names = [f"{mod}.{a.name}" for a in node.names] if mod == PACKAGE else [mod]
        else:
            continue
        yield from ((node.lineno, n) for n in names if n == PACKAGE or n.startswith(PACKAGE + "."))


def violations(package_dir: Path = PACKAGE_DIR):
    """One line per import that goes up a layer, crosses into or out of `pipeline`, or involves
    a module with no layer."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir)
        src = ROOT_LAYER if rel == Path("__init__.py") else rel.parts[0] if len(rel.parts) > 1 else None
        if src is None or (src not in LAYERS and src != APART):
            found.append(f"{rel}: loose at the package root, or in no layer")
            continue
        for line, name in imported(path, package_dir):
            dst = layer_of(package_dir, name)
            if dst is None or (dst not in LAYERS and dst != APART):
                found.append(f"{rel}:{line} imports {name}, which is in no layer")
            elif APART in (src, dst) and src != dst:
                found.append(f"{rel}:{line} ({src}) imports {name} ({dst}): {APART} stands apart")
            elif APART not in (src, dst) and LAYERS.index(dst) > LAYERS.index(src):
                found.append(f"{rel}:{line} ({src}) imports {name} ({dst}), a layer above it")
    return found


def test_no_module_imports_from_a_layer_above_it():
    assert violations() == []


def test_every_subpackage_has_a_layer():
    subpackages = {p.parent.name for p in PACKAGE_DIR.glob("*/__init__.py")}
    assert subpackages == (set(LAYERS) - {ROOT_LAYER}) | {APART}


def test_the_check_sees_relative_absolute_and_function_local_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    for d in ("", "routers", "models", "diagnostics", "pipeline"):
        (pkg / d).mkdir(exist_ok=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "routers" / "a.py").write_text("from . import b\n\ndef f():\n    from ..models import m\n")
    (pkg / "routers" / "b.py").write_text("")
    (pkg / "models" / "m.py").write_text("import fairseq_sparsemixer.diagnostics.x\nfrom ..routers import a\n")
    (pkg / "diagnostics" / "x.py").write_text("from fairseq_sparsemixer import models\nimport fairseq_sparsemixer\n"
                                               "from ..pipeline import p\n")
    (pkg / "pipeline" / "p.py").write_text("")
    (pkg / "loose.py").write_text("")
    (pkg / "__init__.py").write_text("from . import models, loose\n")
    assert sorted(violations(pkg)) == [
        "__init__.py:1 imports fairseq_sparsemixer.loose, which is in no layer",
        "diagnostics/x.py:3 (diagnostics) imports fairseq_sparsemixer.pipeline (pipeline): pipeline stands apart",
        "loose.py: loose at the package root, or in no layer",
        "models/m.py:1 (models) imports fairseq_sparsemixer.diagnostics.x (diagnostics), a layer above it",
        "routers/a.py:4 (routers) imports fairseq_sparsemixer.models (models), a layer above it",
    ]
