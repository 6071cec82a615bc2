"""The connection registry on its own, without sockets: membership both ways."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from wsrpc._registry import LocalRegistry


@dataclass(eq=False)
class Conn:
    id: int
    is_closed: bool = False


def make(registry: LocalRegistry[Conn], count: int) -> list[Conn]:
    conns = [Conn(registry.new_id()) for _ in range(count)]
    for conn in conns:
        registry.add(conn)
    return conns


def test_ids_are_fresh_and_fit_a_signed_64_bit_column() -> None:
    registry: LocalRegistry[Conn] = LocalRegistry()
    ids = [registry.new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(0 <= i < 2**63 for i in ids)


def test_membership_is_kept_both_ways() -> None:
    registry: LocalRegistry[Conn] = LocalRegistry()
    a, b = make(registry, 2)
    assert registry.join("room", a) and registry.join("room", b) and registry.join("x", a)
    assert registry.join("room", a)  # again: no effect, still a member
    assert dict(registry.members("room")) == {a.id: a, b.id: b}
    assert registry.groups_of(a.id) == {"room", "x"}
    registry.leave("x", a)
    assert registry.groups_of(a.id) == {"room"}
    assert sorted(registry.group_names()) == ["room"]  # an empty group is gone
    registry.remove(a)  # leaves every group
    assert dict(registry.members("room")) == {b.id: b}
    assert registry.groups_of(a.id) == frozenset()
    assert a.id not in registry.connections
    registry.remove(b)
    assert registry.group_names() == [] and not registry.connections


def test_a_closed_connection_never_joins() -> None:
    registry: LocalRegistry[Conn] = LocalRegistry()
    (a,) = make(registry, 1)
    a.is_closed = True
    assert not registry.join("room", a)
    assert registry.group_names() == [] and registry.groups_of(a.id) == frozenset()


def test_ownership_is_by_identity() -> None:
    registry: LocalRegistry[Conn] = LocalRegistry()
    (a,) = make(registry, 1)
    stranger = Conn(a.id)  # the same id, another object
    assert registry.owns(a) and not registry.owns(stranger) and not registry.owns(object())
    registry.remove(stranger)  # removing a stranger removes nothing
    assert registry.owns(a)


def test_views_are_read_only() -> None:
    registry: LocalRegistry[Conn] = LocalRegistry()
    (a,) = make(registry, 1)
    registry.join("room", a)
    with pytest.raises(TypeError):
        registry.connections[99] = a  # type: ignore[index]
    with pytest.raises(TypeError):
        registry.members("room")[99] = a  # type: ignore[index]


async def test_wait_idle_waits_for_tracked_tasks() -> None:
    registry: LocalRegistry[Conn] = LocalRegistry()
    release = asyncio.Event()
    done: list[int] = []

    async def job(n: int) -> None:
        await release.wait()
        done.append(n)

    for n in range(3):
        registry.track(job(n))
    waiter = asyncio.ensure_future(registry.wait_idle())
    await asyncio.sleep(0)
    assert not waiter.done()
    release.set()
    await asyncio.wait_for(waiter, 5)
    assert sorted(done) == [0, 1, 2]
