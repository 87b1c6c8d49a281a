"""The haproxy layer: see deploys/haproxy.py (the deploy) and templates/haproxy/ (what it installs)."""
