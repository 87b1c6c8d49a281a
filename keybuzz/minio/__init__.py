"""The minio layer (design §B): MinIO distributed on minio-01..03. No deploy yet: settings.py holds the
preflight of its pin (keybuzz.inventory.preflight)."""
