"""
Types on the wire (``validate=True``): checking and converting values
against annotations, on both sides of a call.

**The side that runs a method** checks each incoming call against the
method's annotations. For each provider method a :class:`Validator` is
built once, from :func:`typing.get_type_hints` and
:func:`inspect.signature`, and cached by the function. It

* maps the positional and keyword arguments of an incoming call to the
  method's parameters, refusing unknown, missing and extra ones;
* converts each annotated argument with ``msgspec.convert(value, type,
  strict=True)``: a value whose wire form is not the annotated type's is
  refused, not coerced (``"1"`` is not an ``int``, a base64 string is not
  ``bytes``), while a rich type gets its value built from its wire form (a
  dataclass or ``TypedDict`` from a map, an ``Enum`` from its value, a
  ``UUID`` or ``Decimal`` from its text, a tuple from an array, a
  ``dict[int, str]`` from a map of ``"1"``-style keys); unannotated and
  ``Any`` parameters are passed as they came;
* checks the result (or, for an async generator annotated
  ``AsyncIterator[T]``, each item) against the return annotation on the way
  out, and turns a rich value into its wire form (:func:`wire_form`).

**The side that calls** converts from the remote Protocol's annotations
(:class:`RemoteTypes`, given the ``Remote`` type parameter): arguments of a
rich type go out in their wire form, and a result (or stream item) whose
annotation is a rich type is built from its wire form, strictly, so that
``await driver.now()`` annotated ``-> datetime`` returns a ``datetime``.
Values of plain types (``int``, ``str``, ``list[float]``, ...) travel as
themselves and are not touched on this side: the side that runs the method
checks them.

The wire forms are in ``docs/protocol.md`` ("Rich types"); a datetime with
a timezone is msgpack's timestamp, which the codec itself packs.

A mismatch raises :exc:`~wsrpc.exceptions.ValidationError`, whose message
names the parameter (``"argument 'a': Expected `int`, got `str`"``) or the
result (``"result: ..."``); the caller of a method that refused its
arguments receives it as a :exc:`~wsrpc.exceptions.RemoteError` named
``"ValidationError"``.

msgspec is an optional dependency (``pip install 'wsrpc[validate]'``),
imported on first use: :func:`require` checks for it when an option asks
for validation.

Layer: the sans-I/O core (docs/architecture.md). Imports only the core:
no asyncio, no socket, no WebSocket library.
"""

from __future__ import annotations

import collections.abc as abc
import datetime
import functools
import inspect
import types
import typing
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Mapping, Sequence
from typing import Any, cast

from .dispatch import is_remote_name
from .driver import CallFunction, DeferredStream, StartFunction, StreamFunction
from .exceptions import EncodeError, ValidationError

__all__ = [
    "NATIVE_JSON",
    "NATIVE_MSGPACK",
    "ConvertedItems",
    "RemoteTypes",
    "Signature",
    "Validator",
    "require",
    "type_argument",
    "validator_for",
    "value_checker",
    "wire_form",
]

INSTALL_HINT = "validate=True needs msgspec: pip install 'wsrpc[validate]'"

NATIVE_MSGPACK: tuple[type, ...] = (bytes, bytearray, datetime.datetime)
"""Types the msgpack codec sends as themselves (a datetime as the timestamp
ext, or its ISO text if naive); :func:`wire_form` leaves them alone."""
NATIVE_JSON: tuple[type, ...] = ()
"""The same for TGrid's JSON codec: none (bytes go as base64, datetimes as text)."""

_msgspec: Any = None
"""The msgspec module, once imported."""

# Types whose exact values msgspec's strict conversion returns unchanged:
# checking the type here spares the call for the commonest arguments.
_EXACT = frozenset({int, str, bytes, bool})
# Annotations whose values are plain data for the codec as they are.
_PLAIN_LEAVES = frozenset({int, float, str, bytes, bool, type(None), Any})
_PLAIN_ORIGINS = frozenset({list, tuple, dict, typing.Union, types.UnionType, typing.Literal})
# Map keys the wire carries (docs/protocol.md): other keys travel as text.
_PLAIN_KEYS = frozenset({str, bytes, Any})
# What a stream's annotations are: an async generator's, or, in a Protocol
# for wsrpc.sync, the blocking iterator its driver returns.
_STREAMS = frozenset({
    abc.AsyncIterator, abc.AsyncIterable, abc.AsyncGenerator,
    abc.Iterator, abc.Iterable, abc.Generator,
})  # fmt: skip
_AWAITABLES = frozenset({abc.Awaitable, abc.Coroutine})

# Convert as a decoder would: strictly; bytes only from bin (never base64
# text); map keys from their text ("1" for a dict[int, ...]).
_CONVERT = {"strict": True, "builtin_types": (bytes,), "str_keys": True}

_CACHE_SIZE = 4096
_validators: dict[tuple[Callable[..., Any], bool, tuple[type, ...]], Validator] = {}

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
            import msgspec.inspect  # the guards of :func:`_guard` read types with it
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        _msgspec = msgspec
    return _msgspec


def wire_form(value: Any, native: tuple[type, ...] = NATIVE_MSGPACK) -> Any:
    """
    ``value`` as plain data for a codec whose own types are ``native``.

    Dataclasses and ``msgspec.Struct`` become maps, ``Enum`` members their
    values, ``UUID``, ``Decimal``, ``date`` and ``time`` their text, sets
    and tuples arrays, and the keys of a map that are not ``str`` or
    ``bytes`` their text (``{1: "a"}`` travels as ``{"1": "a"}``).

    Raises:
        EncodeError: a value of a type that has no wire form.
    """
    try:
        return require().to_builtins(value, builtin_types=native, str_keys=True)
    except (TypeError, ValueError) as exc:
        raise EncodeError(f"cannot encode: {exc}") from None


MAX_INT_KEY_LENGTH = 20
"""Most characters of the text of an ``int`` map key (a 64-bit integer has at
most 20): longer ones could be built to share one hash (see :func:`_guard`)."""


def _guard(tp: Any, what: str) -> Callable[[Any], None] | None:
    """
    A check of raw values to run before they are converted to ``tp``, or
    None when there is nothing to check: **hash flooding**.

    Converting builds hashed containers: the keys of a dict, the items of a
    set. The wire's own keys are strings (whose hashes are salted per
    process); converted ones get the hash of their type, and for ``int``,
    ``UUID``, ``Decimal``, ``float`` or tuples that hash is the same in every
    process, so a peer could send 16,384 keys with one hash and make
    building the dict cost seconds (measured: 4.6 s for ``dict[int, int]``,
    32 s for ``dict[UUID, int]``). So:

    * ``int`` keys are accepted as text of at most :data:`MAX_INT_KEY_LENGTH`
      characters: at most about 48 ints that short share a hash, which costs nothing;
    * keys and set items of ``str``, ``bytes``, ``bool``, ``Enum``,
      ``Literal``, ``date``, ``datetime``, ``time`` and ``timedelta`` (salted
      hashes, or few values) need no check, nor set items of ``int`` (the wire
      carries only 64-bit ints);
    * any other key or set item type is refused when the annotation is
      first used (:exc:`TypeError`, an error of the method, not the call).
    """
    inspect_types = require().inspect
    memo: dict[int, Any] = {}
    return _guard_of(inspect_types.type_info(tp), what, inspect_types, memo)


_SALTED = frozenset({
    "StrType", "BytesType", "ByteArrayType", "BoolType", "EnumType", "LiteralType",
    "DateType", "DateTimeType", "TimeType", "TimeDeltaType", "NoneType",
})  # fmt: skip


def _hashed_ok(node: Any) -> bool:
    """Whether values of type ``node`` may be built as keys (or set items) from the wire."""
    name = type(node).__name__
    if name == "UnionType":
        return all(_hashed_ok(alternative) for alternative in node.types)
    return name in _SALTED or name == "IntType"


def _named(node: Any) -> str:
    """A msgspec type's name as the annotation spells it: ``UUIDType()`` is ``UUID``."""
    cls = getattr(node, "cls", None)
    if isinstance(cls, type):
        return cls.__name__
    return type(node).__name__.removesuffix("Type")


_PENDING: Any = object()
"""In the memo of :func:`_guard_of`: a type whose guard is being built."""


def _guard_of(node: Any, what: str, mi: Any, memo: dict[int, Any]) -> Callable[[Any], None] | None:
    key = id(node)
    found = memo.get(key, _MISSING)
    if found is _PENDING:
        # A recursive type (a tree of dataclasses): its guard, once built.
        def recursive(value: Any) -> None:
            check = memo[key]
            if check is not None:
                check(value)

        return recursive
    if found is not _MISSING:
        return cast("Callable[[Any], None] | None", found)
    memo[key] = _PENDING
    guard = _make_guard(node, what, mi, memo)
    memo[key] = guard
    return guard


_MISSING: Any = object()


def _make_guard(
    node: Any, what: str, mi: Any, memo: dict[int, Any]
) -> Callable[[Any], None] | None:
    if isinstance(node, mi.DictType):
        if not _hashed_ok(node.key_type):
            raise TypeError(
                f"{what}: dict keys of type {_named(node.key_type)} cannot be built from the"
                " network (their hashes can be made to collide); take dict[str, ...]"
            )
        int_keys = isinstance(node.key_type, mi.IntType)
        values = _guard_of(node.value_type, what, mi, memo)
        if not int_keys and values is None:
            return None

        def check_dict(value: Any) -> None:
            if type(value) is not dict:
                return
            if int_keys:
                for name in value:
                    if type(name) is str and len(name) > MAX_INT_KEY_LENGTH:
                        raise ValidationError(
                            f"{what}: an int map key is at most {MAX_INT_KEY_LENGTH} characters"
                        )
            if values is not None:
                for item in value.values():
                    values(item)

        return check_dict
    if isinstance(node, (mi.SetType, mi.FrozenSetType)):
        if not _hashed_ok(node.item_type):
            raise TypeError(
                f"{what}: set items of type {_named(node.item_type)} cannot be built from the"
                " network (their hashes can be made to collide); take list[...]"
            )
        return None  # items that pass are salted, few, or 64-bit ints
    if isinstance(node, (mi.ListType, mi.VarTupleType)):
        items = _guard_of(node.item_type, what, mi, memo)
        if items is None:
            return None

        def check_items(value: Any) -> None:
            if type(value) is list:
                for item in value:
                    items(item)

        return check_items
    if isinstance(node, (mi.TupleType, mi.NamedTupleType)):
        types_ = (
            node.item_types
            if isinstance(node, mi.TupleType)
            else [field.type for field in node.fields]
        )
        positions = [(i, g) for i, t in enumerate(types_) if (g := _guard_of(t, what, mi, memo))]
        if not positions:
            return None

        def check_positions(value: Any) -> None:
            if type(value) is list:
                for index, check in positions:
                    if index < len(value):
                        check(value[index])

        return check_positions
    if isinstance(node, (mi.DataclassType, mi.TypedDictType, mi.StructType)):
        fields = [
            (field.encode_name, index, g)
            for index, field in enumerate(node.fields)
            if (g := _guard_of(field.type, what, mi, memo)) is not None
        ]
        if not fields:
            return None

        def check_fields(value: Any) -> None:
            if type(value) is dict:
                for name, _, check in fields:
                    if name in value:
                        check(value[name])
            elif type(value) is list:  # an array_like Struct
                for _, index, check in fields:
                    if index < len(value):
                        check(value[index])

        return check_fields
    if isinstance(node, mi.UnionType):
        alternatives = [g for t in node.types if (g := _guard_of(t, what, mi, memo)) is not None]
        if not alternatives:
            return None

        def check_all(value: Any) -> None:
            for check in alternatives:
                check(value)

        return check_all
    return None


def _converter(tp: Any, what: str) -> Callable[[Any], Any] | None:
    """A function converting a value to ``tp`` strictly, or None to pass values as is."""
    if tp is Any or tp is object:
        return None
    msgspec = require()
    convert = msgspec.convert
    failed = msgspec.ValidationError
    guard = None if _is_plain(tp) else _guard(tp, what)
    if guard is not None:
        inner = _converter_unguarded(tp, what, convert, failed)
        assert inner is not None

        def guarded(value: Any) -> Any:
            guard(value)
            return inner(value)

        return guarded
    return _converter_unguarded(tp, what, convert, failed)


def _converter_unguarded(
    tp: Any, what: str, convert: Any, failed: type[Exception]
) -> Callable[[Any], Any]:
    msgspec = require()
    if tp in _EXACT:

        def exact(value: Any) -> Any:
            if type(value) is tp:
                return value
            try:
                return convert(value, tp, **_CONVERT)
            except failed as exc:
                raise ValidationError(f"{what}: {exc}") from None

        return exact

    def general(value: Any) -> Any:
        try:
            return convert(value, tp, **_CONVERT)
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
            return convert([value], wrapper, **_CONVERT).value
        except failed as exc:
            # Paths as if unwrapped: "at `$[0].y`" is "at `$.y`".
            message = str(exc).replace(" - at `$[0]`", "").replace("`$[0]", "`$")
            raise ValidationError(f"{what}: {message}") from None
        except TypeError as exc:
            raise TypeError(f"{what}: cannot validate against {tp!r}: {exc}") from None

    return wrapped


def _is_plain(tp: Any, tuples: bool = True) -> bool:
    """
    Whether values of ``tp`` are plain data the codec carries as themselves.

    With ``tuples=False``, whether they also arrive as themselves: a tuple
    goes out as an array but comes back a list.
    """
    if tp in _PLAIN_LEAVES:
        return True
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return all(type(arg) in _PLAIN_LEAVES for arg in typing.get_args(tp))
    if origin not in _PLAIN_ORIGINS or (origin is tuple and not tuples):
        return False
    arguments = typing.get_args(tp)
    if origin is dict and arguments and not _is_key(arguments[0]):
        return False
    return all(arg is Ellipsis or _is_plain(arg, tuples) for arg in arguments)


def _is_key(tp: Any) -> bool:
    """Whether map keys of type ``tp`` are ones the wire carries as themselves."""
    if tp in _PLAIN_KEYS:
        return True
    if typing.get_origin(tp) is typing.Literal:
        return all(type(arg) in (str, bytes) for arg in typing.get_args(tp))
    return False


def _encoder(tp: Any, what: str, native: tuple[type, ...]) -> Callable[[Any], Any] | None:
    """A function giving a value of ``tp`` its wire form; None if it is plain data."""
    if _is_plain(tp):
        return None
    to_builtins = require().to_builtins

    def encode(value: Any) -> Any:
        try:
            return to_builtins(value, builtin_types=native, str_keys=True)
        except (TypeError, ValueError) as exc:
            raise EncodeError(f"cannot encode {what}: {exc}") from None

    return encode


def _outgoing(tp: Any, what: str, native: tuple[type, ...]) -> Callable[[Any], Any] | None:
    """Checks a value of ``tp`` and gives it its wire form (results and items)."""
    check = _converter(tp, what)
    if check is None or _is_plain(tp):
        return check
    to_builtins = require().to_builtins

    def rich(value: Any) -> Any:
        return to_builtins(check(value), builtin_types=native, str_keys=True)

    return rich


def _returned(tp: Any) -> tuple[Any, Any]:
    """
    What a return annotation says comes back: ``(result type, item type)``.

    ``AsyncIterator[T]`` (and ``AsyncIterable``, ``AsyncGenerator``, and
    the blocking ``Iterator`` of a ``wsrpc.sync`` Protocol) is a stream of
    ``T``: no result; ``Awaitable[T]`` and ``Coroutine[..., T]`` (a Protocol
    written with plain ``def``) are ``T``. ``Any`` stands for "not checked".
    """
    origin = typing.get_origin(tp) or tp
    arguments = typing.get_args(tp)
    if origin in _STREAMS:
        return Any, arguments[0] if arguments else Any
    if origin in _AWAITABLES:
        return (arguments[-1] if arguments else Any), Any
    if tp is None or tp is type(None):
        return Any, Any
    return tp, Any


def type_argument(obj: object, index: int) -> Any:
    """
    The ``index``-th type parameter ``obj`` was made with; ``Any`` if unknown.

    Known for an object made in the subscripted form, ``Cls[A, B](...)``
    (Python sets ``__orig_class__`` on it, after ``__init__``), or whose
    class subclasses a subscripted one, ``class Mine(Cls[A, B])``. A type
    variable counts as unknown.
    """
    generic = getattr(obj, "__orig_class__", None)
    candidates = [generic] if generic is not None else []
    for cls in type(obj).__mro__:
        candidates.extend(cls.__dict__.get("__orig_bases__", ()))
    for candidate in candidates:
        arguments = typing.get_args(candidate)
        if len(arguments) > index:
            found = arguments[index]
            return Any if isinstance(found, typing.TypeVar) else found
    return Any


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
        "_exact",
        "_kw_required",
        "_name",
        "_needs",
        "_positional",
        "_required",
        "_var_keyword",
        "_var_positional",
        "item",
        "result",
    )

    def __init__(self, func: Callable[..., Any], bound: bool, native: tuple[type, ...]) -> None:
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
        # The commonest call: every positional parameter an int, str, bytes
        # or bool (or unchecked), all given, positionally, as exactly that
        # type: the arguments come back as they came, checked by one loop.
        exact: list[Any] = []
        for parameter in parameters[: len(self._positional)]:
            tp = hints.get(parameter.name, Any)
            exact.append(tp if tp in _EXACT else object if tp in (Any, object) else None)
        self._exact: tuple[Any, ...] | None = (
            tuple(exact) if None not in exact and not self._kw_required else None
        )
        result, item = _returned(hints.get("return", Any))
        self.result: Callable[[Any], Any] | None = _outgoing(result, "result", native)
        """Checks a result and gives its wire form, or raises; None: not checked."""
        self.item: Callable[[Any], Any] | None = _outgoing(item, "item", native)
        """The same for each item of a stream (an async generator's)."""

    def arguments(
        self, args: Sequence[Any], kwargs: Mapping[str, Any] | None
    ) -> tuple[Sequence[Any], dict[str, Any] | None]:
        """
        The call's arguments, converted, in the same shape (positional, keyword).

        Raises:
            ValidationError: an argument is missing, unknown, given twice, or
                not of its parameter's type.
        """
        exact = self._exact
        if exact is not None and not kwargs and len(args) == len(exact):
            for value, tp in zip(args, exact, strict=True):
                if type(value) is not tp and tp is not object:
                    break
            else:
                return args, None  # the same object: nothing to convert
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


def validator_for(func: Callable[..., Any], native: tuple[type, ...] = NATIVE_MSGPACK) -> Validator:
    """
    The validator of ``func`` (a function or a bound method), built once,
    for a codec that carries ``native`` types as themselves.

    Raises:
        ImportError: msgspec is not installed.
        NameError, TypeError: the annotations cannot be resolved or used.
    """
    bound = isinstance(func, types.MethodType)
    key = (func.__func__ if isinstance(func, types.MethodType) else func, bound, native)
    try:
        return _validators[key]
    except KeyError:
        pass
    validator = Validator(key[0], bound, native)
    if len(_validators) >= _CACHE_SIZE:
        _validators.clear()
    _validators[key] = validator
    return validator


# -- the calling side ---------------------------------------------------------------


class Signature:
    """How calls of one remote method convert: arguments out, result or items in."""

    __slots__ = ("_by_name", "_positional", "_var_keyword", "_var_positional", "item", "result")

    def __init__(self, method: Callable[..., Any], bound: bool, native: tuple[type, ...]) -> None:
        hints = typing.get_type_hints(method, include_extras=True)
        parameters = list(inspect.signature(method).parameters.values())
        if bound and parameters and parameters[0].kind in _POSITIONAL:
            parameters = parameters[1:]  # self
        self._positional: list[Callable[[Any], Any] | None] = []
        self._by_name: dict[str, Callable[[Any], Any] | None] = {}
        self._var_positional: Callable[[Any], Any] | None = None
        self._var_keyword: Callable[[Any], Any] | None = None
        for parameter in parameters:
            name, kind = parameter.name, parameter.kind
            encode = _encoder(hints.get(name, Any), f"argument {name!r}", native)
            if kind is inspect.Parameter.VAR_POSITIONAL:
                self._var_positional = encode
            elif kind is inspect.Parameter.VAR_KEYWORD:
                self._var_keyword = encode
            else:
                if kind in _POSITIONAL:
                    self._positional.append(encode)
                if kind is not inspect.Parameter.POSITIONAL_ONLY:
                    self._by_name[name] = encode
        if not any(self._positional) and not any(self._by_name.values()):
            self._positional, self._by_name = [], {}
        result, item = _returned(hints.get("return", Any))
        self.result = None if _is_plain(result, tuples=False) else _converter(result, "result")
        """Builds the annotated result from its wire form; None: the value as it came."""
        self.item = None if _is_plain(item, tuples=False) else _converter(item, "item")
        """The same for a stream's items."""

    @property
    def encodes(self) -> bool:
        """Whether some argument may need converting for the wire."""
        return bool(self._positional or self._by_name or self._var_positional or self._var_keyword)

    def encode(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """
        The arguments in their wire form. Arguments the method does not
        take are left as they are: the other side refuses them.

        Raises:
            EncodeError: an argument of a type that has no wire form.
        """
        positional = self._positional
        count = len(positional)
        rest = self._var_positional
        out = list(args)
        for index, value in enumerate(args):
            encode = positional[index] if index < count else rest
            if encode is not None:
                out[index] = encode(value)
        if kwargs:
            by_name, other = self._by_name, self._var_keyword
            converted: dict[str, Any] = {}
            for name, value in kwargs.items():
                encode = by_name.get(name, other)
                converted[name] = value if encode is None else encode(value)
            kwargs = converted
        return tuple(out), kwargs


def _resolve(remote: Any, path: str) -> tuple[Callable[..., Any], bool] | None:
    """The method ``path`` names in the Protocol ``remote``, and whether it takes self."""
    owner = remote
    *objects, last = path.split(".")
    for name in objects:
        if not isinstance(owner, type):
            return None
        try:
            owner = typing.get_type_hints(owner).get(name, getattr(owner, name, None))
        except Exception:  # an annotation that does not resolve: no conversion
            return None
    if not isinstance(owner, type):
        return None
    try:
        static = inspect.getattr_static(owner, last)
    except AttributeError:
        return None
    if isinstance(static, staticmethod):
        return static.__func__, False
    if isinstance(static, classmethod):
        return static.__func__, True
    return (static, True) if callable(static) else None


def _paths(owner: Any, prefix: str, seen: set[Any]) -> list[str]:
    """The dotted paths of the methods the Protocol ``owner`` declares, nested ones included."""
    if not isinstance(owner, type) or owner in seen or len(seen) > 64:
        return []
    seen.add(owner)
    paths: list[str] = []
    for name in dir(owner):
        if is_remote_name(name) and callable(inspect.getattr_static(owner, name, None)):
            paths.append(prefix + name)  # a method
    for name, hint in typing.get_type_hints(owner).items():
        if is_remote_name(name) and not callable(inspect.getattr_static(owner, name, None)):
            paths += _paths(hint, f"{prefix}{name}.", seen)  # an object: its methods
    return paths


async def _raise(exc: Exception) -> Any:
    raise exc


async def _converted_call(
    call: CallFunction,
    signature: Signature,
    path: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None,
) -> Any:
    if signature.encodes:
        args, kwargs = signature.encode(args, kwargs)
    value = await call(path, args, kwargs, timeout)
    return value if signature.result is None else signature.result(value)


def _converted_start(
    start: StartFunction,
    signature: Signature,
    path: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None,
) -> Generator[Any, None, Any]:
    """:func:`_converted_call` as a generator, around a :data:`~wsrpc.driver.StartFunction`."""
    if signature.encodes:
        args, kwargs = signature.encode(args, kwargs)
    value = yield from start(path, args, kwargs, timeout)
    return value if signature.result is None else signature.result(value)


class ConvertedItems:
    """
    The items of ``inner``, each passed through ``convert``: a stream's items
    built from their wire form as the caller takes them, or checked as the
    producer's generator yields them. :meth:`aclose` closes ``inner``.
    """

    __slots__ = ("_convert", "_inner")

    def __init__(self, inner: AsyncIterator[Any], convert: Callable[[Any], Any]) -> None:
        self._inner = inner
        self._convert = convert

    def __aiter__(self) -> ConvertedItems:
        return self

    async def __anext__(self) -> Any:
        return self._convert(await self._inner.__anext__())

    async def aclose(self) -> None:
        """Stop the stream (cancelling it on the peer, if it started)."""
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()


class RemoteTypes:
    """
    Conversion of the calls made to one remote Protocol, on the caller's side.

    Made by the acceptor or connector from its ``Remote`` type parameter,
    when it has ``validate=True``; :meth:`wrap` puts it around the functions
    that send calls and streams. A path the Protocol does not declare (or
    whose annotations do not resolve) is sent as it is.
    """

    __slots__ = ("_native", "_plain", "_remote", "_signatures")

    def __init__(self, remote: Any, native: tuple[type, ...] = NATIVE_MSGPACK) -> None:
        require()
        self._remote = remote
        self._native = native
        self._signatures: dict[str, Signature | None] = {}
        self._plain: bool | None = None  # converts_nothing(), once known

    def signature(self, path: str) -> Signature | None:
        """The conversions of a call to ``path``; None when there are none to make."""
        try:
            return self._signatures[path]
        except KeyError:
            pass
        found = _resolve(self._remote, path)
        # Annotations that cannot be used (a NameError, a refused dict key
        # type) raise here, at each call, rather than go unconverted.
        signature = None if found is None else Signature(found[0], found[1], self._native)
        if signature is not None and not (
            signature.encodes or signature.result is not None or signature.item is not None
        ):
            signature = None
        if len(self._signatures) >= _CACHE_SIZE:
            self._signatures.clear()
        self._signatures[path] = signature
        return signature

    def converts_nothing(self) -> bool:
        """
        Whether no method the Protocol declares (on it, or on the objects
        its attributes are annotated with) converts anything: then its
        calls need no wrapper at all. False when unsure.
        """
        if self._plain is None:
            try:
                paths = _paths(self._remote, "", set())
                self._plain = all(self.signature(path) is None for path in paths)
            except Exception:  # an annotation that does not resolve: decided per call
                self._plain = False
        return self._plain

    def wrap(
        self, call: CallFunction, stream: StreamFunction
    ) -> tuple[CallFunction, StreamFunction]:
        """
        ``call`` and ``stream`` converting as the Protocol says (the same
        functions when it converts nothing: plain types cost nothing).
        """
        if self.converts_nothing():
            return call, stream
        signature_of = self.signature

        known = self._signatures

        def converted_call(
            path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
        ) -> Coroutine[Any, Any, Any]:
            signature = known.get(path, _MISSING)  # the common case, inlined
            if signature is _MISSING:
                try:
                    signature = signature_of(path)
                except Exception as exc:  # raised where the call is awaited
                    return _raise(exc)
            if signature is None:
                return call(path, args, kwargs, timeout)
            return _converted_call(call, signature, path, args, kwargs, timeout)

        def converted_stream(
            path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
        ) -> AsyncIterator[Any]:
            try:
                signature = signature_of(path)
            except Exception as exc:  # raised where the stream is iterated
                return DeferredStream(functools.partial(_raise, exc))
            if signature is None:
                return stream(path, args, kwargs, timeout)
            found = signature

            async def opener() -> AsyncIterator[Any]:
                # Encoded on the first step, so that a bad argument raises
                # where the stream is iterated, as a failed call does.
                a, k = found.encode(args, kwargs) if found.encodes else (args, kwargs)
                items = stream(path, a, k, timeout)
                return items if found.item is None else ConvertedItems(items, found.item)

            return DeferredStream(opener)

        return converted_call, converted_stream

    def wrap_start(self, start: StartFunction) -> StartFunction:
        """
        ``start`` (what an awaited driver call runs, see
        :data:`~wsrpc.driver.StartFunction`) converting as :meth:`wrap`'s
        calls do, in a generator rather than a coroutine; the same function
        when the Protocol converts nothing.
        """
        if self.converts_nothing():
            return start
        signature_of = self.signature
        known = self._signatures

        def converted_start(
            path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
        ) -> Generator[Any, None, Any]:
            # Called where the call is awaited: an annotation that fails
            # raises there, as it does from wrap()'s calls.
            signature = known.get(path, _MISSING)  # the common case, inlined
            if signature is _MISSING:
                signature = signature_of(path)
            if signature is None:
                return start(path, args, kwargs, timeout)
            return _converted_start(start, signature, path, args, kwargs, timeout)

        return converted_start
