"""pyinfra inventory: one group per role, from servers.tsv ($KEYBUZZ_SERVERS selects another file).

    pyinfra inventory.py deploys/redis.py

Bad input (servers.tsv, versions.yaml, the layer's credentials) stops here with one
`<file>:<line>: <reason>` line, before any host is contacted. See keybuzz/inventory.py.
"""

from keybuzz.inventory import run_inventory

run_inventory(globals())
