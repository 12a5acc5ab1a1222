"""The event inbox: an event that can carry a question keeps its body until a listener handled it.

Revision ID: 0004_event_inbox
Revises: 0003_saved_answers
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_event_inbox"
down_revision = "0003_saved_answers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("event_claims", sa.Column("payload", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("event_claims") as batch:
        batch.drop_column("payload")
