"""The validator on its own (wsrpc.validation), without sockets."""

from __future__ import annotations

import builtins
import dataclasses
import datetime
import enum
import sys
from typing import Annotated, Any, TypedDict

import msgspec
import pytest

import wsrpc
from wsrpc import validation
from wsrpc._options import Options
from wsrpc.dispatch import resolve
from wsrpc.exceptions import ValidationError


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


def check(path: str, *args: Any, **kwargs: Any) -> tuple[list[Any], dict[str, Any] | None]:
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
