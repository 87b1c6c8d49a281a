"""The rabbitmq layer: see deploys/rabbitmq.py (the deploy) and templates/rabbitmq/ (what it installs)."""
