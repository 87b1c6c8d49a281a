#!/bin/bash
# /usr/local/bin/redis-master-watch.sh — runs redis-update-master.sh the moment a Sentinel announces a
# failover, so HAProxy follows it within a second instead of waiting for the 15 s timer.
#
# Managed by keybuzz-infra (templates/haproxy/redis-master-watch.sh); run by redis-master-watch.service.
#
# Why here and not in Sentinel's client-reconfig-script: that script runs on the Redis nodes, and HAProxy
# lives on other hosts. Every Sentinel publishes `+switch-master <name> <old-ip> <old-port> <new-ip>
# <new-port>` when IT switches, so subscribing to all of them gives one trigger per Sentinel: the update
# script (majority rule) switches as soon as the second one has switched.
#
# Each subscription reconnects forever (1 s pause), and at least every SUBSCRIBE_RENEW s (a connection whose
# peer vanished without a reset would otherwise stay silent forever); after each (re)connection one update
# run catches up with anything missed while disconnected. Every update run is bounded (UPDATE_TIMEOUT s).
# A partition sends no event at all (the Sentinels on the other side are just silent): a guard runs the update
# every GUARD_INTERVAL s as well, so that a HAProxy left without a Sentinel majority fails closed within
# NO_MAJORITY_MAINT + GUARD_INTERVAL s (redis-update-master.sh; issue 10 §3). A run that changes nothing
# writes nothing and logs nothing.
# Settings: same files as redis-update-master.sh.

set -u -o pipefail
CONF=${REDIS_UPDATE_MASTER_CONF:-/etc/keybuzz/redis-update-master.conf}
UPDATE=${REDIS_UPDATE_MASTER:-/usr/local/bin/redis-update-master.sh}
# shellcheck source=/dev/null
. "$CONF" || exit 2
MASTER_NAME=${MASTER_NAME:-keybuzz-master}
SENTINEL_PORT=${SENTINEL_PORT:-26379}
REDIS_ENV_FILE=${REDIS_ENV_FILE:-/etc/keybuzz/redis.env}
UPDATE_TIMEOUT=${UPDATE_TIMEOUT:-60}
SUBSCRIBE_RENEW=${SUBSCRIBE_RENEW:-300}
GUARD_INTERVAL=${GUARD_INTERVAL:-2}
# shellcheck source=/dev/null
. "$REDIS_ENV_FILE" || exit 2
export REDISCLI_AUTH="$REDIS_HAPROXY_PASSWORD"
unset REDIS_HAPROXY_PASSWORD

log() {
    if [ -n "${INVOCATION_ID:-}" ]; then echo "redis-master-watch: $*"
    else echo "$(date '+%F %T.%3N') redis-master-watch: $*"; fi
}

# update: one bounded run of the update script (its own log says why it failed, if it did)
update() {
    local code=0
    timeout -k 5 "$UPDATE_TIMEOUT" "$UPDATE" </dev/null || code=$?
    if [ "$code" = 124 ]; then log "redis-update-master.sh timed out after $UPDATE_TIMEOUT s"
    elif [ "$code" != 0 ]; then log "redis-update-master.sh exited $code"; fi
}

# watch_one "ip[:port]": subscribe to +switch-master of one Sentinel, run the update on every message.
watch_one() {
    local host=${1%:*} port=$SENTINEL_PORT line
    [[ $1 == *:* ]] && port=${1##*:}
    while true; do
        # redis-cli prints each element of a pub/sub reply on its own line and flushes it at once:
        #   subscribe / +switch-master / 1            (subscription confirmed)
        #   message / +switch-master / <payload>      (a failover)
        while IFS= read -r line; do
            case $line in
                subscribe) update ;;  # (re)connected: catch up
                "$MASTER_NAME "*) log "Sentinel $host: +switch-master $line"; update ;;
            esac
        done < <(timeout -k 5 "$SUBSCRIBE_RENEW" redis-cli --no-auth-warning --user "$REDIS_HAPROXY_USER" -h "$host" -p "$port" SUBSCRIBE +switch-master 2>/dev/null)
        sleep 1
    done
}

# guard: the update every GUARD_INTERVAL s, whatever the subscriptions say (see the header)
guard() {
    while true; do
        update
        sleep "$GUARD_INTERVAL"
    done
}

for sentinel in $SENTINELS; do
    watch_one "$sentinel" &
done
guard &
wait
