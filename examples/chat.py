"""
A chat room: the server calls its clients back.

Each client connects with its name in the header. The server keeps the
accepted clients in a :class:`Room`; when one calls ``send(text)``, the room
calls ``on_message(name, text)`` on every member's driver at once. Members
are told when someone joins or leaves through ``on_notice(text)``.

Things worth noticing:

* calls go both ways on one connection: the client calls ``send``, and while
  that call runs the server calls ``on_message`` on every client, the sender
  included;
* the broadcast uses ``asyncio.gather(..., return_exceptions=True)``, so a
  member that is gone (its call fails with ``ConnectionClosedError``) or
  whose callback raises does not fail the delivery to the others;
* the handler waits for the client to leave (``await acceptor.join()``) and
  removes it from the room in a ``finally``;
* nothing is synchronised with sleeps: ``send`` returns once every member has
  been called, and the script waits for join and leave notices on events.

Three clients chat, then leave one by one::

    python examples/chat.py
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypedDict

import wsrpc


class Header(TypedDict):
    """Who is joining."""

    name: str


class ChatClientRemote(Protocol):
    """What the server may call on each client."""

    async def on_message(self, sender: str, text: str) -> None: ...
    async def on_notice(self, text: str) -> None: ...


class ChatRoomRemote(Protocol):
    """What each client may call on the server."""

    async def send(self, text: str) -> int:
        """Say ``text`` to the room; returns how many members received it."""
        ...

    async def members(self) -> list[str]: ...


# -- the server ---------------------------------------------------------------

NAME_REQUIRED = 4000
NAME_TAKEN = 4009


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    driver: ChatClientRemote


class Room:
    """The accepted clients, by connection id, and the room's handler."""

    def __init__(self) -> None:
        self._members: dict[int, Member] = {}
        self._names: set[str] = set()  # taken, including by clients being accepted

    def names(self) -> list[str]:
        return [member.name for member in self._members.values()]

    async def broadcast(self, deliver: Callable[[ChatClientRemote], Awaitable[None]]) -> int:
        """Call ``deliver`` on every member concurrently; return how many succeeded."""
        # A snapshot: members may join or leave while the calls are in flight.
        members = list(self._members.values())
        results = await asyncio.gather(
            *(deliver(member.driver) for member in members), return_exceptions=True
        )
        # A failed delivery (a member that just left, a callback that raised)
        # is that member's problem, not the sender's: count it and go on.
        return sum(1 for result in results if not isinstance(result, BaseException))

    async def handler(
        self, acceptor: wsrpc.WebSocketAcceptor[Header, Session, ChatClientRemote]
    ) -> None:
        name = _valid_name(acceptor.header)
        if name is None:
            await acceptor.reject(NAME_REQUIRED, "a name of 1 to 20 characters is required")
            return
        if name in self._names:
            await acceptor.reject(NAME_TAKEN, f"{name!r} is already in the room")
            return
        # Taken before the first await, so that two clients with the same name
        # connecting at once cannot both pass the check above.
        self._names.add(name)
        try:
            await acceptor.accept(Session(self, name))
            # The driver exists only once the client is accepted.
            self._members[acceptor.id] = Member(name, acceptor.get_driver())
            await self.broadcast(lambda client: client.on_notice(f"{name} joined"))
            # Returns when the client leaves (or the server closes): the
            # handler's life is the client's, which makes cleanup a finally.
            await acceptor.join()
        finally:
            self._names.discard(name)
            if self._members.pop(acceptor.id, None) is not None:
                await self.broadcast(lambda client: client.on_notice(f"{name} left"))


def _valid_name(header: object) -> str | None:
    # The header is untrusted: whatever the client sent, whatever its type says.
    if not isinstance(header, dict):
        return None
    name = header.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 20 or not name.isprintable():
        return None
    return name


class Session:
    """The provider of one client: the room as seen by the member ``name``."""

    def __init__(self, room: Room, name: str) -> None:
        # Underscored attributes are never reachable remotely.
        self._room = room
        self._name = name

    async def send(self, text: str) -> int:
        # The sender's name comes from its header, not from the call: no one
        # can speak for someone else. Async, because it awaits the callbacks.
        name = self._name
        return await self._room.broadcast(lambda client: client.on_message(name, text))

    def members(self) -> list[str]:
        return self._room.names()


# -- the clients --------------------------------------------------------------


class Transcript:
    """What one client has seen, in order, and a way to wait for a line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def add(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()

    async def wait_for(self, line: str) -> None:
        while line not in self.lines:
            self._changed.clear()
            await self._changed.wait()


class ChatClient:
    """
    The client's provider: what the server may call.

    Every public method of a provider can be called by the peer, so the
    waiting helpers live in :class:`Transcript`, out of the server's reach.
    """

    def __init__(self, transcript: Transcript) -> None:
        self._transcript = transcript

    def on_message(self, sender: str, text: str) -> None:
        self._transcript.add(f"<{sender}> {text}")

    def on_notice(self, text: str) -> None:
        self._transcript.add(f"* {text}")


Connector = wsrpc.WebSocketConnector[Header, ChatClient, ChatRoomRemote]


@dataclass
class Person:
    name: str
    transcript: Transcript
    connector: Connector

    @property
    def room(self) -> ChatRoomRemote:
        return self.connector.get_driver()


async def join(url: str, name: str, present: list[Person]) -> Person:
    transcript = Transcript()
    connector = Connector({"name": name}, ChatClient(transcript))
    await connector.connect(url)
    person = Person(name, transcript, connector)
    present.append(person)
    # Everyone in the room, the newcomer included, is told; wait until they
    # all have been, so that the transcripts below are deterministic.
    await asyncio.gather(*(p.transcript.wait_for(f"* {name} joined") for p in present))
    print(f"{name} joined; the room has {await person.room.members()}")
    return person


async def say(person: Person, text: str, present: list[Person]) -> None:
    delivered = await person.room.send(text)
    # send() returns after every member's on_message returned, so these waits
    # are already satisfied; they document what has happened.
    await asyncio.gather(*(p.transcript.wait_for(f"<{person.name}> {text}") for p in present))
    print(f"{person.name} said {text!r} to {delivered} members")


async def leave(person: Person, present: list[Person]) -> None:
    await person.connector.close()
    present.remove(person)
    # The server notices the close, removes the member and tells the others.
    await asyncio.gather(*(p.transcript.wait_for(f"* {person.name} left") for p in present))
    print(f"{person.name} left")


async def main() -> None:
    room = Room()
    async with wsrpc.WebSocketServer[Header, Session, ChatClientRemote]() as server:
        await server.open(0, room.handler)
        url = f"ws://127.0.0.1:{server.port}/"

        present: list[Person] = []
        alice = await join(url, "alice", present)
        bob = await join(url, "bob", present)
        carol = await join(url, "carol", present)

        # A second "bob" is turned away: names identify speakers.
        try:
            await Connector({"name": "bob"}, ChatClient(Transcript())).connect(url)
        except wsrpc.RejectedError as error:
            print(f"another bob was rejected: {error.reason} (code {error.code})")

        await say(alice, "hello everyone", present)
        await say(bob, "hi alice", present)
        await say(carol, "hey both", present)

        await leave(carol, present)
        await leave(bob, present)
        await leave(alice, present)

    for person in (alice, bob, carol):
        print(f"--- what {person.name} saw ---")
        for line in person.transcript.lines:
            print(line)


if __name__ == "__main__":
    asyncio.run(main())
