"""Settings of the redis hosts (deploys/redis.py reads them through keybuzz.redisha.RedisSettings).

Sentinel down-after: 5 s. Measured (bench/redis_failover.py, README): the write gap through HAProxy is about
down-after + 1.5 s. Below 2 s false failovers appear (an fsync stall with appendfsync everysec can block Redis
for 2 s); 5 s keeps a margin over such stalls for 2 s more per real failover than 3 s.
Changing a value here is applied at runtime (SENTINEL SET / CONFIG SET) on the next run: no restart.
"""

redis_sentinel_down_after_ms = 5000
redis_sentinel_failover_timeout_ms = 60000
# 0 = off: with 1 the new master refuses writes until a replica has re-synced (≈5 s more per failover, measured)
redis_min_replicas_to_write = 0
redis_min_replicas_max_lag = 10
