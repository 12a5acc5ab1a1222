"""Alembic migrations of the state database (run in code by bot.state.database.Database.migrate)."""
