"""What the two ASGI applications (the webhook endpoint, `tracker.asgi`, and the pages,
`tracker.ui`) share: the ASGI types, and HTTP Basic credentials compared in constant time.
One home for the comparison, so that the pages' guard and the callbacks' cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

Credentials = Mapping[str, str] | Iterable[tuple[str, str]]


class BasicCredentials:
    """HTTP Basic credentials, compared in constant time: every pair is compared in full, so
    the time taken says nothing about which part of which pair was wrong."""

    def __init__(self, credentials: Credentials) -> None:
        pairs = credentials.items() if isinstance(credentials, Mapping) else credentials
        if isinstance(pairs, str | bytes):
            raise TypeError("credentials must be (user, password) pairs or a mapping, not text")
        self._pairs = []
        for number, pair in enumerate(pairs, start=1):
            if not (
                isinstance(pair, tuple | list)
                and len(pair) == 2
                and all(isinstance(part, str) for part in pair)
            ):
                raise TypeError(f"credential {number} is not a (user, password) pair of str")
            user, password = pair
            if ":" in user:  # Basic authentication ends the user name at the first colon
                raise ValueError(f"the user name of credential {number} holds a colon")
            self._pairs.append((user.encode(), password.encode()))

    @property
    def required(self) -> bool:
        return bool(self._pairs)

    def overlaps(self, other: BasicCredentials) -> bool:
        """Whether a pair of `other` is one of these (two sets meant for different readers)."""
        return any(pair in self._pairs for pair in other._pairs)

    def accept(self, header: bytes | None) -> bool:
        if header is None:
            return False
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except binascii.Error:
            return False
        user, colon, password = decoded.partition(b":")
        if not colon:
            return False
        accepted = False
        for known_user, known_password in self._pairs:
            same_user = hmac.compare_digest(user, known_user)
            same_password = hmac.compare_digest(password, known_password)
            accepted |= same_user & same_password
        return accepted
