"""Database: the schema (models), engine/session handling (session)."""
