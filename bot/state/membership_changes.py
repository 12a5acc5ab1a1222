"""Channel and user-group membership changes, shared by replicas.

Slack sends member_left_channel (or subteam_members_changed) to one replica; the others
would serve the restricted sources of that channel from their cached members until
ACCESS_CACHE_SECONDS ran out. The replica that got the event records the change here, and
every replica's sweeper asks what changed and forgets those principals (bot.access).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa

from bot.state.database import Database
from bot.state.tables import membership_changes

RECENT_SECONDS = 600.0  # how far back `recent` looks: well beyond any sweep interval or clock skew


class MembershipChanges:
    """Raises StateError when the database fails."""

    def __init__(self, *, database: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = database
        self._clock = clock

    def changed(self, principal: str) -> float:
        """Record that the members of `principal` changed now; returns the time recorded."""
        now = self._clock()
        if not principal:
            return now
        with self.db.begin() as connection:
            updated = connection.execute(membership_changes.update().where(
                membership_changes.c.principal == principal).values(changed_at=now)).rowcount
            if not updated:
                self.db.insert_ignore(connection, membership_changes, {"principal": principal, "changed_at": now})
        return now

    def recent(self, *, within: float = RECENT_SECONDS) -> dict[str, float]:
        """Principal -> when its members last changed, for changes in the last `within` seconds."""
        with self.db.begin() as connection:
            rows = connection.execute(sa.select(membership_changes).where(
                membership_changes.c.changed_at >= self._clock() - within)).all()
        return {row.principal: row.changed_at for row in rows}

    def purge(self, *, older_than: float) -> int:
        with self.db.begin() as connection:
            return connection.execute(membership_changes.delete().where(
                membership_changes.c.changed_at < older_than)).rowcount
