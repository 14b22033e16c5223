"""The agent's one budget for bytes of requests not yet complete (edge_agent_max_pending_bytes),
shared by the framed socket and the gRPC front, so that many clients each sending part of a
large request cannot exhaust the board through either front or both; and the rule that
shares it, and the connection slots, fairly between the users the clients run as.

The rule (docs/PROTOCOL.md, "Sharing between clients"):
- each connection may hold a small reserve (edge_agent_connection_reserve_bytes) of its own
  that the shared budget never takes, so a small request is never refused for what other
  connections hold;
- with n users connected (on either front), each user is guaranteed 1/n of the shared budget:
  a user may hold more only while every other connected user still finds its guarantee free.
  Nothing already held is taken back: a user who connects while others hold the budget gets
  its share as their requests complete or time out, and its reserve at once.
fair_share() is that rule alone, for bytes and for connection slots alike.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping


def fair_share(user, amount: int, held: Mapping, capacity: int, users: int) -> bool:
    """Whether `user`, holding held[user] (0 if absent) of a resource of `capacity` that
    `users` users share (each with a guarantee of capacity / users), may take `amount` more:
    there must be room, and the user must stay within its guarantee or leave every other
    user's unused guarantee free."""
    used = sum(held.values())
    if used + amount > capacity:
        return False
    users = max(users, len(held), 1)
    guarantee = capacity / users
    if held.get(user, 0) + amount <= guarantee:
        return True
    owed = sum(max(0.0, guarantee - h) for u, h in held.items() if u != user)
    # Users connected but holding nothing are owed their whole guarantee.
    owed += guarantee * (users - len(held) - (user not in held))
    return capacity - used - amount >= owed


def connection_slot(user: int, held: Mapping[int, int], capacity: int) -> tuple[bool, int | None]:
    """Whether `user`, holding held[user] of `capacity` connection slots (held: user -> slots
    of the users connected), may open one more: (True, None); or, when it may not but is under
    its guarantee, (False, owner): an idle connection of `owner`, the user holding the most
    slots, more than one and past its own guarantee, should make room; else (False, None)."""
    users = len(held) + (user not in held)
    if fair_share(user, 1, held, capacity, users):
        return True, None
    guarantee = capacity / users
    if held.get(user, 0) + 1 > guarantee:
        return False, None
    others = sorted((n, u) for u, n in held.items() if u != user)
    if not others or others[-1][0] <= max(1, guarantee):
        return False, None
    return False, others[-1][1]


class PendingBudget:
    """Bytes that incomplete requests hold across all connections (edge_agent_max_pending_bytes).

    Each connection holds through a share (holder(uid)), whose first `reserve` bytes are its
    own and the rest taken from the shared budget under the fair-share rule. change() alone is
    an anonymous holder with no reserve and no user (what the rule reduces to for one user)."""

    def __init__(self, limit: int, reserve: int = 0):
        self.limit = limit
        self.reserve = reserve
        self.used = 0  # of the shared budget, by all holders
        self._by_user: dict = {}  # uid -> shared bytes its holders hold (0 entries removed)
        self._connected: dict = {}  # uid -> its open shares (connections)
        self._lock = threading.Lock()

    def change(self, held: int, wanted: int) -> bool:
        """Move one holder's share from `held` to `wanted` bytes; False if it cannot grow."""
        with self._lock:
            if wanted > held and self.used + wanted - held > self.limit:
                return False
            self.used += wanted - held
            return True

    def holder(self, uid) -> "PendingShare":
        """The share of one connection of user `uid`; close() it when the connection ends."""
        with self._lock:
            self._connected[uid] = self._connected.get(uid, 0) + 1
        return PendingShare(self, uid)

    def _move(self, uid, shared_before: int, shared_after: int) -> str | None:
        """(Under the lock.) None if `uid`'s holder moved from `shared_before` to
        `shared_after` bytes of the shared budget, else why it may not grow."""
        grow = shared_after - shared_before
        if grow > 0 and self.used + grow > self.limit:
            return self.refusal()
        if grow > 0 and not fair_share(uid, grow, self._by_user, self.limit,
                                       len(self._connected)):
            return (f"incomplete frames of this user's clients hold "
                    f"{self._by_user.get(uid, 0)} bytes of the {self.limit} that the "
                    f"clients of {len(self._connected)} users share "
                    "(edge_agent_max_pending_bytes), and the rest is kept for the other "
                    "users; send the frame again later")
        self.used += grow
        left = self._by_user.get(uid, 0) + grow
        if left:
            self._by_user[uid] = left
        else:
            self._by_user.pop(uid, None)
        return None

    def _disconnect(self, uid) -> None:
        with self._lock:
            left = self._connected.get(uid, 0) - 1
            if left > 0:
                self._connected[uid] = left
            else:
                self._connected.pop(uid, None)

    def refusal(self) -> str:
        """What a refused client is told (the same words on both fronts)."""
        return (f"incomplete frames of all clients would hold more than {self.limit} bytes "
                "(edge_agent_max_pending_bytes); send the frame again later")


class PendingShare:
    """One connection's holding: change(held, wanted) moves it (one holder, or several calls
    of a gRPC connection each moving its own part), refusal() says why it could not grow."""

    def __init__(self, budget: PendingBudget, uid):
        self.budget = budget
        self.uid = uid
        self.total = 0  # bytes this connection holds, its reserve included
        self._refused = budget.refusal()
        self._closed = False

    def change(self, held: int, wanted: int) -> bool:
        budget = self.budget
        reserve = budget.reserve
        with budget._lock:  # the calls of one gRPC connection move it from several threads
            total = self.total + wanted - held
            refused = budget._move(self.uid, max(0, self.total - reserve),
                                   max(0, total - reserve))
            if refused is not None:
                self._refused = refused
                return False
            self.total = total
            return True

    def refusal(self) -> str:
        """Why the last change() that failed did."""
        return self._refused

    def close(self) -> None:
        """The connection is over: what it still holds is given back (idempotent)."""
        if not self._closed:
            self._closed = True
            self.change(self.total, 0)
            self.budget._disconnect(self.uid)
