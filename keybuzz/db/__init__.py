"""The db layer: PostgreSQL + Patroni + etcd + PgBouncer (deploys/db.py, templates/db/)."""
