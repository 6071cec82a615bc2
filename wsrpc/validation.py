"""
Checking calls against a provider method's annotations (``validate=True``).

For each provider method a :class:`Validator` is built once, from
:func:`typing.get_type_hints` and :func:`inspect.signature`, and cached by
the function. It

* maps the positional and keyword arguments of an incoming call to the
  method's parameters, refusing unknown, missing and extra ones;
* converts each annotated argument with ``msgspec.convert(value, type,
  strict=True)``: a value whose wire form is not the annotated type's is
  refused, not coerced (``"1"`` is not an ``int``), while a rich type gets
  its value built from its wire form (a dataclass or ``TypedDict`` from a
  map, an ``Enum`` from its value, a ``datetime`` from its ISO 8601 text);
  unannotated and ``Any`` parameters are passed as they came;
* checks the result against the return annotation on the way out, and
  turns a rich result into plain data for the wire (``msgspec.to_builtins``).

A mismatch raises :exc:`~wsrpc.exceptions.ValidationError`, whose message
names the parameter (``"argument 'a': Expected `int`, got `str`"``) or the
result (``"result: ..."``); the caller receives it as a
:exc:`~wsrpc.exceptions.RemoteError` named ``"ValidationError"``.

msgspec is an optional dependency (``pip install 'wsrpc[validate]'``),
imported on first use: :func:`require` checks for it when an option asks
for validation.

Layer: the sans-I/O core (docs/architecture.md). Imports only the core:
no asyncio, no socket, no WebSocket library.
"""

from __future__ import annotations

import collections.abc as abc
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .exceptions import ValidationError

__all__ = ["Validator", "require", "validator_for", "value_checker"]

INSTALL_HINT = "validate=True needs msgspec: pip install 'wsrpc[validate]'"

_msgspec: Any = None
"""The msgspec module, once imported."""

# Types whose exact values msgspec's strict conversion returns unchanged:
# checking the type here spares the call for the commonest arguments.
_EXACT = frozenset({int, str, bytes, bool})
# Annotations whose values are plain data for the codec as they are.
_PLAIN_LEAVES = frozenset({int, float, str, bytes, bool, type(None), Any})
_PLAIN_ORIGINS = frozenset({list, tuple, dict, typing.Union, types.UnionType, typing.Literal})

_CACHE_SIZE = 4096
_validators: dict[tuple[Callable[..., Any], bool], Validator] = {}

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def require() -> Any:
    """
    The msgspec module, imported now if it was not.

    Raises:
        ImportError: msgspec is not installed (the message says how to get it).
    """
    global _msgspec
    if _msgspec is None:
        try:
            import msgspec
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        _msgspec = msgspec
    return _msgspec


def _converter(tp: Any, what: str) -> Callable[[Any], Any] | None:
    """A function converting a value to ``tp`` strictly, or None to pass values as is."""
    if tp is Any or tp is object:
        return None
    msgspec = require()
    convert = msgspec.convert
    failed = msgspec.ValidationError
    if tp in _EXACT:

        def exact(value: Any) -> Any:
            if type(value) is tp:
                return value
            try:
                return convert(value, tp, strict=True)
            except failed as exc:
                raise ValidationError(f"{what}: {exc}") from None

        return exact

    def general(value: Any) -> Any:
        try:
            return convert(value, tp, strict=True)
        except failed as exc:
            raise ValidationError(f"{what}: {exc}") from None
        except TypeError as exc:
            # Not a type msgspec knows: a bug in the annotation, not the call.
            raise TypeError(f"{what}: cannot validate against {tp!r}: {exc}") from None

    if typing.get_origin(tp) is None:
        return general  # a class: msgspec caches what it learnt of it on the class
    # A generic alias (list[int], X | None, Annotated[...]) has nowhere to
    # keep msgspec's analysis, which is then redone at every call: wrapped
    # as the one field of a struct, it is done once (half the cost).
    wrapper = msgspec.defstruct("Value", [("value", tp)], array_like=True)

    def wrapped(value: Any) -> Any:
        try:
            return convert([value], wrapper, strict=True).value
        except failed as exc:
            # Paths as if unwrapped: "at `$[0].y`" is "at `$.y`".
            message = str(exc).replace(" - at `$[0]`", "").replace("`$[0]", "`$")
            raise ValidationError(f"{what}: {message}") from None
        except TypeError as exc:
            raise TypeError(f"{what}: cannot validate against {tp!r}: {exc}") from None

    return wrapped


def _is_plain(tp: Any) -> bool:
    """Whether values of ``tp`` are already plain data the codec encodes."""
    if tp in _PLAIN_LEAVES:
        return True
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return all(type(arg) in _PLAIN_LEAVES for arg in typing.get_args(tp))
    if origin not in _PLAIN_ORIGINS:
        return False
    return all(arg is Ellipsis or _is_plain(arg) for arg in typing.get_args(tp))


def value_checker(tp: Any, what: str) -> Callable[[Any], Any] | None:
    """
    A function that converts a value strictly to ``tp``, or None for ``Any``.

    It raises :exc:`ValidationError` with a message starting with ``what``.
    Used for the header (``what="invalid header"``).
    """
    return _converter(tp, what)


class Validator:
    """
    The checks of one provider method: its arguments and its result.

    Built by :func:`validator_for`; see the module's documentation.
    """

    __slots__ = (
        "_by_name",
        "_kw_required",
        "_name",
        "_needs",
        "_positional",
        "_required",
        "_var_keyword",
        "_var_positional",
        "result",
    )

    def __init__(self, func: Callable[..., Any], bound: bool) -> None:
        self._name = getattr(func, "__qualname__", repr(func))
        hints = typing.get_type_hints(func, include_extras=True)
        parameters = list(inspect.signature(func).parameters.values())
        if bound and parameters and parameters[0].kind in _POSITIONAL:
            parameters = parameters[1:]  # self or cls
        # Positional parameters in order; every parameter a keyword may
        # name; those without a default.
        self._positional: list[tuple[str, Callable[[Any], Any] | None]] = []
        self._by_name: dict[str, tuple[int, Callable[[Any], Any] | None]] = {}
        self._var_positional: tuple[str, Callable[[Any], Any] | None] | None = None
        self._var_keyword: tuple[str, Callable[[Any], Any] | None] | None = None
        self._required: list[tuple[int, str]] = []
        for parameter in parameters:
            name, kind = parameter.name, parameter.kind
            check = _converter(hints.get(name, Any), f"argument {name!r}")
            if kind is inspect.Parameter.VAR_POSITIONAL:
                self._var_positional = (name, check)
                continue
            if kind is inspect.Parameter.VAR_KEYWORD:
                self._var_keyword = (name, check)
                continue
            index = len(self._positional) if kind in _POSITIONAL else -1
            if index >= 0:
                self._positional.append((name, check))
            if kind is not inspect.Parameter.POSITIONAL_ONLY:
                self._by_name[name] = (index, check)
            if parameter.default is inspect.Parameter.empty:
                self._required.append((index, name))
        # Calls of only positional arguments, at least this many, miss none.
        self._needs = max((index + 1 for index, _ in self._required), default=0)
        self._kw_required = any(index < 0 for index, _ in self._required)
        returns = hints.get("return", Any)
        self.result: Callable[[Any], Any] | None = None
        """Converts a result for the wire, or raises; None when it is not checked."""
        if returns is not None and returns is not type(None) and _returns_value(returns):
            check = _converter(returns, "result")
            if check is not None and not _is_plain(returns):
                to_builtins = require().to_builtins
                convert = check

                def rich(value: Any) -> Any:
                    return to_builtins(convert(value), builtin_types=(bytes,))

                check = rich
            self.result = check

    def arguments(
        self, args: Sequence[Any], kwargs: Mapping[str, Any] | None
    ) -> tuple[list[Any], dict[str, Any] | None]:
        """
        The call's arguments, converted, in the same shape (positional, keyword).

        Raises:
            ValidationError: an argument is missing, unknown, given twice, or
                not of its parameter's type.
        """
        positional = self._positional
        count = len(positional)
        converted: list[Any] = []
        for index, value in enumerate(args):
            if index < count:
                name, check = positional[index]
            elif self._var_positional is not None:
                name, check = self._var_positional
            else:
                raise ValidationError(
                    f"argument {index + 1}: unexpected, {self._name}() takes "
                    f"{count} positional argument{'' if count == 1 else 's'}, got {len(args)}"
                )
            converted.append(value if check is None else check(value))
        new_kwargs: dict[str, Any] | None = None
        if kwargs:
            new_kwargs = {}
            for name, value in kwargs.items():
                found = self._by_name.get(name)
                if found is not None:
                    index, check = found
                    if 0 <= index < len(args):
                        raise ValidationError(f"argument {name!r}: given twice")
                elif self._var_keyword is not None:
                    check = self._var_keyword[1]
                else:
                    raise ValidationError(f"argument {name!r}: unexpected keyword argument")
                new_kwargs[name] = value if check is None else check(value)
        if not kwargs and len(args) >= self._needs and not self._kw_required:
            return converted, new_kwargs
        for index, name in self._required:
            if (index < 0 or index >= len(args)) and (not kwargs or name not in kwargs):
                raise ValidationError(f"argument {name!r}: missing")
        return converted, new_kwargs


def _returns_value(tp: Any) -> bool:
    """False for generator annotations: a stream's items are not checked (yet)."""
    origin = typing.get_origin(tp) or tp
    return origin not in (
        abc.AsyncIterator,
        abc.AsyncIterable,
        abc.AsyncGenerator,
        abc.Iterator,
        abc.Iterable,
        abc.Generator,
        abc.Awaitable,
        abc.Coroutine,
    )


def validator_for(func: Callable[..., Any]) -> Validator:
    """
    The validator of ``func`` (a function or a bound method), built once.

    Raises:
        ImportError: msgspec is not installed.
        NameError, TypeError: the annotations cannot be resolved or used.
    """
    bound = isinstance(func, types.MethodType)
    key = (func.__func__ if isinstance(func, types.MethodType) else func, bound)
    try:
        return _validators[key]
    except KeyError:
        pass
    validator = Validator(key[0], bound)
    if len(_validators) >= _CACHE_SIZE:
        _validators.clear()
    _validators[key] = validator
    return validator
