"""README (Redis checks): "Keys are `keybuzz:check:*` with a TTL". Static, over keybuzz/redis/check.py and
client.py: the only Redis write command they send is SET, always with an expiry (diag's write included, which needs
Sentinels and HAProxy to run). The keys landing with their TTL in a real Redis:
tests/test_redis_check_keys_cluster.py."""

from __future__ import annotations

import ast

from helpers import ROOT

WRITE_METHODS = {"set", "setex", "psetex", "mset", "msetnx", "setnx", "getset", "hset", "hmset", "hsetnx", "lpush",
                 "rpush", "sadd", "zadd", "incr", "incrby", "decr", "append", "xadd", "setrange", "pfadd"}


def test_every_write_of_the_redis_check_code_sets_an_expiry():
    calls = []
    for path in (ROOT / "keybuzz" / "redis" / "check.py", ROOT / "keybuzz" / "redis" / "client.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in WRITE_METHODS
                    and len(node.args) >= 2):  # key and value: not list.append(x) nor Event.set()
                calls.append((path.name, node.lineno, node.func.attr, {k.arg for k in node.keywords}))
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "execute_command" and node.args and isinstance(node.args[0], ast.Constant)
                    and str(node.args[0].value).lower() in WRITE_METHODS):
                calls.append((path.name, node.lineno, str(node.args[0].value), set()))
    assert len(calls) >= 4, calls  # diag, the probe, the perf loops
    assert [c for c in calls if c[2] != "set" or not c[3] & {"ex", "px", "exat", "pxat"}] == []
