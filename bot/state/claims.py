"""Durable claims on Slack events and questions: exactly one replica handles each.

- `first_delivery(event_id)`: INSERT … ON CONFLICT DO NOTHING of "event:<id>"; a Slack
  retry of the same event, on any replica, finds the row and is dropped.
- `claim_question(...)`: the same on "msg:<channel>:<ts>", so the app_mention and message
  events of one message are answered once; the winner holds a lease (`lease_seconds`)
  that `renew()` extends while it works, and keeps the question so it can be answered later.
- `take_lapsed()`: an atomic UPDATE … WHERE lease expired … RETURNING hands a question whose
  replica died to exactly one other replica.
- `finish(key)`: answered (or refused): the text is dropped, the row kept for dedupe until
  `purge`.

The inbox closes the gap between Slack's ack and `claim_question` (a replica dying there
would lose the question: Slack does not retry an acknowledged event): `first_delivery(id,
payload=body)` keeps the body of an event that can carry a question with its "event:<id>"
row, leased to this holder, before Bolt acknowledges it; `handled(id)` drops it once a
listener has dealt with the event (claimed its question, or found none); and
`take_lapsed_events()` hands an unhandled one whose lease ran out to exactly one replica,
which dispatches it again. Event leases are not renewed: a replay of a slow first run is
harmless, `claim_question` still lets one of them answer. A body lives until it is handled,
given up (its text dropped as a question's is) or purged with the event ids: minutes, far
within what the records keep of private text (bot.services.PRIVATE_TEXT_SECONDS).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa

from bot.state.database import HolderState, storable
from bot.state.tables import event_claims

SEEN, WORKING, DONE, ABANDONED = "seen", "working", "done", "abandoned"
MAX_ATTEMPTS = 3  # a question whose replicas died this often is given up (it may be what kills them)
MAX_AGE_SECONDS = 3600.0  # a lapsed question older than this is not answered any more


@dataclass(frozen=True)
class ClaimedQuestion:
    """A question as stored in its claim: enough to answer it on another replica."""

    key: str
    channel: str
    message_ts: str
    thread_ts: str
    user: str
    team: str
    text: str
    assistant: bool
    conversation: str
    placeholder_ts: str = ""
    attempts: int = 0


@dataclass(frozen=True)
class LapsedEvent:
    """An event kept in the inbox whose handling never finished: its body, to dispatch again."""

    key: str
    payload: dict
    attempts: int


def question_key(channel: str, message_ts: str) -> str:
    return f"msg:{channel}:{message_ts}"


def event_key(event_id: str) -> str:
    return f"event:{event_id}"


class Claims(HolderState):
    """Claims held by one replica (`holder`); raises StateError when the database fails."""

    def first_delivery(self, event_id: str, *, payload: dict | None = None) -> bool:
        """True the first time any replica sees this event id (always True without an id).

        With `payload` (the event's body) the first delivery is kept, leased to this holder,
        until `handled(event_id)`.
        """
        if not event_id:
            return True
        now = self._clock()
        row = {"key": event_key(event_id), "created_at": now, "state": SEEN}
        if payload is not None:
            # The legacy verification token is a credential; nothing else in the body needs it.
            body = {name: value for name, value in payload.items() if name != "token"}
            row.update(holder=self.holder, lease_until=now + self.lease_seconds, attempts=1,
                       payload=storable(json.dumps(body, ensure_ascii=False)))
        with self.db.begin() as connection:
            return self.db.insert_ignore(connection, event_claims, row)

    def take_turn(self, chore: str, *, every: float) -> bool:
        """True for exactly one replica in each `every` seconds of the clock: for periodic work that
        every replica schedules and one should do. Kept (and purged) like an event id."""
        return self.first_delivery(f"chore:{chore}:{int(self._clock() // every)}")

    def handled(self, event_id: str) -> None:
        """A listener dealt with the event: drop its body, keep the id for dedupe until `purge`."""
        if not event_id:
            return
        with self.db.begin() as connection:
            connection.execute(event_claims.update().where(
                event_claims.c.key == event_key(event_id), event_claims.c.state == SEEN,
                event_claims.c.payload.is_not(None),
            ).values(state=DONE, payload=None, holder="", lease_until=0))

    def claim_question(
        self, *, channel: str, message_ts: str, thread_ts: str, user: str, team: str, text: str,
        assistant: bool = False, conversation: str = "",
    ) -> str | None:
        """The claim's key when this replica won the message, None when another delivery did."""
        key = question_key(channel, message_ts)
        now = self._clock()
        with self.db.begin() as connection:
            won = self.db.insert_ignore(connection, event_claims, {
                "key": key, "created_at": now, "state": WORKING, "holder": self.holder,
                "lease_until": now + self.lease_seconds, "attempts": 1, "channel": channel,
                "message_ts": message_ts, "thread_ts": thread_ts, "user_id": user, "team": team,
                "conversation": conversation, "assistant": assistant, "text": storable(text),
            })
        return key if won else None

    def took_thread(self, channel: str, thread_ts: str, *, besides: str = "") -> bool:
        """Whether the bot took a question in this thread lately (on any replica), other than the
        message `besides`: it is answering it now (no answer recorded yet), or replied without an
        answer ("busy", how to ask) within the time claims are kept (`purge`)."""
        if not channel or not thread_ts:
            return False
        with self.db.begin() as connection:
            return connection.execute(sa.select(sa.literal(1)).select_from(event_claims).where(
                event_claims.c.channel == channel, event_claims.c.thread_ts == thread_ts,
                event_claims.c.message_ts != besides,
            ).limit(1)).first() is not None

    def set_placeholder(self, key: str, placeholder_ts: str) -> None:
        """Remember the message that will become the answer (a replica taking over edits it)."""
        if not placeholder_ts:
            return
        with self.db.begin() as connection:
            connection.execute(event_claims.update().where(event_claims.c.key == key)
                               .values(placeholder_ts=placeholder_ts))

    def finish(self, key: str) -> None:
        """The question was answered (or refused): forget its text, keep the key for dedupe."""
        with self.db.begin() as connection:
            connection.execute(event_claims.update().where(event_claims.c.key == key).values(
                state=DONE, text=None, holder="", lease_until=0,
            ))

    def release(self, key: str) -> None:
        """Give the question up unanswered: another replica (or this one) takes it at the next sweep."""
        with self.db.begin() as connection:
            connection.execute(event_claims.update().where(
                event_claims.c.key == key, event_claims.c.holder == self.holder, event_claims.c.state == WORKING,
            ).values(lease_until=0))

    def renew(self) -> int:
        """Extend the lease of every question this replica works on; how many."""
        with self.db.begin() as connection:
            return connection.execute(event_claims.update().where(
                event_claims.c.holder == self.holder, event_claims.c.state == WORKING,
            ).values(lease_until=self._clock() + self.lease_seconds)).rowcount

    def take_lapsed(self, *, limit: int = 1) -> list[ClaimedQuestion]:
        """Take over up to `limit` questions whose replica stopped renewing; one replica wins each."""
        rows = self._take(event_claims.c.state == WORKING, limit, [
            event_claims.c.key, event_claims.c.channel, event_claims.c.message_ts, event_claims.c.thread_ts,
            event_claims.c.user_id, event_claims.c.team, event_claims.c.text, event_claims.c.assistant,
            event_claims.c.conversation, event_claims.c.placeholder_ts, event_claims.c.attempts,
        ])
        return [ClaimedQuestion(*row[:6], row[6] or "", bool(row[7]), *row[8:]) for row in rows]

    def take_lapsed_events(self, *, limit: int = 1) -> list[LapsedEvent]:
        """Take over up to `limit` kept events whose handling never finished; one replica wins each."""
        rows = self._take(sa.and_(event_claims.c.state == SEEN, event_claims.c.payload.is_not(None)), limit,
                          [event_claims.c.key, event_claims.c.payload, event_claims.c.attempts])
        return [LapsedEvent(key, json.loads(payload), attempts) for key, payload, attempts in rows]

    def _take(self, pending, limit: int, returning: list) -> list:
        """UPDATE … WHERE `pending` and lease expired … RETURNING: this holder takes up to `limit` rows."""
        if limit < 1:
            return []
        now = self._clock()
        lapsed = sa.and_(pending, event_claims.c.lease_until < now)
        with self.db.begin() as connection:
            # Given up: too many replicas died on it, or too old to be worth answering now.
            connection.execute(event_claims.update().where(
                lapsed, sa.or_(event_claims.c.attempts >= MAX_ATTEMPTS,
                               event_claims.c.created_at < now - MAX_AGE_SECONDS),
            ).values(state=ABANDONED, text=None, payload=None, holder=""))
            candidates = sa.select(event_claims.c.key).where(lapsed).order_by(event_claims.c.created_at).limit(limit)
            if self.db.dialect == "postgresql":
                candidates = candidates.with_for_update(skip_locked=True)
            return connection.execute(
                event_claims.update().where(event_claims.c.key.in_(candidates), lapsed).values(
                    holder=self.holder, lease_until=now + self.lease_seconds, attempts=event_claims.c.attempts + 1,
                ).returning(*returning)
            ).all()

    def purge(self, *, older_than: float) -> int:
        """Delete finished claims and seen event ids (kept bodies too) created before `older_than`."""
        with self.db.begin() as connection:
            return connection.execute(event_claims.delete().where(
                event_claims.c.created_at < older_than, event_claims.c.state != WORKING,
            )).rowcount

    def state(self, key: str) -> tuple[str, str, int] | None:
        """(state, holder, attempts) of a claim, None if unknown (tests, diagnostics)."""
        with self.db.begin() as connection:
            row = connection.execute(sa.select(event_claims.c.state, event_claims.c.holder, event_claims.c.attempts)
                                     .where(event_claims.c.key == key)).first()
        return tuple(row) if row else None
