"""
Provider dispatch: resolve a dotted path on a provider, under the member rules.

The rules, which make member access safe by construction:

* Every segment of the path must be an identifier that neither starts nor
  ends with ``_``: no dunders, no private or "protected" names, nothing like
  ``__class__.__init__.__globals__``. This is checked for the whole path
  before any attribute is looked up.
* Attributes are looked up *statically*, in the instance's ``__dict__`` and
  the class's MRO, never with :func:`getattr`: no property, descriptor or
  ``__getattr__`` of the provider ever runs.
* A segment before the last one must name a plain object (a nested
  provider): an instance attribute or a non-descriptor class attribute whose
  type is neither builtin nor a class nor a module.
* The last segment must name a method defined in Python on the object's
  class (a plain function, a ``staticmethod`` or a ``classmethod``).
  Callables stored as data (an instance attribute holding a function or a
  lambda), builtins, classes and modules are refused.

A refusal raises :exc:`AccessRefused`; its message depends only on the
requested path and on the public shape of the provider, never on private
state.

Layer: the sans-I/O core (docs/architecture.md). Imports only the core:
no asyncio, no socket, no WebSocket library.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import FunctionType, GetSetDescriptorType, MethodType, ModuleType
from typing import Any

__all__ = [
    "MAX_PATH_LENGTH",
    "MAX_PATH_SEGMENTS",
    "PLAIN",
    "Resolver",
    "ASYNC",
    "STREAM",
    "AccessRefused",
    "check_provider",
    "is_remote_name",
    "resolve",
]

MAX_PATH_LENGTH = 256
"""Longest dotted path accepted, in characters."""
MAX_PATH_SEGMENTS = 8
"""Most segments in a dotted path (so at most 7 levels of nesting)."""

PLAIN, ASYNC, STREAM = 0, 1, 2
"""What :func:`resolve` says of a method: plain (runs inline), a coroutine
function (runs in a task), an async generator function (streams its items)."""

_MISSING: Any = object()
_type_mro = type.__dict__["__mro__"].__get__
_type_dict = type.__dict__["__dict__"].__get__
_type_module = type.__dict__["__module__"].__get__


class AccessRefused(Exception):
    """The path does not name a method the remote side may call."""


def resolve(provider: object, path: str) -> tuple[Callable[..., Any], int]:
    """
    Find the method ``path`` names on ``provider``.

    Returns:
        The callable, bound as needed, and its kind: :data:`PLAIN`,
        :data:`ASYNC` (a coroutine function) or :data:`STREAM` (an async
        generator function).

    Raises:
        AccessRefused: the path breaks a member rule or names no method.
    """
    if provider is None:
        raise AccessRefused("this side provides no methods")
    names = _paths.get(path)
    if names is None:
        names = _check_path(path)
    target = provider
    for index, name in enumerate(names[:-1]):
        target = _child(target, name, names[: index + 1])
    return _method(target, names[-1], path)


class Resolver:
    """
    :func:`resolve` for one provider, remembering the methods it found.

    Calls name the same few methods over and over: a path of one name that
    resolved to a method is answered from this object's own table, as the
    bound method :func:`resolve` returned, unless the instance's
    ``__dict__`` now holds that name (then :func:`resolve` refuses it, as
    always). Only such paths are kept, so the table holds at most one entry
    per method of the provider's class. Not for providers whose class or
    ``__dict__`` object is replaced after the first call: their methods are
    the ones found then.
    """

    __slots__ = ("_found", "_provider")

    def __init__(self, provider: object) -> None:
        self._provider = provider
        self._found: dict[str, tuple[Callable[..., Any], int, dict[str, Any] | None]] = {}

    def __call__(self, path: str) -> tuple[Callable[..., Any], int]:
        """As ``resolve(provider, path)``; raises :exc:`AccessRefused`."""
        found = self._found.get(path)
        if found is not None:
            func, kind, namespace = found
            if namespace is None or path not in namespace:
                return func, kind
        provider = self._provider
        func, kind = resolve(provider, path)
        if "." not in path:  # a method of the provider itself
            self._found[path] = (func, kind, _instance_dict(provider))
        return func, kind


def check_provider(provider: object) -> None:
    """Raise TypeError when ``provider`` cannot be a provider (a class, a module)."""
    if issubclass(type(provider), (type, ModuleType)):
        raise TypeError(
            f"a provider must be an instance, not {type(provider).__name__} {provider!r}"
        )


def is_remote_name(name: str) -> bool:
    """
    Whether a member may be called remotely, by its name alone.

    Names that start or end with ``_`` never are. The local proxies (the
    drivers) apply the same rule, raising :exc:`AttributeError`, which also
    keeps introspection (``copy``, ``pickle``, ``inspect``) from turning into
    remote calls.
    """
    return not (name.startswith("_") or name.endswith("_"))


def _check_path(path: str) -> list[str]:
    """The segments of ``path``, once it passed the name rules (then cached)."""
    if len(path) > MAX_PATH_LENGTH:
        raise AccessRefused("path too long")
    names = path.split(".")
    if len(names) > MAX_PATH_SEGMENTS:
        raise AccessRefused("path has too many segments")
    for name in names:
        if not (name.isidentifier() and is_remote_name(name)):
            raise AccessRefused(
                f"{path!r} is not callable: every segment must be an identifier "
                "that neither starts nor ends with '_'"
            )
    if len(_paths) >= _CACHE_SIZE:
        _paths.clear()
    _paths[path] = names
    return names


# Caches keyed by (class, name). Names come from the network, so the caches
# are bounded: when one is full it is simply emptied.
_CACHE_SIZE = 4096
_paths: dict[str, list[str]] = {}
_class_attrs: dict[tuple[type, str], Any] = {}
_methods: dict[tuple[type, str], tuple[FunctionType, str, int] | None] = {}


def _class_attr(cls: type, name: str) -> Any:
    """``name`` looked up in the MRO of ``cls`` without running any code."""
    key = (cls, name)
    try:
        return _class_attrs[key]
    except KeyError:
        pass
    value = _MISSING
    for base in _type_mro(cls):
        namespace = _type_dict(base)
        if name in namespace:
            value = namespace[name]
            break
    if len(_class_attrs) >= _CACHE_SIZE:
        _class_attrs.clear()
    _class_attrs[key] = value
    return value


def _instance_dict(obj: object) -> dict[str, Any] | None:
    # Only read __dict__ through the standard slot descriptor: a class could
    # define a property named __dict__, and that must not run.
    if type(_class_attr(type(obj), "__dict__")) is not GetSetDescriptorType:
        return None
    namespace = object.__getattribute__(obj, "__dict__")
    return namespace if type(namespace) is dict else None


def _is_descriptor(value: object) -> bool:
    return _class_attr(type(value), "__get__") is not _MISSING


def _child(obj: object, name: str, trail: list[str]) -> object:
    where = ".".join(trail)
    class_value = _class_attr(type(obj), name)
    if class_value is not _MISSING and _is_descriptor(class_value):
        # Properties, methods and other descriptors are not nested providers.
        raise AccessRefused(f"{where!r} is not a nested provider")
    namespace = _instance_dict(obj)
    if namespace is not None and name in namespace:
        value = namespace[name]
    elif class_value is not _MISSING:
        value = class_value
    else:
        raise AccessRefused(f"no remote object {where!r}")
    kind = type(value)
    if _type_module(kind) == "builtins" or issubclass(kind, (type, ModuleType)):
        raise AccessRefused(f"{where!r} is not a nested provider")
    return value


def _method(obj: object, name: str, path: str) -> tuple[Callable[..., Any], int]:
    namespace = _instance_dict(obj)
    if namespace is not None and name in namespace:
        raise AccessRefused(f"{path!r} is data, not a method")
    cls = type(obj)
    found = _method_of(cls, name)
    if found is None:
        raise AccessRefused(f"no remote method {path!r}")
    func, binding, kind = found
    if binding == "self":
        return MethodType(func, obj), kind
    if binding == "cls":
        return MethodType(func, cls), kind
    return func, kind


def _method_of(cls: type, name: str) -> tuple[FunctionType, str, int] | None:
    key = (cls, name)
    try:
        return _methods[key]
    except KeyError:
        pass
    found = _find_method(cls, name)
    if len(_methods) >= _CACHE_SIZE:
        _methods.clear()
    _methods[key] = found
    return found


def _find_method(cls: type, name: str) -> tuple[FunctionType, str, int] | None:
    value = _class_attr(cls, name)
    kind = type(value)
    if kind is FunctionType:
        func, binding = value, "self"
    elif kind is staticmethod and type(value.__func__) is FunctionType:
        func, binding = value.__func__, "static"
    elif kind is classmethod and type(value.__func__) is FunctionType:
        func, binding = value.__func__, "cls"
    else:
        return None
    if inspect.iscoroutinefunction(func):
        return func, binding, ASYNC
    if inspect.isasyncgenfunction(func):
        return func, binding, STREAM
    return func, binding, PLAIN
