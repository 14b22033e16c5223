"""The fair-share rule of the pending budget and the connection slots (edge_agent.transport.pending),
without sockets: the reserve each connection holds of its own, the guarantee each connected
user has, and what one user's stalled clients can and cannot take from another."""
from __future__ import annotations

import pytest

from edge_agent.transport.pending import PendingBudget, fair_share, connection_slot

MIB = 1 << 20


def test_a_user_alone_may_use_it_all():
    assert fair_share("a", 10, {}, 10, 1)
    assert fair_share("a", 5, {"a": 5}, 10, 1)
    assert not fair_share("a", 6, {"a": 5}, 10, 1)  # no room


def test_a_user_past_its_guarantee_leaves_the_others_theirs():
    # Two users connected, b holds nothing: a may take up to 5 of 10, not more.
    assert fair_share("a", 5, {}, 10, 2)
    assert not fair_share("a", 1, {"a": 5}, 10, 2)
    # b's guarantee is free to b however much a holds.
    assert fair_share("b", 5, {"a": 5}, 10, 2)
    # Once b holds its guarantee, what is left is anyone's.
    assert fair_share("a", 2, {"a": 5, "b": 3}, 10, 2) is False  # b is owed 2
    assert fair_share("a", 2, {"a": 5, "b": 5}, 10, 3) is False  # a third user is owed 3.3
    assert fair_share("c", 3, {"a": 4, "b": 3}, 10, 3)


def test_nothing_held_is_taken_back():
    """A user who arrives when another holds everything is refused (until it releases); the
    holder may not grow again while the newcomer is owed its guarantee."""
    assert not fair_share("b", 1, {"a": 10}, 10, 2)
    assert not fair_share("a", 1, {"a": 9}, 10, 2)
    assert fair_share("b", 1, {"a": 9}, 10, 2)


@pytest.mark.parametrize("users", [1, 2, 3, 7])
def test_the_rule_never_passes_the_capacity(users):
    held: dict = {}
    for step in range(200):
        user = step % users
        if fair_share(user, 3, held, 50, users):
            held[user] = held.get(user, 0) + 3
        assert sum(held.values()) <= 50
    # Each user got at least its guarantee (rounded down to whole grants), or all was used.
    for user in range(users):
        assert held.get(user, 0) >= (50 // users) // 3 * 3 or sum(held.values()) > 50 - 3


def test_each_connection_has_a_reserve_the_shared_budget_never_takes():
    budget = PendingBudget(8 * MIB, reserve=MIB)
    stalled = [budget.holder(0) for _ in range(8)]
    granted = [share.change(0, 6 * MIB) for share in stalled]
    assert granted.count(True) == 1  # 5 MiB of the shared 8 each: one fits, the rest refused
    assert budget.used == 5 * MIB
    for share in (s for s, ok in zip(stalled, granted) if not ok):
        assert share.change(0, MIB)  # the refused ones: their reserves are still theirs
    assert budget.used == 5 * MIB
    other = budget.holder(65534)
    assert other.change(0, 64 * 1024)  # a small request of another user: its reserve
    assert other.change(64 * 1024, 3 * MIB)  # and its guarantee: 4 MiB of 8, 3 MiB free
    assert budget.used <= budget.limit
    for share in stalled + [other]:
        share.close()
        share.close()  # idempotent
    assert budget.used == 0


def test_the_refusal_says_which_rule_refused():
    budget = PendingBudget(10, reserve=0)
    a, b = budget.holder("a"), budget.holder("b")
    assert a.change(0, 5)
    assert not a.change(5, 6)
    assert "kept for the other users" in a.refusal()
    assert "of the 10 that the clients of 2 users share" in a.refusal()
    assert b.change(0, 5)
    assert not b.change(5, 6)
    b.close()
    assert not a.change(5, 11)
    assert a.refusal() == budget.refusal()  # the total, whoever asks
    assert a.change(5, 10)  # alone again: all of it
    a.close()
    assert budget.used == 0


def test_a_gRPC_connection_moves_one_share_for_all_its_calls():
    budget = PendingBudget(4 * MIB, reserve=MIB)
    share = budget.holder(0)
    first, second = 0, 0
    assert share.change(first, 512 * 1024)
    first = 512 * 1024
    assert share.change(second, MIB)  # 1.5 MiB in all: 0.5 MiB of the shared budget
    second = MIB
    assert budget.used == 512 * 1024
    assert share.change(first, 0)
    assert budget.used == 0 and share.total == MIB
    share.close()
    assert budget.used == 0


def test_the_anonymous_holder_is_the_shared_budget_alone():
    budget = PendingBudget(10)
    assert budget.change(0, 10)
    assert not budget.change(0, 1)
    assert budget.change(10, 0)


def test_a_connection_slot_is_made_room_for_only_under_the_guarantee():
    # Room left: admitted, whoever holds what.
    assert connection_slot(1, {2: 3}, 4) == (True, None)
    # Full, user 1 under its guarantee (2 of 4): the user holding the most, past its own, frees one.
    assert connection_slot(1, {2: 3, 1: 1}, 4) == (False, 2)
    assert connection_slot(1, {2: 4}, 4) == (False, 2)
    # At its guarantee: refused, nobody is made to leave for it.
    assert connection_slot(1, {2: 2, 1: 2}, 4) == (False, None)
    # The others hold no more than their own guarantee (or a single slot): refused.
    assert connection_slot(1, {2: 1, 3: 1}, 2) == (False, None)
