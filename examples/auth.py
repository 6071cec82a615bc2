"""
Token authentication in the header handshake.

A wsrpc client's first message is its *header*; the server's handler reads it
and accepts or rejects the client before any call can be made. Here the
header is a :class:`Header` TypedDict carrying a user name and a token:

* the handler validates the header's shape (it is untrusted network data:
  its declared type is not checked at run time), then compares the token with
  :func:`hmac.compare_digest`, which takes the same time wherever the strings
  differ, so response times leak nothing about the expected token;
* a client with the right token is accepted and given a provider bound to its
  user name, so every call it makes is already authenticated;
* a client with a wrong token is rejected with an application close code
  (4001); its ``connect()`` raises :exc:`wsrpc.RejectedError` with that code
  and reason.

Run it::

    python examples/auth.py
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Protocol, TypedDict

import wsrpc


class Header(TypedDict):
    """The client's credentials, sent once as the connection's first message."""

    user: str
    token: str


# In a real service these would come from a secret store, never from source.
TOKENS: dict[str, str] = {"alice": "correct horse battery staple"}

# Compared against when the user is unknown, so that unknown users and wrong
# tokens take the same path and the same time.
_DUMMY_TOKEN = "x" * 32

UNAUTHORIZED = 4001
"""Application close code (4000–4999 are the application's own) for a bad token."""


class AccountRemote(Protocol):
    """What an authenticated client may call."""

    async def whoami(self) -> str: ...
    async def balance(self) -> int: ...


class Account:
    """The provider of one authenticated client, bound to its user at accept time."""

    def __init__(self, user: str) -> None:
        # The user is fixed by the handshake: no call can claim to be someone
        # else. (Underscored attributes are never reachable remotely anyway.)
        self._user = user

    def whoami(self) -> str:
        return self._user

    def balance(self) -> int:
        return 42


def authenticate(header: object) -> str | None:
    """The user the header proves to be, or None when it proves nothing."""
    # The header is whatever the client sent (any msgpack value), whatever the
    # type parameter says: check its shape before trusting it.
    if not isinstance(header, dict):
        return None
    user, token = header.get("user"), header.get("token")
    if not isinstance(user, str) or not isinstance(token, str):
        return None
    expected = TOKENS.get(user)
    # compare_digest needs ASCII str or bytes: compare the UTF-8 bytes.
    ok = hmac.compare_digest(token.encode(), (expected or _DUMMY_TOKEN).encode())
    return user if ok and expected is not None else None


Acceptor = wsrpc.WebSocketAcceptor[Header, Account, None]


async def handler(acceptor: Acceptor) -> None:
    user = authenticate(acceptor.header)
    if user is None:
        # The reason is sent to the client: keep it vague, never echo secrets.
        await acceptor.reject(UNAUTHORIZED, "invalid credentials")
        return
    await acceptor.accept(Account(user))


async def good_client(url: str) -> None:
    header: Header = {"user": "alice", "token": "correct horse battery staple"}
    async with wsrpc.WebSocketConnector[Header, None, AccountRemote](header) as connector:
        await connector.connect(url)
        account = connector.get_driver()
        print(f"accepted as {await account.whoami()}, balance {await account.balance()}")


async def bad_client(url: str) -> None:
    header: Header = {"user": "alice", "token": "guess"}
    async with wsrpc.WebSocketConnector[Header, None, AccountRemote](header) as connector:
        try:
            await connector.connect(url)
        except wsrpc.RejectedError as error:
            print(f"rejected: code {error.code}, reason {error.reason!r}")
        else:  # a wrong token must never get through
            raise AssertionError("a wrong token was accepted")


async def main() -> None:
    async with wsrpc.WebSocketServer[Header, Account, None]() as server:
        await server.open(0, handler)
        url = f"ws://127.0.0.1:{server.port}/"
        await good_client(url)
        await bad_client(url)


if __name__ == "__main__":
    asyncio.run(main())
