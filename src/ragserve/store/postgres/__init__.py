"""The PostgreSQL + pgvector store (:mod:`.store`), its schema and migrations (:mod:`.schema`) and
filters -> SQL (:mod:`.sql`). Registered as backend ``"postgres"`` in :mod:`ragserve.store.base`.

Nothing is imported here: psycopg is an optional dependency (the ``postgres`` extra), loaded only
when :mod:`.store` is."""
