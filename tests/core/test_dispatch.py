"""
Tests of :mod:`wsrpc.dispatch`: the member-access rules that decide which
dotted paths a peer may call on a provider.

The provider classes below carry recorders (a property getter, a
``__getattr__``, a ``__getattribute__``, metaclass hooks) that note when they
run. The rules say attribute lookup is static, so none of them may ever run,
whatever path is resolved, allowed or refused.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import types
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import pytest

from wsrpc.dispatch import (
    ASYNC,
    MAX_PATH_LENGTH,
    MAX_PATH_SEGMENTS,
    PLAIN,
    STREAM,
    AccessRefused,
    Resolver,
    check_provider,
    resolve,
)

TOUCHED: list[str] = []
"""What the side-effecting recorders saw; must stay empty."""


@pytest.fixture(autouse=True)
def untouched() -> Iterator[None]:
    TOUCHED.clear()
    yield
    assert TOUCHED == [], f"provider code ran during resolution: {TOUCHED}"


def run(result: object) -> object:
    """The value of a call's result, driving a coroutine without a loop."""
    if not inspect.iscoroutine(result):
        return result
    coro: Coroutine[Any, Any, Any] = result
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the coroutine suspended")  # pragma: no cover


# -- providers -----------------------------------------------------------------


class Deeper:
    def method(self) -> str:
        return "deeper.method"


class Nested:
    def __init__(self) -> None:
        self.deeper = Deeper()
        self.secret_data = 1

    def method(self) -> str:
        return "nested.method"

    async def amethod(self) -> str:
        return "nested.amethod"

    def _hidden(self) -> str:  # pragma: no cover - must never be called
        return "hidden"

    def __getattr__(self, name: str) -> Any:  # pragma: no cover - must never run
        TOUCHED.append(f"Nested.__getattr__({name})")
        return lambda: "from __getattr__"


class ClassNested:
    """Used as a class attribute of the provider: a nested provider too."""

    def method(self) -> str:
        return "class_nested.method"


class Inner:
    """A class stored as a class attribute: not a nested provider."""

    def method(self) -> str:  # pragma: no cover - must never be called
        return "Inner.method"

    @staticmethod
    def static() -> str:  # pragma: no cover - must never be called
        return "Inner.static"


class RecordingMeta(type):
    def __getattr__(cls, name: str) -> Any:  # pragma: no cover - must never run
        TOUCHED.append(f"RecordingMeta.__getattr__({name})")
        raise AttributeError(name)


def _meta_method(self: object) -> str:  # pragma: no cover - must never be called
    return "meta.method"


MetaMade = RecordingMeta("MetaMade", (), {"method": _meta_method})


class Descriptor:
    """A nested object that is also a descriptor: refused as a nested provider."""

    def __get__(self, obj: object, owner: type | None = None) -> Any:  # pragma: no cover
        TOUCHED.append("Descriptor.__get__")
        return Nested()

    def method(self) -> str:  # pragma: no cover - must never be called
        return "descriptor.method"


class Base:
    def inherited(self) -> str:
        return "inherited"

    async def ainherited(self) -> str:
        return "ainherited"


class Provider(Base):
    cls_attr = Inner
    class_nested = ClassNested()
    meta_made = MetaMade
    descriptor = Descriptor()
    count = 3
    label = "label"
    static_lambda: Callable[[], str] = staticmethod(lambda: "static lambda")
    builtin_in_class = len
    module_in_class = os

    def __init__(self) -> None:
        self.nested = Nested()
        self.lam: Callable[[], str] = lambda: "lam"
        self.os = os
        self.p = print
        self.data = 987654321
        self.text = "some text"
        self.items = [1, 2, 3]
        self.mapping = {"k": 1}
        self.bound = self.nested.method
        self.__dict__["shadowed"] = "data, not the method"
        self._private = "hunter2"
        self.name_ = "trailing"

    def method(self) -> str:
        return "method"

    async def amethod(self) -> str:
        return "amethod"

    @staticmethod
    def static(x: int) -> int:
        return x * 2

    @staticmethod
    async def astatic(x: int) -> int:
        return x * 3

    @classmethod
    def klass(cls) -> str:
        return cls.__name__

    @classmethod
    async def aklass(cls) -> str:
        return cls.__name__

    def shadowed(self) -> str:
        return "shadowed method"

    def trailing_(self) -> str:  # pragma: no cover - must never be called
        return "trailing_"

    def _private_method(self) -> str:  # pragma: no cover - must never be called
        return "private"

    def __call__(self) -> str:  # pragma: no cover - must never be called
        return "__call__"

    @property
    def prop(self) -> Nested:  # pragma: no cover - must never run
        TOUCHED.append("Provider.prop")
        return Nested()

    def __getattr__(self, name: str) -> Any:  # pragma: no cover - must never run
        TOUCHED.append(f"Provider.__getattr__({name})")
        return Nested()


class DictProvider(dict[str, int]):
    def total(self) -> int:
        return sum(self.values())


class ListProvider(list[int]):
    def total(self) -> int:
        return sum(self)


class GuardedProvider:
    """A provider whose every ordinary attribute access is recorded."""

    def __init__(self) -> None:
        object.__setattr__(self, "nested", Nested())

    def method(self) -> str:
        return "guarded.method"

    def __getattribute__(self, name: str) -> Any:  # pragma: no cover - must never run
        TOUCHED.append(f"GuardedProvider.__getattribute__({name})")
        return object.__getattribute__(self, name)


class MetaProvider(metaclass=RecordingMeta):
    nested_class = MetaMade

    def method(self) -> str:
        return "meta_provider.method"


class DictPropertyProvider:
    """A class defining a property named ``__dict__``: it must not run."""

    @property
    def __dict__(self) -> dict[str, Any]:  # type: ignore[override]  # pragma: no cover
        TOUCHED.append("DictPropertyProvider.__dict__")
        return {"method": lambda: "fake"}

    def method(self) -> str:
        return "real.method"


# -- the sweep -----------------------------------------------------------------

ALLOWED: dict[str, tuple[tuple[Any, ...], object, bool]] = {
    # path: (arguments, expected result, is_async)
    "method": ((), "method", False),
    "amethod": ((), "amethod", True),
    "static": ((21,), 42, False),
    "astatic": ((2,), 6, True),
    "klass": ((), "Provider", False),
    "aklass": ((), "Provider", True),
    "inherited": ((), "inherited", False),
    "ainherited": ((), "ainherited", True),
    "nested.method": ((), "nested.method", False),
    "nested.amethod": ((), "nested.amethod", True),
    "nested.deeper.method": ((), "deeper.method", False),
    "class_nested.method": ((), "class_nested.method", False),
    # A lambda wrapped in staticmethod in the class body is a Python method.
    "static_lambda": ((), "static lambda", False),
}

TOO_LONG = "a" * (MAX_PATH_LENGTH + 1)
TOO_MANY = ".".join(["nested"] * MAX_PATH_SEGMENTS + ["method"])

REFUSED: list[str] = [
    # names: dunders, private, trailing underscore, not identifiers
    "__class__",
    "__class__.__init__.__globals__",
    "__init__",
    "__dict__",
    "__call__",
    "__getattr__",
    "__getattribute__",
    "__reduce__",
    "__reduce_ex__",
    "__subclasshook__",
    "_private",
    "_private_method",
    "_private.upper",
    "name_",
    "trailing_",
    "nested._hidden",
    "nested.__class__",
    "nested.method.__globals__",
    "method.__func__",
    "method.__self__",
    "nested.__dict__",
    "a..b",
    "",
    ".",
    ".method",
    "method.",
    "1abc",
    "a-b",
    "a b",
    " method",
    "method ",
    "method()",
    "nested/method",
    "nested:method",
    "méthod\n",
    "\x00",
    TOO_LONG,
    TOO_MANY,
    # modules
    "os",
    "os.system",
    "os.path.join",
    "module_in_class",
    "module_in_class.system",
    # classes
    "cls_attr",
    "cls_attr.method",
    "cls_attr.static",
    "meta_made",
    "meta_made.method",
    # descriptors and properties
    "prop",
    "prop.anything",
    "prop.method",
    "descriptor",
    "descriptor.method",
    # callables stored as data
    "lam",
    "lam.anything",
    "p",
    "p.anything",
    "bound",
    "bound.anything",
    "builtin_in_class",
    # data attributes
    "data",
    "data.bit_length",
    "data.real",
    "text",
    "text.upper",
    "items",
    "items.append",
    "items.clear",
    "mapping",
    "mapping.keys",
    "mapping.clear",
    "count",
    "count.bit_length",
    "label",
    "label.upper",
    "shadowed",
    "nested.secret_data",
    # missing names (would be served by __getattr__ if it ran)
    "missing",
    "missing.method",
    "nested.missing",
    "nested.missing.method",
    "nested.deeper.missing",
    "method.anything",
    "nested.method.anything",
    "class_nested",
    "nested",
    "nested.deeper",
]


@pytest.mark.parametrize("path", list(ALLOWED))
def test_allowed_paths(path: str) -> None:
    args, expected, expected_async = ALLOWED[path]
    func, kind = resolve(Provider(), path)
    assert kind == (ASYNC if expected_async else PLAIN)
    assert run(func(*args)) == expected


def test_an_async_generator_method_is_a_stream() -> None:
    class Ticker:
        async def ticks(self, n: int) -> AsyncIterator[int]:
            for i in range(n):
                yield i

    func, kind = resolve(Ticker(), "ticks")
    assert kind == STREAM

    async def collect() -> list[int]:
        return [item async for item in func(3)]

    assert asyncio.run(collect()) == [0, 1, 2]


@pytest.mark.parametrize("path", REFUSED, ids=repr)
def test_refused_paths(path: str) -> None:
    with pytest.raises(AccessRefused):
        resolve(Provider(), path)


def test_whole_sweep_runs_no_provider_code() -> None:
    provider = Provider()
    for path in REFUSED:
        with pytest.raises(AccessRefused):
            resolve(provider, path)
    for path in ALLOWED:
        resolve(provider, path)
    # The autouse fixture asserts that TOUCHED is still empty; check it here
    # too so that the intent is visible.
    assert TOUCHED == []


def test_allowed_and_refused_lists_do_not_overlap() -> None:
    assert not set(ALLOWED) & set(REFUSED)


def test_methods_are_bound_to_the_right_object() -> None:
    first, second = Provider(), Provider()
    func_1, _ = resolve(first, "method")
    func_2, _ = resolve(second, "method")
    assert isinstance(func_1, types.MethodType) and isinstance(func_2, types.MethodType)
    assert func_1.__self__ is first
    assert func_2.__self__ is second
    nested, _ = resolve(second, "nested.method")
    assert isinstance(nested, types.MethodType)
    assert nested.__self__ is second.nested
    klass, _ = resolve(first, "klass")
    assert isinstance(klass, types.MethodType)
    assert klass.__self__ is Provider
    static, _ = resolve(first, "static")
    assert not isinstance(static, types.MethodType)


def test_subclass_classmethod_binds_to_the_subclass() -> None:
    class SubProvider(Provider):
        pass

    func, _ = resolve(SubProvider(), "klass")
    assert func() == "SubProvider"


def test_resolution_is_repeatable() -> None:
    provider = Provider()
    for _ in range(3):
        func, kind = resolve(provider, "nested.amethod")
        assert kind == ASYNC
        assert run(func()) == "nested.amethod"
        with pytest.raises(AccessRefused):
            resolve(provider, "os.system")


def test_is_async() -> None:
    provider = Provider()
    assert resolve(provider, "method")[1] == PLAIN
    assert resolve(provider, "amethod")[1] == ASYNC
    assert resolve(provider, "static")[1] == PLAIN
    assert resolve(provider, "astatic")[1] == ASYNC
    assert resolve(provider, "klass")[1] == PLAIN
    assert resolve(provider, "aklass")[1] == ASYNC


def test_instance_attribute_shadowing_a_method_is_refused() -> None:
    provider = Provider()
    with pytest.raises(AccessRefused):
        resolve(provider, "shadowed")
    # Without the shadowing data, the method is callable.
    del provider.__dict__["shadowed"]
    func, _ = resolve(provider, "shadowed")
    assert func() == "shadowed method"


def test_later_instance_data_still_refused() -> None:
    provider = Provider()
    assert resolve(provider, "method")[0]() == "method"
    provider.__dict__["method"] = lambda: "injected"
    with pytest.raises(AccessRefused):
        resolve(provider, "method")


# -- Resolver: resolve() for one provider, with its methods remembered ----------


def test_resolver_finds_what_resolve_finds_and_keeps_the_bound_method() -> None:
    provider = Provider()
    found = Resolver(provider)
    func, kind = found("method")
    assert (func(), kind) == ("method", PLAIN)
    # The same bound method again: answered from the resolver's table
    # (resolve() binds a new one each time).
    assert found("method")[0] is func
    assert resolve(provider, "method")[0] is not func
    assert found("amethod")[1] == ASYNC
    assert found("klass")[0]() == resolve(provider, "klass")[0]()


def test_resolver_refuses_what_resolve_refuses() -> None:
    found = Resolver(Provider())
    for path in ("shadowed", "os.system", "_private", "lam", "nope", "data"):
        with pytest.raises(AccessRefused):
            found(path)


def test_resolver_refuses_instance_data_set_after_the_method_was_found() -> None:
    provider = Provider()
    found = Resolver(provider)
    assert found("method")[0]() == "method"
    provider.__dict__["method"] = lambda: "injected"
    with pytest.raises(AccessRefused):
        found("method")
    del provider.__dict__["method"]
    assert found("method")[0]() == "method"


def test_resolver_resolves_nested_paths_every_time() -> None:
    provider = Provider()
    found = Resolver(provider)
    assert run(found("nested.amethod")[0]()) == "nested.amethod"
    provider.nested = None  # type: ignore[assignment]
    with pytest.raises(AccessRefused):
        found("nested.amethod")


def test_resolver_without_a_provider_refuses_everything() -> None:
    with pytest.raises(AccessRefused):
        Resolver(None)("method")


# -- dict and list providers ---------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "keys",
        "values",
        "items",
        "clear",
        "get",
        "pop",
        "popitem",
        "update",
        "setdefault",
        "copy",
        "fromkeys",
        "__getitem__",
        "__setitem__",
        "__len__",
        "__class__",
    ],
)
def test_dict_provider_inherited_methods_are_refused(path: str) -> None:
    provider = DictProvider(a=1)
    with pytest.raises(AccessRefused):
        resolve(provider, path)
    assert provider == {"a": 1}


def test_dict_provider_own_method_is_allowed() -> None:
    func, is_async = resolve(DictProvider(a=1, b=2), "total")
    assert is_async == PLAIN
    assert func() == 3


@pytest.mark.parametrize(
    "path", ["append", "clear", "extend", "pop", "sort", "reverse", "insert", "copy", "index"]
)
def test_list_provider_inherited_methods_are_refused(path: str) -> None:
    with pytest.raises(AccessRefused):
        resolve(ListProvider([1, 2]), path)


def test_list_provider_own_method_is_allowed() -> None:
    assert resolve(ListProvider([1, 2]), "total")[0]() == 3


# -- providers with hooks ------------------------------------------------------


def test_getattribute_override_never_runs() -> None:
    provider = GuardedProvider()
    func, is_async = resolve(provider, "method")
    assert is_async == PLAIN
    assert TOUCHED == []
    for path in ["missing", "nested.missing", "_x", "__class__", "os.system", "nested"]:
        with pytest.raises(AccessRefused):
            resolve(provider, path)
    nested, _ = resolve(provider, "nested.method")
    assert TOUCHED == []
    # Calling them does not need __getattribute__ either.
    assert func() == "guarded.method"
    assert nested() == "nested.method"


def test_metaclass_hooks_never_run() -> None:
    provider = MetaProvider()
    func, _ = resolve(provider, "method")
    assert func() == "meta_provider.method"
    for path in ["missing", "nested_class", "nested_class.method", "missing.method"]:
        with pytest.raises(AccessRefused):
            resolve(provider, path)


def test_metaclass_created_class_attribute_is_refused() -> None:
    provider = Provider()
    with pytest.raises(AccessRefused):
        resolve(provider, "meta_made.method")
    with pytest.raises(AccessRefused):
        resolve(MetaProvider(), "nested_class.method")


def test_class_created_by_metaclass_as_instance_attribute_is_refused() -> None:
    provider = Provider()
    provider.__dict__["made"] = RecordingMeta("Made", (), {"method": _meta_method})
    with pytest.raises(AccessRefused):
        resolve(provider, "made.method")
    with pytest.raises(AccessRefused):
        resolve(provider, "made")


def test_property_named_dict_never_runs() -> None:
    func, _ = resolve(DictPropertyProvider(), "method")
    assert func() == "real.method"


def test_instance_attribute_named_like_a_descriptor_is_refused() -> None:
    # An instance attribute does not make a class-level property reachable.
    provider = Provider()
    provider.__dict__["prop"] = Nested()
    with pytest.raises(AccessRefused):
        resolve(provider, "prop.method")


# -- provider None, check_provider ---------------------------------------------


@pytest.mark.parametrize("path", ["method", "a.b", "", "__class__", "x" * 1000])
def test_no_provider_refuses_everything(path: str) -> None:
    with pytest.raises(AccessRefused):
        resolve(None, path)


@pytest.mark.parametrize(
    "provider",
    [Provider, Nested, int, type, MetaMade, RecordingMeta, os, types, asyncio],
    ids=repr,
)
def test_check_provider_refuses_classes_and_modules(provider: object) -> None:
    with pytest.raises(TypeError):
        check_provider(provider)


@pytest.mark.parametrize(
    "provider",
    [Provider(), Nested(), DictProvider(), ListProvider(), GuardedProvider(), MetaProvider()],
    ids=lambda p: type(p).__name__,
)
def test_check_provider_accepts_instances(provider: object) -> None:
    check_provider(provider)  # does not raise
    # ... and resolution of a refused path on it still refuses.
    with pytest.raises(AccessRefused):
        resolve(provider, "__class__")


def test_check_provider_runs_no_provider_code() -> None:
    check_provider(GuardedProvider())
    check_provider(Provider())
    assert TOUCHED == []


# -- path limits ---------------------------------------------------------------


def _long_method_class(name: str) -> type:
    def method(self: object) -> str:
        return "long"

    return type("Long", (), {name: method})


def test_path_of_max_length_is_allowed() -> None:
    name = "m" * MAX_PATH_LENGTH
    func, _ = resolve(_long_method_class(name)(), name)
    assert func() == "long"


def test_path_over_max_length_is_refused_even_if_it_exists() -> None:
    name = "m" * (MAX_PATH_LENGTH + 1)
    with pytest.raises(AccessRefused):
        resolve(_long_method_class(name)(), name)


class Link:
    def __init__(self, depth: int) -> None:
        if depth:
            self.next = Link(depth - 1)

    def method(self) -> str:
        return "link.method"


def test_max_segments_is_allowed() -> None:
    path = ".".join(["next"] * (MAX_PATH_SEGMENTS - 1) + ["method"])
    func, _ = resolve(Link(MAX_PATH_SEGMENTS), path)
    assert func() == "link.method"


def test_too_many_segments_is_refused_even_if_it_exists() -> None:
    path = ".".join(["next"] * MAX_PATH_SEGMENTS + ["method"])
    assert len(path) <= MAX_PATH_LENGTH
    with pytest.raises(AccessRefused):
        resolve(Link(MAX_PATH_SEGMENTS + 1), path)


def test_limits() -> None:
    assert MAX_PATH_LENGTH == 256
    assert MAX_PATH_SEGMENTS == 8


# -- refusal messages ----------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["_private", "_private.upper", "data", "text", "mapping", "nested.secret_data"]
)
def test_refusal_message_reveals_no_private_state(path: str) -> None:
    with pytest.raises(AccessRefused) as info:
        resolve(Provider(), path)
    message = str(info.value)
    assert message
    for secret in ("hunter2", "987654321", "some text", "'k': 1"):
        assert secret not in message


def test_refusal_message_is_the_same_whatever_the_private_value() -> None:
    first, second = Provider(), Provider()
    second.data = 5
    second.__dict__["_private"] = "other"
    for path in ["_private", "data", "missing", "nested.missing"]:
        with pytest.raises(AccessRefused) as one:
            resolve(first, path)
        with pytest.raises(AccessRefused) as two:
            resolve(second, path)
        assert str(one.value) == str(two.value)
