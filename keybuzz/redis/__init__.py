"""The redis layer: see deploys/redis.py (the deploy) and templates/redis/ (what it installs)."""
