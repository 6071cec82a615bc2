"""The validator on its own (wsrpc.validation), without sockets."""

from __future__ import annotations

import builtins
import dataclasses
import datetime
import decimal
import enum
import sys
import uuid
from collections.abc import AsyncIterator, Generator, Sequence
from typing import Annotated, Any, Generic, Protocol, TypedDict, TypeVar

import msgspec
import pytest

import wsrpc
from wsrpc import validation
from wsrpc._options import Options
from wsrpc.dispatch import resolve
from wsrpc.exceptions import ValidationError

T1 = TypeVar("T1")
T2 = TypeVar("T2")


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Order(TypedDict):
    item: str
    count: int


class Provider:
    def add(self, a: int, b: int) -> int:
        return a + b

    def greet(self, name: str, *, polite: bool = False, suffix: str = "!") -> str:
        return name

    def loose(self, a, b: Any) -> None:  # type: ignore[no-untyped-def]
        pass

    def rich(self, p: Point, o: Order, c: Color, when: datetime.datetime) -> Point:
        return p

    def spread(self, first: int, *rest: int, **extra: str) -> list[int]:
        return [first, *rest]

    def only(self, a: int, /, b: int = 2) -> tuple[int, int]:
        return (a, b)

    def positive(self, n: Annotated[int, msgspec.Meta(ge=0)]) -> int:
        return n

    @staticmethod
    def static(a: float) -> float:
        return a

    @classmethod
    def klass(cls, a: str) -> str:
        return a

    def when(self) -> datetime.datetime:
        return datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)

    def colors(self) -> list[Color]:
        return [Color.RED]

    def raw(self) -> bytes:
        return b"x"

    def many(self, points: list[Point], label: str | None = None) -> int:
        return len(points)


def check(path: str, *args: Any, **kwargs: Any) -> tuple[Sequence[Any], dict[str, Any] | None]:
    func, _ = resolve(Provider(), path)
    return validation.validator_for(func).arguments(list(args), kwargs or None)


def refused(path: str, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ValidationError) as info:
        check(path, *args, **kwargs)
    return str(info.value)


def result(path: str, value: Any) -> Any:
    func, _ = resolve(Provider(), path)
    convert = validation.validator_for(func).result
    assert convert is not None
    return convert(value)


def test_valid_arguments_pass_unchanged() -> None:
    assert check("add", 1, 2) == ([1, 2], None)


def test_strict_refuses_a_string_for_an_int_naming_the_parameter() -> None:
    assert refused("add", "1", 2) == "argument 'a': Expected `int`, got `str`"
    assert refused("add", 1, "2") == "argument 'b': Expected `int`, got `str`"


def test_strict_refuses_a_bool_for_an_int_and_a_float_for_an_int() -> None:
    assert refused("add", True, 2) == "argument 'a': Expected `int`, got `bool`"
    assert "got `float`" in refused("add", 1.0, 2)


def test_an_int_is_a_float() -> None:
    assert check("static", 3) == ([3.0], None)


def test_keyword_arguments_are_checked_by_name() -> None:
    assert check("greet", "ann", polite=True) == (["ann"], {"polite": True})
    assert check("greet", name="ann") == ([], {"name": "ann"})
    assert refused("greet", "ann", polite="yes") == "argument 'polite': Expected `bool`, got `str`"


def test_missing_unknown_extra_and_twice() -> None:
    assert refused("add", 1) == "argument 'b': missing"
    assert refused("add", b=1) == "argument 'a': missing"
    assert refused("add", 1, 2, c=3) == "argument 'c': unexpected keyword argument"
    message = refused("add", 1, 2, 3)
    assert message.startswith("argument 3: unexpected") and "takes 2 positional" in message
    assert refused("add", 1, 2, a=1) == "argument 'a': given twice"


def test_defaults_may_be_left_out() -> None:
    assert check("only", 1) == ([1], None)
    assert check("greet", "ann") == (["ann"], None)


def test_positional_only_cannot_be_named() -> None:
    assert refused("only", b=1, a=1) == "argument 'a': unexpected keyword argument"


def test_var_positional_and_var_keyword_are_checked() -> None:
    assert check("spread", 1, 2, 3, tag="x") == ([1, 2, 3], {"tag": "x"})
    assert refused("spread", 1, 2, "3") == "argument 'rest': Expected `int`, got `str`"
    assert refused("spread", 1, tag=4) == "argument 'extra': Expected `str`, got `int`"


def test_unannotated_and_any_pass_as_is() -> None:
    marker = object()
    args, _ = check("loose", marker, "x")
    assert args[0] is marker and args[1] == "x"


def test_rich_types_are_built_for_the_method() -> None:
    args, _ = check(
        "rich",
        {"x": 1, "y": 2},
        {"item": "tea", "count": 3},
        "red",
        "2024-01-02T03:04:05Z",
    )
    assert args[0] == Point(1, 2)
    assert args[1] == {"item": "tea", "count": 3}
    assert args[2] is Color.RED
    assert args[3] == datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def test_rich_type_mismatch_names_the_field() -> None:
    message = refused(
        "rich", {"x": 1, "y": "2"}, {"item": "tea", "count": 3}, "red", "2024-01-02T03:04:05Z"
    )
    assert message == "argument 'p': Expected `int`, got `str` - at `$.y`"
    message = refused("rich", {"x": 1, "y": 2}, {"item": "tea"}, "green", "2024-01-02T03:04:05Z")
    assert message.startswith("argument 'o': Object missing required field `count`")


def test_generic_annotations_report_paths_as_if_unwrapped() -> None:
    args, _ = check("many", [{"x": 1, "y": 2}], None)
    assert args == [[Point(1, 2)], None]
    message = refused("many", [{"x": 1, "y": 2}, {"x": 1, "y": "2"}])
    assert message == "argument 'points': Expected `int`, got `str` - at `$[1].y`"
    assert refused("many", "ab") == "argument 'points': Expected `array`, got `str`"
    assert refused("many", [], label=1) == ("argument 'label': Expected `str | null`, got `int`")


def test_constraints_of_annotated_are_checked() -> None:
    assert check("positive", 0) == ([0], None)
    assert refused("positive", -1) == "argument 'n': Expected `int` >= 0"


def test_static_and_class_methods() -> None:
    assert refused("static", "1") == "argument 'a': Expected `float`, got `str`"
    assert refused("klass", 1) == "argument 'a': Expected `str`, got `int`"
    assert check("klass", "x") == (["x"], None)


def test_results_are_checked() -> None:
    assert result("add", 3) == 3
    with pytest.raises(ValidationError, match=r"^result: Expected `int`, got `str`$"):
        result("add", "3")
    assert result("only", [1, 2]) == (1, 2)


def test_rich_results_become_plain_data() -> None:
    assert result("rich", Point(1, 2)) == {"x": 1, "y": 2}
    # msgpack carries a datetime itself (its timestamp); TGrid's JSON as text.
    when = datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC)
    assert result("when", when) is when
    func, _ = resolve(Provider(), "when")
    as_json = validation.validator_for(func, validation.NATIVE_JSON).result
    assert as_json is not None
    assert as_json(when) == "2024-01-02T00:00:00Z"
    assert result("colors", [Color.BLUE]) == ["blue"]
    assert result("raw", b"\x00") == b"\x00"  # bytes stay bytes
    with pytest.raises(ValidationError, match=r"^result: "):
        result("rich", {"x": 1})


def test_no_return_annotation_or_none_is_not_checked() -> None:
    func, _ = resolve(Provider(), "loose")
    assert validation.validator_for(func).result is None


def test_validators_are_cached_by_function() -> None:
    first, _ = resolve(Provider(), "add")
    second, _ = resolve(Provider(), "add")
    assert first is not second
    assert validation.validator_for(first) is validation.validator_for(second)


def test_unresolvable_annotations_raise_name_error() -> None:
    class Broken:
        def run(self, a: Undefined) -> None:  # type: ignore[name-defined]  # noqa: F821
            pass

    func, _ = resolve(Broken(), "run")
    with pytest.raises(NameError):
        validation.validator_for(func)


def test_value_checker_for_headers() -> None:
    checker = validation.value_checker(Order, "invalid header")
    assert checker is not None
    assert checker({"item": "tea", "count": 1}) == {"item": "tea", "count": 1}
    with pytest.raises(ValidationError, match=r"^invalid header: Expected `object`, got `str`$"):
        checker("token")
    assert validation.value_checker(Any, "invalid header") is None


def test_the_exception_reaches_users_as_validation_error() -> None:
    assert wsrpc.ValidationError is ValidationError
    assert issubclass(ValidationError, wsrpc.WsrpcError)


def test_validate_without_msgspec_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_msgspec(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "msgspec":
            raise ImportError("No module named 'msgspec'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(validation, "_msgspec", None)
    monkeypatch.delitem(sys.modules, "msgspec")
    monkeypatch.setattr(builtins, "__import__", no_msgspec)
    with pytest.raises(ImportError, match=r"pip install 'wsrpc\[validate\]'"):
        Options(validate=True)
    with pytest.raises(ImportError, match=r"pip install 'wsrpc\[validate\]'"):
        wsrpc.sync.WebSocketConnector(None, validate=True)
    with pytest.raises(ImportError, match=r"pip install 'wsrpc\[validate\]'"):
        wsrpc.WebSocketServer(validate=True)
    Options()  # without validation, msgspec is never needed


# -- hash flooding: keys and set items built from the wire ----------------------

P = 2**61 - 1  # ints that differ by P share a hash


def test_long_int_keys_are_refused_before_a_dict_is_built() -> None:
    convert = validation.value_checker(dict[int, int], "argument 'm'")
    assert convert is not None
    colliding = {str(1 + k * P): 0 for k in range(16_384)}  # 4.6 s to build unguarded
    with pytest.raises(ValidationError, match=r"^argument 'm': an int map key is at most 20 "):
        convert(colliding)
    assert convert({"1": 2, "-3": 4, str(2**63): 5}) == {1: 2, -3: 4, 2**63: 5}


@pytest.mark.parametrize(
    ("tp", "message"),
    [
        (dict[uuid.UUID, int], "dict keys of type UUID"),
        (dict[decimal.Decimal, int], "dict keys of type Decimal"),
        (dict[float, int], "dict keys of type Float"),
        (dict[tuple[int, int], int], "dict keys of type Tuple"),
        (set[uuid.UUID], "set items of type UUID"),
        (list[frozenset[decimal.Decimal]], "set items of type Decimal"),
    ],
)
def test_key_types_whose_hashes_collide_are_refused(tp: Any, message: str) -> None:
    with pytest.raises(TypeError, match=f"^argument 'x': {message} cannot be built from the net"):
        validation.value_checker(tp, "argument 'x'")


@pytest.mark.parametrize(
    "tp",
    [dict[str, int], dict[Color, int], dict[datetime.date, int], set[int], set[str]],
)
def test_salted_or_bounded_keys_are_accepted(tp: Any) -> None:
    assert validation.value_checker(tp, "argument 'x'") is not None


@dataclasses.dataclass
class Tree:
    kids: list[Tree]
    counts: dict[int, int]


def test_keys_are_guarded_inside_recursive_types() -> None:
    convert = validation.value_checker(Tree, "argument 't'")
    assert convert is not None
    leaf = {"kids": [], "counts": {"5": 1}}
    assert convert({"kids": [leaf], "counts": {}}) == Tree([Tree([], {5: 1})], {})
    deep = {"kids": [{"kids": [], "counts": {"9" * 21: 1}}], "counts": {}}
    with pytest.raises(ValidationError, match="int map key is at most 20"):
        convert(deep)


# -- the calling side: RemoteTypes ----------------------------------------------


class Stamped(Protocol):
    async def stamp(self, p: Point, when: datetime.datetime, pair: tuple[int, str]) -> Point: ...
    async def keyed(self, m: dict[int, str]) -> dict[int, str]: ...
    async def plain(self, a: int) -> list[int]: ...
    def points(self, n: int) -> AsyncIterator[Point]: ...
    async def spread(self, *ids: uuid.UUID, **colors: Color) -> None: ...


class Outer(Protocol):
    inner: Stamped


class Wire:
    """A stand-in for the connection: records what is sent, answers ``reply``."""

    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.sent: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    async def call(
        self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        self.sent.append((path, args, kwargs))
        return self.reply

    def stream(
        self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> AsyncIterator[Any]:
        self.sent.append((path, args, kwargs))

        async def items() -> AsyncIterator[Any]:
            for item in self.reply:
                yield item

        return items()

    def start(
        self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Generator[Any, None, Any]:
        self.sent.append((path, args, kwargs))
        yield from ()  # a generator, as wsrpc.driver.StartFunction's are, that never waits
        return self.reply


def finish(steps: Generator[Any, None, Any]) -> Any:
    """Run a generator that never suspends to its return value."""
    with pytest.raises(StopIteration) as returned:
        steps.send(None)
    return returned.value.value


async def test_arguments_go_in_their_wire_form_and_results_come_back_typed() -> None:
    wire = Wire({"x": 1, "y": 2})
    call, _ = validation.RemoteTypes(Outer).wrap(wire.call, wire.stream)
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    got = await call("inner.stamp", (Point(3, 4), when, (1, "a")), {}, None)
    assert got == Point(1, 2)
    assert wire.sent == [("inner.stamp", ({"x": 3, "y": 4}, when, (1, "a")), {})]


def test_awaited_driver_calls_convert_as_calls_do() -> None:
    wire = Wire({"x": 1, "y": 2})
    start = validation.RemoteTypes(Outer).wrap_start(wire.start)
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    steps = start("inner.stamp", (Point(3, 4), when, (1, "a")), {}, None)
    assert wire.sent == []  # nothing before the first step
    assert finish(steps) == Point(1, 2)
    assert wire.sent == [("inner.stamp", ({"x": 3, "y": 4}, when, (1, "a")), {})]
    wire.reply = {"x": "1", "y": 2}
    with pytest.raises(ValidationError, match=r"^result: Expected `int`, got `str`"):
        finish(start("inner.stamp", (Point(0, 0), when, (0, "")), {}, None))
    with pytest.raises(wsrpc.EncodeError, match="argument 'p'"):
        finish(start("inner.stamp", (object(), None, None), {}, None))
    assert len(wire.sent) == 2  # the bad argument sent nothing
    # A path the Protocol does not declare goes to the wire's own function.
    assert finish(start("nowhere", (Color.RED,), {}, None)) == {"x": "1", "y": 2}
    assert wire.sent[-1] == ("nowhere", (Color.RED,), {})


def test_a_protocol_converting_nothing_leaves_the_start_function_as_it_is() -> None:
    wire = Wire(None)
    assert validation.RemoteTypes(PlainRemote).wrap_start(wire.start) == wire.start


async def test_non_string_keys_travel_as_text_and_come_back() -> None:
    wire = Wire({"1": "one"})
    call, _ = validation.RemoteTypes(Stamped).wrap(wire.call, wire.stream)
    assert await call("keyed", ({2: "two"},), {}, None) == {1: "one"}
    assert wire.sent[0][1] == ({"2": "two"},)


async def test_variadic_arguments_are_encoded_by_their_annotation() -> None:
    wire = Wire(None)
    call, _ = validation.RemoteTypes(Stamped).wrap(wire.call, wire.stream)
    await call("spread", (uuid.UUID(int=1),), {"c": Color.RED}, None)
    assert wire.sent[0][1:] == ((str(uuid.UUID(int=1)),), {"c": "red"})


async def test_plain_methods_and_unknown_paths_are_not_wrapped() -> None:
    wire = Wire(["not", "checked"])
    call, _ = validation.RemoteTypes(Stamped).wrap(wire.call, wire.stream)
    # list[int] is plain data: the side that runs the method checks it.
    assert await call("plain", (1,), {}, None) == ["not", "checked"]
    assert await call("nowhere", (Color.RED,), {}, None) == ["not", "checked"]
    assert wire.sent[1][1] == (Color.RED,)  # not converted: the other side refuses it


async def test_a_result_of_the_wrong_form_raises_validation_error() -> None:
    wire = Wire({"x": "1", "y": 2})
    call, _ = validation.RemoteTypes(Stamped).wrap(wire.call, wire.stream)
    with pytest.raises(ValidationError, match=r"^result: Expected `int`, got `str` - at `\$\.x`"):
        await call("stamp", (Point(0, 0), datetime.datetime.now(datetime.UTC), (0, "")), {}, None)


async def test_an_argument_without_wire_form_is_an_encode_error() -> None:
    wire = Wire(None)
    call, _ = validation.RemoteTypes(Stamped).wrap(wire.call, wire.stream)
    with pytest.raises(wsrpc.EncodeError, match="argument 'p'"):
        await call("stamp", (object(), None, None), {}, None)
    assert wire.sent == []


async def test_stream_items_come_back_typed() -> None:
    wire = Wire([{"x": 1, "y": 1}, {"x": 2, "y": 2}])
    _, stream = validation.RemoteTypes(Stamped).wrap(wire.call, wire.stream)
    items = stream("points", (2,), {}, None)
    assert wire.sent == []  # nothing sent before the first step
    assert [item async for item in items] == [Point(1, 1), Point(2, 2)]


async def test_annotations_the_caller_cannot_use_fail_the_call() -> None:
    class Bad(Protocol):
        # Such keys may be sent (the other side refuses them), not built here.
        async def keyed(self, m: dict[uuid.UUID, int]) -> dict[uuid.UUID, int]: ...

    wire = Wire(None)
    call, _ = validation.RemoteTypes(Bad).wrap(wire.call, wire.stream)
    pending = call("keyed", ({},), {}, None)  # raises where it is awaited
    with pytest.raises(TypeError, match="dict keys of type UUID"):
        await pending
    assert wire.sent == []


def test_type_argument_reads_the_subscripted_form_and_subclasses() -> None:
    class Box(Generic[T1, T2]):
        pass

    class IntBox(Box[int, Point]):
        pass

    assert validation.type_argument(Box[str, Color](), 1) is Color
    assert validation.type_argument(IntBox(), 0) is int
    assert validation.type_argument(Box(), 1) is Any
    unknown: Box[Any, Any] = Box[T1, T2]()  # type: ignore[valid-type]
    assert validation.type_argument(unknown, 0) is Any  # a type variable: unknown


def test_wire_form() -> None:
    assert validation.wire_form({1: Point(1, 2), "u": uuid.UUID(int=0)}) == {
        "1": {"x": 1, "y": 2},
        "u": "00000000-0000-0000-0000-000000000000",
    }
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    assert validation.wire_form([when, decimal.Decimal("1.5")]) == [when, "1.5"]
    assert validation.wire_form(when, validation.NATIVE_JSON) == "2026-01-01T00:00:00Z"
    with pytest.raises(wsrpc.EncodeError):
        validation.wire_form(object())


class NestedPlain(Protocol):
    async def sqrt(self, x: float) -> float: ...


class PlainRemote(Protocol):
    nested: NestedPlain

    async def add(self, a: int, b: int) -> int: ...
    def ticks(self, n: int) -> AsyncIterator[list[str]]: ...


class RichInside(Protocol):
    nested: Stamped  # one nested method converts: every call is looked up

    async def add(self, a: int, b: int) -> int: ...


def test_a_protocol_of_plain_types_is_not_wrapped_at_all() -> None:
    wire = Wire(None)
    plain = validation.RemoteTypes(PlainRemote).wrap(wire.call, wire.stream)
    assert plain == (wire.call, wire.stream)
    rich = validation.RemoteTypes(RichInside).wrap(wire.call, wire.stream)
    assert rich[0] != wire.call and rich[1] != wire.stream
