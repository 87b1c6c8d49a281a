"""Settings of the redis hosts: the defaults live in one table, keybuzz.redis.settings.RedisSettings (with the
measurements behind each value). To override one for this inventory, set `redis_<field>` here, e.g.

    redis_down_after_ms = 5000            # Sentinel down-after-milliseconds
    redis_min_replicas_to_write = 0       # 0 = off (see RedisSettings for why)

or once on the command line: `pyinfra inventory.py deploys/redis.py --data redis_down_after_ms=4000`.
A changed value is applied at runtime (SENTINEL SET / CONFIG SET) on the next run: no restart.
"""
