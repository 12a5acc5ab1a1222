"""Per-person limits shared by all replicas: questions a minute and questions at once.

Each allowed question is a row in `user_slots`; a person's transactions are serialised
(an advisory lock on PostgreSQL, BEGIN IMMEDIATE on SQLite), so two replicas cannot
both let the same person's next question in. A slot whose replica died frees itself
when its lease (renewed with the replica's claims) lapses.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from bot.state.database import HolderState
from bot.state.tables import user_slots


@dataclass(frozen=True)
class SlotDecision:
    """"ok" with the slot to release, or "busy" / "rate" (then `retry_after` seconds)."""

    reason: str
    slot_id: int = 0
    retry_after: float = 0.0


class SharedLimits(HolderState):
    """Slots held by one replica (`holder`); raises StateError when the database fails."""

    def acquire(self, key: str, *, per_minute: int, max_concurrent: int, window: float = 60.0) -> SlotDecision:
        """Take a slot for `key` if neither limit (0: off) says no."""
        now = self._clock()
        with self.db.begin() as connection:
            self.db.lock(connection, f"limits:{key}")
            mine = user_slots.c.user_key == key
            if max_concurrent:
                active = connection.execute(sa.select(sa.func.count()).where(
                    mine, user_slots.c.released == sa.false(), user_slots.c.expires_at > now,
                )).scalar_one()
                if active >= max_concurrent:
                    return SlotDecision("busy")
            if per_minute:
                recent = connection.execute(
                    sa.select(sa.func.count(), sa.func.min(user_slots.c.started_at))
                    .where(mine, user_slots.c.started_at > now - window)
                ).one()
                if recent[0] >= per_minute:
                    return SlotDecision("rate", retry_after=recent[1] + window - now)
            slot_id = connection.execute(user_slots.insert().values(
                user_key=key, holder=self.holder, started_at=now, expires_at=now + self.lease_seconds,
            ).returning(user_slots.c.id)).scalar_one()
        return SlotDecision("ok", slot_id=slot_id)

    def release(self, slot_id: int) -> None:
        with self.db.begin() as connection:
            connection.execute(user_slots.update().where(user_slots.c.id == slot_id).values(released=True))

    def active(self, key: str) -> int:
        with self.db.begin() as connection:
            return connection.execute(sa.select(sa.func.count()).where(
                user_slots.c.user_key == key, user_slots.c.released == sa.false(),
                user_slots.c.expires_at > self._clock(),
            )).scalar_one()

    def renew(self) -> int:
        """Extend this replica's unreleased slots; how many."""
        with self.db.begin() as connection:
            return connection.execute(user_slots.update().where(
                user_slots.c.holder == self.holder, user_slots.c.released == sa.false(),
            ).values(expires_at=self._clock() + self.lease_seconds)).rowcount

    def purge(self, *, window: float = 60.0) -> int:
        """Forget slots outside the rate window that are released or expired."""
        now = self._clock()
        with self.db.begin() as connection:
            return connection.execute(user_slots.delete().where(
                user_slots.c.started_at < now - window,
                sa.or_(user_slots.c.released == sa.true(), user_slots.c.expires_at < now),
            )).rowcount
