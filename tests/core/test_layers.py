"""
The layers of ``wsrpc/`` and who may import whom (docs/architecture.md).

* **core**, sans-I/O: the message model, the codecs, the protocol state,
  dispatch, the driver, plain data (options, states, HTTP types,
  exceptions). It imports only the core, and no asyncio, socket or
  WebSocket library: it is tested without any of them.
* **transports** (``wsrpc._transports``): the libraries that speak
  WebSocket behind one seam. They import the core and each other; their
  base imports nothing of wsrpc.
* **connections**: the asyncio layer (communicator, acceptor, connector,
  server, groups, registry, hooks). It imports the core and the
  transports, never a front end.
* **front ends**: what users call from elsewhere (the package's face, the
  blocking API and its portal, the command line). They import anything;
  nothing below imports them.

Every module of the package must be in exactly one layer, so a new module
cannot slip past the rules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent.parent / "wsrpc"

CORE = {
    "wsrpc._budget",
    "wsrpc._cluster.wire",
    "wsrpc._msgpack_scan",
    "wsrpc._options",
    "wsrpc._util",
    "wsrpc.codecs",
    "wsrpc.dispatch",
    "wsrpc.driver",
    "wsrpc.exceptions",
    "wsrpc.http",
    "wsrpc.messages",
    "wsrpc.protocol",
    "wsrpc.reconnect",
    "wsrpc.states",
    "wsrpc.tgrid",
    "wsrpc.validation",
}
TRANSPORTS = {
    "wsrpc._transports",
    "wsrpc._transports.asgi",
    "wsrpc._transports.assembly",
    "wsrpc._transports.base",
    "wsrpc._transports.picows",
    "wsrpc._transports.websockets",
}
CONNECTIONS = {
    "wsrpc._cluster",
    "wsrpc._cluster.backplane",
    "wsrpc._cluster.redis",
    "wsrpc._cluster.registry",
    "wsrpc._communicator",
    "wsrpc.cluster",
    "wsrpc._hooks",
    "wsrpc._registry",
    "wsrpc.acceptor",
    "wsrpc.blocking",
    "wsrpc.connector",
    "wsrpc.groups",
    "wsrpc.server",
}
FRONT_ENDS = {"wsrpc", "wsrpc.__main__", "wsrpc._portal", "wsrpc.cli", "wsrpc.sync"}

ALLOWED = {
    "core": CORE,
    "transports": CORE | TRANSPORTS,
    "connections": CORE | TRANSPORTS | CONNECTIONS,
    "front ends": CORE | TRANSPORTS | CONNECTIONS | FRONT_ENDS,
}
LAYERS = {
    "core": CORE,
    "transports": TRANSPORTS,
    "connections": CONNECTIONS,
    "front ends": FRONT_ENDS,
}
ISOLATED = {
    "wsrpc._cluster": set(),
    "wsrpc._transports.base": set(),
    "wsrpc._transports.assembly": {"wsrpc._transports.base"},
    "wsrpc._registry": set(),
}
"""Modules that import (almost) nothing of wsrpc: what each may import."""
IO_LIBRARIES = {"asyncio", "socket", "selectors", "threading", "websockets", "picows", "uvloop"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every module ``name`` imports (at any depth in the file, TYPE_CHECKING included)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if node.module:  # not ``from . import x``, which imports x only
                found.add(target)
            # ``from . import sync``: the names may be modules themselves.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def wsrpc_imports(name: str) -> set[str]:
    return {imported for imported in imports_of(name) if imported in MODULES}


def layer_of(name: str) -> str:
    (layer,) = [layer for layer, members in LAYERS.items() if name in members]
    return layer


def test_every_module_is_in_one_layer() -> None:
    placed = [name for members in LAYERS.values() for name in members]
    assert len(placed) == len(set(placed))
    # Layers may name modules still to come (assembly, cli), never miss one.
    assert set(MODULES) <= set(placed), sorted(set(MODULES) - set(placed))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_follow_the_layers(name: str) -> None:
    allowed = ALLOWED[layer_of(name)]
    assert wsrpc_imports(name) <= allowed, sorted(wsrpc_imports(name) - allowed)
    if name in ISOLATED:
        assert wsrpc_imports(name) <= ISOLATED[name]


@pytest.mark.parametrize("name", sorted(CORE & set(MODULES)))
def test_the_core_does_no_io(name: str) -> None:
    roots = {imported.split(".")[0] for imported in imports_of(name)}
    assert not roots & IO_LIBRARIES, sorted(roots & IO_LIBRARIES)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_says_what_it_owns(name: str) -> None:
    # The opening docstring is the module's contract: what it is for.
    docstring = ast.get_docstring(ast.parse(MODULES[name].read_text(encoding="utf-8")))
    assert docstring and len(docstring) > 40
