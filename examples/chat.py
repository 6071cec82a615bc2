"""
A chat room: the server calls its clients back, through a group.

Each client connects with its name in the header. The server puts every
accepted client in the group ``server.group("room")``; when one calls
``send(text)``, the server broadcasts ``on_message(name, text)`` to the whole
group at once. Members are told when someone joins or leaves through
``on_notice(text)``.

Things worth noticing:

* calls go both ways on one connection: the client calls ``send``, and while
  that call runs the server calls ``on_message`` on every member, the sender
  included;
* the room is wsrpc's own :class:`wsrpc.Group`: ``room.add(acceptor)`` after
  ``accept()``, and no code removes anyone, since a connection leaves its
  groups by itself when it closes;
* ``room.broadcast(lambda client: client.on_message(name, text), timeout=...)``
  is type-checked against ``ChatClientRemote`` and returns one
  :class:`wsrpc.Outcome` per member: a member that is gone, whose callback
  raised or that did not answer in time gets a failed outcome and does not
  fail or hold up the others; ``send`` returns how many outcomes were ok;
* the "X left" notice comes from a hook, ``acceptor.on_closed``, registered
  before ``accept()`` so that it frees the client's name however the
  connection ends; it runs while the leaver is still a member of the group,
  but no longer open, so the notice skips it. ``info.clean`` tells a
  graceful close from a lost connection;
* the handler returns right after accepting: the connection lives on
  without it;
* nothing is synchronised with sleeps: ``send`` returns once every member has
  been called, and the script waits for join and leave notices on events.

Three clients chat, then leave one by one::

    python examples/chat.py
"""

from __future__ import annotations

import asyncio
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

DELIVERY_TIMEOUT = 5.0
"""Seconds each member has to take a message before it counts as not delivered."""


class Session:
    """The provider of one client: the room as seen by the member ``name``."""

    def __init__(self, chat: Chat, name: str) -> None:
        # Underscored attributes are never reachable remotely.
        self._chat = chat
        self._name = name

    async def send(self, text: str) -> int:
        # The sender's name comes from its header, not from the call: no one
        # can speak for someone else. Async, because it awaits the callbacks.
        name = self._name
        outcomes = await self._chat.room.broadcast(
            lambda client: client.on_message(name, text), timeout=DELIVERY_TIMEOUT
        )
        # A failed outcome (a member that just left, a callback that raised,
        # a member too slow) is that member's problem, not the sender's.
        return sum(1 for outcome in outcomes if outcome.ok)

    def members(self) -> list[str]:
        return self._chat.names()


Server = wsrpc.WebSocketServer[Header, Session, ChatClientRemote]
Acceptor = wsrpc.WebSocketAcceptor[Header, Session, ChatClientRemote]


class Chat:
    """The room (a group of the server's connections) and the handler that fills it."""

    def __init__(self, server: Server) -> None:
        self.room = server.group("room")
        # Every name in use, by connection id: members, and clients still
        # being accepted, so that two "bob"s connecting at once cannot both
        # get in.
        self._names: dict[int, str] = {}

    def names(self) -> list[str]:
        # Group order is join order. A member whose connection is closing is
        # still listed by the group until its close hooks have run: skip it.
        return [self._names[member.id] for member in self.room if not member.is_closed]

    async def tell(self, text: str) -> None:
        await self.room.broadcast(lambda client: client.on_notice(text), timeout=DELIVERY_TIMEOUT)

    async def handler(self, acceptor: Acceptor) -> None:
        name = _valid_name(acceptor.header)
        if name is None:
            await acceptor.reject(NAME_REQUIRED, "a name of 1 to 20 characters is required")
            return
        if name in self._names.values():
            await acceptor.reject(NAME_TAKEN, f"{name!r} is already in the room")
            return
        # Taken before the first await, so that no other handler can run
        # between the check above and this line.
        self._names[acceptor.id] = name
        # From here on the hook owns the name: it frees it however the
        # connection ends, even if the client vanishes during accept().
        acceptor.on_closed(self._closed)
        await acceptor.accept(Session(self, name))
        if not self.room.add(acceptor):
            return  # the client already left: a closing connection joins nothing
        await self.tell(f"{name} joined")  # the newcomer included
        # Nothing to wait for: the connection stays open after the handler
        # returns, and the hook below does the cleanup.

    async def _closed(self, acceptor: Acceptor, info: wsrpc.CloseInfo) -> None:
        name = self._names.pop(acceptor.id)
        # The hook runs before the connection leaves its groups: we can still
        # tell a member from a client that never made it into the room. The
        # broadcast skips the leaver itself, which is no longer open.
        if acceptor in self.room:
            how = "clean close" if info.clean else "connection lost"
            await self.tell(f"{name} left ({how})")


def _valid_name(header: object) -> str | None:
    # The header is untrusted: whatever the client sent, whatever its type says.
    if not isinstance(header, dict):
        return None
    name = header.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 20 or not name.isprintable():
        return None
    return name


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
    # The server's close hook tells the others (a graceful close: clean).
    notice = f"* {person.name} left (clean close)"
    await asyncio.gather(*(p.transcript.wait_for(notice) for p in present))
    print(f"{person.name} left")


async def main() -> None:
    async with Server() as server:
        chat = Chat(server)
        await server.open(0, chat.handler)
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
