"""SSH settings for every host, from the environment (keybuzz/ssh.py; README, "Running against production")."""

from keybuzz.ssh import pyinfra_data

globals().update(pyinfra_data())
