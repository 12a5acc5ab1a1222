"""Alembic environment: runs on the connection Database.migrate hands over (never a URL of its own)."""

from alembic import context

from bot.state.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic revision --autogenerate` from the command line
    import sqlalchemy as sa

    connection = sa.create_engine(context.config.get_main_option("sqlalchemy.url")).connect()

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
