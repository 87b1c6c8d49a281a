"""The base_os layer: see deploys/base_os.py (the deploy) and templates/base_os/ (what it installs)."""
