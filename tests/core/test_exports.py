"""The public surface of the ``wsrpc`` package: ``__all__`` and the exception tree."""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

import wsrpc
from wsrpc import exceptions


def _submodule_names() -> list[str]:
    return sorted(f"wsrpc.{info.name}" for info in pkgutil.iter_modules(wsrpc.__path__))


SUBMODULES = _submodule_names()

EXPECTED_EXCEPTIONS = {
    "BackplaneError",
    "ConnectError",
    "ConnectionClosedError",
    "EncodeError",
    "ProtocolError",
    "RejectedError",
    "RemoteError",
    "RpcTimeoutError",
    "StateError",
    "ValidationError",
    "WsrpcError",
}


def _public_names(module: types.ModuleType) -> set[str]:
    """Public names a module defines or re-exports, excluding submodules."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        # `from __future__ import annotations` leaves a feature object behind.
        and name != "annotations"
    }


def test_all_matches_the_names_defined_in_the_package() -> None:
    assert set(wsrpc.__all__) == _public_names(wsrpc)


def test_all_has_no_duplicates() -> None:
    assert len(wsrpc.__all__) == len(set(wsrpc.__all__))
    assert all(type(name) is str for name in wsrpc.__all__)


@pytest.mark.parametrize("name", wsrpc.__all__)
def test_every_name_in_all_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from wsrpc import {name}", namespace)
    assert namespace[name] is getattr(wsrpc, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from wsrpc import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(wsrpc.__all__)


def test_expected_exceptions_are_exported() -> None:
    assert set(wsrpc.__all__) >= EXPECTED_EXCEPTIONS
    for name in EXPECTED_EXCEPTIONS:
        assert getattr(wsrpc, name) is getattr(exceptions, name)


def _exported_exceptions() -> list[str]:
    return [
        name
        for name in wsrpc.__all__
        if isinstance(getattr(wsrpc, name), type)
        and issubclass(getattr(wsrpc, name), BaseException)
    ]


def test_exported_exceptions_are_the_expected_ones() -> None:
    assert set(_exported_exceptions()) == EXPECTED_EXCEPTIONS


@pytest.mark.parametrize("name", _exported_exceptions())
def test_every_exported_exception_subclasses_wsrpc_error(name: str) -> None:
    cls = getattr(wsrpc, name)
    assert issubclass(cls, wsrpc.WsrpcError)
    assert issubclass(cls, Exception)


@pytest.mark.parametrize("name", sorted(exceptions.__all__))
def test_every_exception_in_the_exceptions_module_subclasses_wsrpc_error(name: str) -> None:
    cls = getattr(exceptions, name)
    assert isinstance(cls, type)
    assert issubclass(cls, wsrpc.WsrpcError)


def test_wsrpc_error_is_an_exception_not_a_base_exception_only() -> None:
    assert issubclass(wsrpc.WsrpcError, Exception)
    assert not issubclass(wsrpc.WsrpcError, (RuntimeError, TimeoutError, ValueError))


def test_rpc_timeout_error_is_a_builtin_timeout_error() -> None:
    assert issubclass(wsrpc.RpcTimeoutError, TimeoutError)
    with pytest.raises(TimeoutError):
        raise wsrpc.RpcTimeoutError("slow")


def test_state_error_is_a_runtime_error() -> None:
    assert issubclass(wsrpc.StateError, RuntimeError)
    with pytest.raises(RuntimeError):
        raise wsrpc.StateError("not open")


def test_local_misuse_is_apart_from_peer_errors() -> None:
    # The tree keeps the user's own mistakes apart from the peer's.
    peer = (
        wsrpc.ProtocolError,
        wsrpc.RemoteError,
        wsrpc.ConnectionClosedError,
        wsrpc.RejectedError,
    )
    for local in (wsrpc.StateError, wsrpc.EncodeError):
        for other in peer:
            assert not issubclass(local, other)
            assert not issubclass(other, local)


def test_close_info_errors_carry_code_and_reason() -> None:
    for cls in (wsrpc.RejectedError, wsrpc.ConnectionClosedError):
        error = cls(4001, "go away")
        assert (error.code, error.reason) == (4001, "go away")
        assert "4001" in str(error) and "go away" in str(error)
        assert "go away" not in str(cls(1000, ""))


def test_remote_error_fields() -> None:
    error = wsrpc.RemoteError("ValueError", "bad", "tb")
    assert (error.name, error.message, error.traceback) == ("ValueError", "bad", "tb")
    assert str(error) == "ValueError: bad"
    assert str(wsrpc.RemoteError("KeyboardInterrupt", "")) == "KeyboardInterrupt"
    assert wsrpc.RemoteError("E", "m").traceback is None


def test_protocol_error_fields() -> None:
    error = wsrpc.ProtocolError(wsrpc.CloseCode.PROTOCOL_ERROR, "bad shape")
    assert error.code == 1002
    assert error.reason == "bad shape"


def test_version() -> None:
    assert isinstance(wsrpc.__version__, str)
    assert wsrpc.__version__.count(".") >= 1


def test_there_are_submodules() -> None:
    assert {
        "wsrpc.codecs",
        "wsrpc.dispatch",
        "wsrpc.exceptions",
        "wsrpc.messages",
        "wsrpc.protocol",
    } <= set(SUBMODULES)


@pytest.mark.parametrize("module_name", SUBMODULES)
def test_submodule_all_names_exist(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    assert names is not None, f"{module_name} has no __all__: every module states its surface"
    assert isinstance(names, list | tuple)
    assert len(names) == len(set(names)), f"duplicates in {module_name}.__all__"
    missing = [name for name in names if not hasattr(module, name)]
    assert missing == [], f"{module_name}.__all__ names undefined names {missing}"


@pytest.mark.parametrize("module_name", SUBMODULES)
def test_submodule_star_import(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert hasattr(module, "__all__"), f"{module_name} has no __all__"
    namespace: dict[str, object] = {}
    exec(f"from {module_name} import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(module.__all__)


@pytest.mark.parametrize("name", wsrpc.__all__)
def test_package_names_come_from_a_submodule_that_exports_them(name: str) -> None:
    value = getattr(wsrpc, name)
    exporters = [
        module_name
        for module_name in SUBMODULES
        if name in getattr(importlib.import_module(module_name), "__all__", ())
        and getattr(importlib.import_module(module_name), name) is value
    ]
    assert exporters, f"wsrpc.{name} is not in any submodule's __all__"
