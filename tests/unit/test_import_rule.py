"""DESIGN.md's import rule, checked on the source: each layer imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "src" / "embedstack"

LAYER = {
    "types": 1, "errors": 1, "fsutil": 1, "vectors": 1, "threads": 1,
    "config": 2, "obs": 2, "infra": 2,
    "inference": 3, "index": 3, "storage": 3,
    "ingest": 4,
    "registry": 5,  # collections and upgrades drive ingest (re-embedding goes through the queue)
    "cluster": 6,
    "serving": 7, "cli": 7, "loadtest": 7, "__main__": 7,
    "__init__": 7, "testing": 7, "client": 7, "integrations": 7,
}  # fmt: skip
# packages of one layer that must not import each other (a package may import itself)
SIBLINGS_FORBIDDEN = {3}


def _top(module: str) -> str:
    return module.split(".")[1] if module.startswith("embedstack.") else ""


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return [m for m in out if m.startswith("embedstack.")]


def test_every_module_has_a_layer() -> None:
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        assert rel.parts[0].removesuffix(".py") in LAYER, f"{rel} is in no layer of the rule"


def test_layers_import_only_downward() -> None:
    problems = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        own = rel.parts[0].removesuffix(".py")
        for module in _imports(path):
            other = _top(module)
            if other == own or other not in LAYER:
                continue
            mine, theirs = LAYER[own], LAYER[other]
            if theirs > mine or (theirs == mine and mine in SIBLINGS_FORBIDDEN):
                problems.append(f"{rel} imports {module} (layer {theirs} from layer {mine})")
    assert not problems, "\n".join(problems)


def test_no_settings_below_the_entry_points() -> None:
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if LAYER[rel.parts[0].removesuffix(".py")] < 7 and rel.parts[0] != "config.py":
            assert "embedstack.config" not in _imports(path), f"{rel} reads Settings"


def test_the_client_does_not_load_the_server() -> None:
    """`embedstack.client` imports httpx and pydantic models, not FastAPI, torch or numpy."""
    import subprocess
    import sys

    heavy = ("fastapi", "starlette", "torch", "numpy", "faiss", "onnxruntime", "uvicorn")
    code = (
        "import sys, embedstack.client; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"embedstack.client loads {out.stdout.strip()}"
