"""protocol/ is sans-io: no event loop, network, libp2p, clock or daemon imports (PROTOCOL.md).

The daemon and the tests run the same protocol code; this keeps it that way. Checked on the
source (AST), so a lazy import inside a function is caught too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PROTOCOL_DIR = Path(__file__).resolve().parent.parent / "protocol"
FORBIDDEN = {
    "trio", "anyio", "asyncio", "libp2p", "multiaddr", "socket", "ssl", "select", "selectors",
    "threading", "subprocess", "time", "gossipd", "pickle", "marshal", "http", "urllib",
}
ALLOWED_THIRD_PARTY = {"blake3", "msgpack", "nacl", "numpy"}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted(PROTOCOL_DIR.glob("*.py")), ids=lambda p: p.name)
def test_protocol_module_is_pure(path: Path) -> None:
    roots = imported_roots(path)
    assert not roots & FORBIDDEN, f"{path.name} imports {sorted(roots & FORBIDDEN)}"
    third_party = {r for r in roots if r not in sys.stdlib_module_names and r != "__future__"}
    assert third_party <= ALLOWED_THIRD_PARTY, f"{path.name} imports {sorted(third_party)}"


def test_the_check_sees_lazy_imports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import trio.lowlevel\n    from socket import socket\n")
    assert {"trio", "socket"} <= imported_roots(bad)
