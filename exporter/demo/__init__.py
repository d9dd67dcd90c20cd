"""The embedded demo: reference CMS schema, seed data, activity simulator, local PostgreSQL."""
