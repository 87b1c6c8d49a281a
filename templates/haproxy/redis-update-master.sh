#!/bin/bash
# /usr/local/bin/redis-update-master.sh — points HAProxy's be_redis_master at the Redis master (design §C).
#
# Managed by keybuzz-infra (templates/haproxy/redis-update-master.sh); do not edit by hand.
# Run by redis-update-master.timer (boot + every 15 s) and by redis-master-watch.service (immediately on
# every Sentinel's +switch-master). Safe to run any time, by hand too:
#
#   redis-update-master.sh            # one check; exit 0 = HAProxy points at the master (switched or not)
#
# Safety rules (each one is covered by tests/test_redis_cluster.py):
#   * asks EVERY Sentinel and acts only when a majority of the configured Sentinels gives the same address;
#   * the address must be a well-formed IPv4:port of a known Redis node, and answer ROLE "master";
#   * nothing is written and HAProxy is not reloaded when the master did not change;
#   * the new haproxy.cfg is validated (haproxy -c) before it replaces the old one (atomic rename);
#   * one run at a time (flock on $LOCK_FILE, in the root-only runtime directory $RUN_DIR; the haproxy deploy
#     installs haproxy.cfg under the same lock); its candidate file has a unique name (mktemp);
#   * every external command has a timeout (redis-cli, socat, haproxy -c, the reload): a hung one cannot
#     hold the lock; temporary files live in $RUN_DIR (/run: a full root disk is not "no majority");
#   * after a switch, every HAProxy process (current and old workers) drops its sessions to the old master,
#     so no client stays attached to a demoted master (a reload alone leaves them where they are);
#   * fail closed (issue 10 §3): when no majority of Sentinels has been seen for NO_MAJORITY_MAINT s (this
#     HAProxy is on the minority side of a partition, perhaps with the old master), the server goes into
#     maintenance at runtime and its sessions are cut: no client writes into a master the majority may already
#     have replaced. The first run that sees a majority again takes it out of maintenance.
#
# Exit codes (the journal line says which and why):
#   0 HAProxy points at the master (or, with FAIL_AFTER, it has failed for less than FAIL_AFTER s: logged)
#   2 bad local configuration (settings, credentials file, haproxy.cfg without a valid server line)
#   3 no majority: no majority of the Sentinels agrees on a master (haproxy.cfg untouched)
#   4 the candidate haproxy.cfg is invalid (haproxy -c refused it, or timed out; old file kept)
#   5 lock busy: another run (or the haproxy deploy) held $LOCK_FILE for LOCK_WAIT s
#   6 not a master: the majority names an address that is not a Redis node, or not ROLE master
#   7 reload failed (or timed out); HAProxy was switched at runtime, the file is already the new one
#
# Never silent (issue 10 §4): each run records, in $RUN_DIR, the time of the last successful follow
# (last-follow) and since when it has been failing (failing-since). redis-update-master.service sets
# FAIL_AFTER=60: a failure younger than that exits 0 (logged: a failover in progress is not an alert); one
# older makes the unit fail (systemctl --failed) with its code and the time since the last follow. By hand
# (FAIL_AFTER unset = 0) every failure exits with its code at once.
#
# Settings come from $REDIS_UPDATE_MASTER_CONF (default /etc/keybuzz/redis-update-master.conf, not secret);
# the Redis login (REDIS_HAPROXY_USER: ROLE, SENTINEL get-master-addr-by-name, +switch-master, nothing else)
# from $REDIS_ENV_FILE (default /etc/keybuzz/redis.env, root 0600). The password reaches redis-cli only
# through the REDISCLI_AUTH environment variable: never on a command line.

set -u -o pipefail
export LC_ALL=C

CONF=${REDIS_UPDATE_MASTER_CONF:-/etc/keybuzz/redis-update-master.conf}
# journald stamps each line itself; elsewhere (tests, by hand) the line carries its own time
log() {
    if [ -n "${INVOCATION_ID:-}" ]; then echo "redis-update-master: $*"
    else echo "$(date '+%F %T.%3N') redis-update-master: $*"; fi
}

# shellcheck source=/dev/null
[ -r "$CONF" ] && . "$CONF" || { log "cannot read $CONF"; exit 2; }
: "${SENTINELS:?}" "${REDIS_NODES:?}" "${HAPROXY_CFG:?}"
MASTER_NAME=${MASTER_NAME:-keybuzz-master}
SENTINEL_PORT=${SENTINEL_PORT:-26379}
QUERY_TIMEOUT=${QUERY_TIMEOUT:-1}
HAPROXY_CHECK_CMD=${HAPROXY_CHECK_CMD:-/usr/local/sbin/keybuzz-haproxy-check}
HAPROXY_RELOAD_CMD=${HAPROXY_RELOAD_CMD:-systemctl reload haproxy}
HAPROXY_MASTER_SOCKET=${HAPROXY_MASTER_SOCKET:-/opt/keybuzz/haproxy/run/master.sock}
RUN_DIR=${RUN_DIR:-/run/keybuzz-redis-update}
LOCK_FILE=${LOCK_FILE:-$RUN_DIR/lock}
LOCK_WAIT=${LOCK_WAIT:-20}
CHECK_TIMEOUT=${CHECK_TIMEOUT:-20}
RELOAD_TIMEOUT=${RELOAD_TIMEOUT:-30}
FAIL_AFTER=${FAIL_AFTER:-0}
# Sentinel's down-after (5 s) is when the majority side starts replacing a master it cannot see: a minority
# HAProxy stops routing after the same time without a majority (redis-master-watch.sh asks every 2 s).
NO_MAJORITY_MAINT=${NO_MAJORITY_MAINT:-5}
# 1 = drop the sessions of every HAProxy process to the old master after a switch (tests turn it off once,
# to show that without it a client stays attached to the demoted master).
KILL_OLD_SESSIONS=${KILL_OLD_SESSIONS:-1}
REDIS_ENV_FILE=${REDIS_ENV_FILE:-/etc/keybuzz/redis.env}

# --- credentials section (design §H.3): the value is never printed ---
# shellcheck source=/dev/null
[ -r "$REDIS_ENV_FILE" ] && . "$REDIS_ENV_FILE" || { log "cannot read the Redis credentials file"; exit 2; }
[ -n "${REDIS_HAPROXY_USER:-}" ] && [ -n "${REDIS_HAPROXY_PASSWORD:-}" ] \
    || { log "REDIS_HAPROXY_USER / REDIS_HAPROXY_PASSWORD missing in the credentials file"; exit 2; }
export REDISCLI_AUTH="$REDIS_HAPROXY_PASSWORD"
unset REDIS_HAPROXY_PASSWORD
# --- end of credentials section ---

umask 077
# root only: the lock and the state files; never /tmp (a full or shared /tmp must not look like a failover)
install -d -m 700 "$RUN_DIR" || { log "cannot create $RUN_DIR"; exit 2; }

# valid_addr "10.0.0.21:6379" -> 0 when it is a dotted IPv4 (each octet <= 255) and a port 1..65535.
valid_addr() {
    local ip=${1%:*} port=${1##*:} o
    [[ $1 =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}:[0-9]{1,5}$ ]] || return 1
    for o in ${ip//./ }; do (( 10#$o <= 255 )) || return 1; done
    (( 10#$port >= 1 && 10#$port <= 65535 ))
}

# known_node "10.0.0.21:6379" -> 0 when the address is one of REDIS_NODES (a Sentinel never sends
# HAProxy anywhere else, even if it were misconfigured or impersonated).
known_node() {
    local n
    for n in $REDIS_NODES; do [ "$1" = "$n" ] || [ "$1" = "$n:6379" ] && return 0; done
    return 1
}

# ask_sentinel "10.0.0.21[:26379]" -> prints "ip:port" of its master, or nothing.
ask_sentinel() {
    local host=${1%:*} port=$SENTINEL_PORT reply
    [[ $1 == *:* ]] && port=${1##*:}
    reply=$(timeout "$QUERY_TIMEOUT" redis-cli --no-auth-warning --user "$REDIS_HAPROXY_USER" -h "$host" -p "$port" --raw \
        SENTINEL get-master-addr-by-name "$MASTER_NAME" 2>/dev/null) || return 0
    # a good answer is exactly two lines: the IP and the port
    [ "$(printf '%s\n' "$reply" | wc -l)" -eq 2 ] || return 0
    reply=$(printf '%s\n' "$reply" | tr -d '\r' | paste -sd: -)
    valid_addr "$reply" && printf '%s\n' "$reply"
}

# sentinel_answers -> one line per Sentinel that gave a well-formed answer. All are asked at once, and the
# answers are returned as soon as a majority of them agree: a Sentinel on a dead host (no RST: its query runs
# into QUERY_TIMEOUT) does not hold up a failover (issue 10 §1); otherwise when every query has ended.
sentinel_answers() {
    local s tmp total=0 polls=0 pids=()
    tmp=$(mktemp -p "$RUN_DIR" answers.XXXXXX) || return 0
    for s in $SENTINELS; do
        total=$((total + 1))
        { ask_sentinel "$s"; echo "#done"; } >>"$tmp" &
        pids+=($!)
    done
    # each query ends within QUERY_TIMEOUT (timeout); 500 polls (10 s) bound the loop whatever happens
    while [ "$(grep -c '^#done$' "$tmp")" -lt "$total" ] && [ $((polls += 1)) -le 500 ] \
        && [ -z "$(grep -v '^#done$' "$tmp" | grep . | majority_of "$total")" ]; do
        sleep 0.02
    done
    kill "${pids[@]}" 2>/dev/null
    grep -v '^#done$' "$tmp"; rm -f "$tmp"
}

# majority_of TOTAL <answers -> the address more than half of TOTAL Sentinels gave, else nothing
majority_of() {
    sort | uniq -c | sort -rn | awk -v need=$(($1 / 2 + 1)) 'NR == 1 && $1 >= need { print $2 }'
}

# sentinel_majority CURRENT -> the address a strict majority of the configured Sentinels agree on.
# Sentinels switch one after the other (within a second: the leader first, the others on its hello
# message): when some already name another master than CURRENT but no majority does yet, ask again a few
# times (10 x 0.1 s) rather than waiting for the next trigger. Not when fewer Sentinels than a majority
# answered at all (a partition, Sentinels down): asking again cannot make a majority, and the fail-closed
# clock (fail_closed) must start at once.
sentinel_majority() {
    local s total=0 answers winner try
    for s in $SENTINELS; do total=$((total + 1)); done
    for try in 1 2 3 4 5 6 7 8 9 10; do
        answers=$(sentinel_answers)
        winner=$(printf '%s' "$answers" | grep . | majority_of "$total")
        if [ -n "$winner" ]; then echo "$winner"; return 0; fi
        [ "$(printf '%s' "$answers" | grep -c .)" -ge $((total / 2 + 1)) ] || return 0  # too few answered
        printf '%s\n' "$answers" | grep -qvxF -e "$1" -e '' || return 0  # nobody names another master
        sleep 0.1
    done
}

# is_master "ip:port" -> 0 when the node itself says ROLE master.
is_master() {
    local role
    role=$(timeout "$QUERY_TIMEOUT" redis-cli --no-auth-warning --user "$REDIS_HAPROXY_USER" -h "${1%:*}" -p "${1##*:}" --raw ROLE 2>/dev/null \
        | head -n1 | tr -d '\r')
    [ "$role" = master ]
}

# cfg_master FILE -> the address of `server redis-master` inside `backend be_redis_master`.
cfg_master() {
    awk '/^[ \t]*(backend|frontend|listen|defaults|global|peers|resolvers|userlist)[ \t]/ { inb = ($1 == "backend" && $2 == "be_redis_master") }
         inb && $1 == "server" && $2 == "redis-master" { print $3; exit }' "$1"
}

# master_cli "command" -> HAProxy master CLI (all processes are reachable from it: @1, @!<pid>).
master_cli() {
    [ -S "$HAPROXY_MASTER_SOCKET" ] || return 1
    printf '%s\n' "$1" | timeout 3 socat -t 2 stdio "UNIX-CONNECT:$HAPROXY_MASTER_SOCKET"
}

# runtime_master -> "ip:port" the current HAProxy worker uses for be_redis_master/redis-master.
runtime_master() {
    master_cli "@1 show servers state be_redis_master" 2>/dev/null | \
        awk '$2 == "be_redis_master" && $4 == "redis-master" { print $5 ":" $19; exit }'
}

# worker_pids -> pids of the current and old HAProxy workers (old ones still hold sessions after a reload).
worker_pids() {
    master_cli "show proc" 2>/dev/null | awk '$2 == "worker" { print $1 }'
}

# follow_at_runtime "ip:port": route new connections to it now, and cut every session of every worker
# to the previous address, before the reload (which alone would leave established sessions in place).
follow_at_runtime() {
    local addr=$1 pid
    master_cli "@1 set server be_redis_master/redis-master addr ${addr%:*} port ${addr##*:}" >/dev/null || return 1
    # the server was probably marked DOWN while the old master was dead: new address, fresh start
    master_cli "@1 set server be_redis_master/redis-master health up" >/dev/null || return 1
    [ "$KILL_OLD_SESSIONS" = 1 ] || return 0
    for pid in $(worker_pids); do
        master_cli "@!$pid shutdown sessions server be_redis_master/redis-master" >/dev/null
    done
}

# fail_closed: no majority now. Put the server in maintenance (and cut its sessions in every worker) once no
# majority has been seen for NO_MAJORITY_MAINT s; $RUN_DIR/no-majority-since and $RUN_DIR/maint keep the state.
fail_closed() {
    local now since pid
    now=$(date +%s%3N)  # milliseconds: whole seconds could cut the wait short by up to 1 s
    [ -s "$RUN_DIR/no-majority-since" ] || echo "$RUN_STARTED" >"$RUN_DIR/no-majority-since"
    since=$(cat "$RUN_DIR/no-majority-since" 2>/dev/null || echo "$now")
    [ "$since" -ge 100000000000 ] 2>/dev/null || since=$((since * 1000))  # a state file in seconds (older script)
    [ $((now - since)) -ge $((NO_MAJORITY_MAINT * 1000)) ] || return 0
    [ -e "$RUN_DIR/maint" ] && [ "$(runtime_admin_state)" != 0 ] && return 0
    master_cli "@1 set server be_redis_master/redis-master state maint" >/dev/null || return 0
    for pid in $(worker_pids); do
        master_cli "@!$pid shutdown sessions server be_redis_master/redis-master" >/dev/null
    done
    : >"$RUN_DIR/maint"
    log "no majority of Sentinels for $(((now - since) / 1000)) s: be_redis_master in MAINTENANCE (fail closed) until one is seen again"
}

# majority_seen: a majority answered again; leave maintenance if this script put the server there.
majority_seen() {
    rm -f "$RUN_DIR/no-majority-since"
    [ -e "$RUN_DIR/maint" ] || return 0
    master_cli "@1 set server be_redis_master/redis-master state ready" >/dev/null || return 0
    rm -f "$RUN_DIR/maint"
    log "a majority of Sentinels answers again: be_redis_master out of maintenance"
}

# runtime_admin_state -> srv_admin_state of be_redis_master/redis-master in the current worker (0 = none)
runtime_admin_state() {
    master_cli "@1 show servers state be_redis_master" 2>/dev/null | \
        awk '$2 == "be_redis_master" && $4 == "redis-master" { print $7; exit }'
}

main() {
    local new current running candidate
    RUN_STARTED=$(date +%s%3N)
    current=$(cfg_master "$HAPROXY_CFG")
    new=$(sentinel_majority "${current:-none}")
    if [ -z "$new" ]; then
        log "no majority of Sentinels ($SENTINELS) agrees on a master of $MASTER_NAME; haproxy.cfg untouched"
        fail_closed
        return 3
    fi
    if ! known_node "$new"; then
        log "Sentinels name $new, which is not a Redis node ($REDIS_NODES); haproxy.cfg untouched"
        return 6
    fi
    if ! valid_addr "${current:-x}"; then
        log "no valid 'server redis-master' line in $HAPROXY_CFG; refusing to edit it"
        return 2
    fi
    running=$(runtime_master)
    if [ "$new" = "$current" ] && { [ -z "$running" ] || [ "$running" = "$new" ]; }; then
        majority_seen
        return 0  # nothing changed: no write, no reload
    fi
    if ! is_master "$new"; then
        log "Sentinels name $new but it does not answer ROLE master; haproxy.cfg untouched"
        return 6
    fi
    majority_seen  # before the switch: the new master is served as soon as HAProxy points at it
    # HAProxy first, at runtime (the fast path: new connections go to the new master and no session stays
    # on the old one from this moment); then the file, validated, and the reload that makes it durable
    if [ "$new" != "$running" ]; then
        log "switch be_redis_master: old master ${running:-$current} -> new master $new"
        follow_at_runtime "$new" || log "runtime update failed (HAProxy down?); the file and reload follow"
    fi
    [ "$new" != "$current" ] || return 0  # the file was right already (a failed reload, a hand edit)
    # a unique name beside haproxy.cfg (atomic rename; never the deploy's candidate); the copy keeps owner and
    # mode; only the one server line of be_redis_master changes
    candidate=$(mktemp "$HAPROXY_CFG.redis-update.XXXXXX") || return 4
    cp -p "$HAPROXY_CFG" "$candidate" || { rm -f "$candidate"; return 4; }
    awk -v new="$new" '
        /^[ \t]*(backend|frontend|listen|defaults|global|peers|resolvers|userlist)[ \t]/ { inb = ($1 == "backend" && $2 == "be_redis_master") }
        inb && $1 == "server" && $2 == "redis-master" { sub(/[0-9.]+:[0-9]+/, new) }
        { print }' "$HAPROXY_CFG" >"$candidate" || { rm -f "$candidate"; return 4; }
    if [ "$(cfg_master "$candidate")" != "$new" ] \
        || ! timeout -k 5 "$CHECK_TIMEOUT" $HAPROXY_CHECK_CMD "$candidate" >/dev/null 2>&1 </dev/null; then
        log "candidate config for $new is invalid; haproxy.cfg untouched, no reload"
        rm -f "$candidate"
        return 4
    fi
    mv -f "$candidate" "$HAPROXY_CFG" || { rm -f "$candidate"; return 4; }
    log "haproxy.cfg: server redis-master $current -> $new (validated); reloading"
    if ! timeout -k 5 "$RELOAD_TIMEOUT" $HAPROXY_RELOAD_CMD </dev/null; then
        log "reload failed or took more than $RELOAD_TIMEOUT s (the running HAProxy was updated at runtime)"
        return 7
    fi
    return 0
}

# finish CODE: record the outcome in $RUN_DIR and exit (see "Never silent" above)
finish() {
    local code=$1 now since
    now=$(date +%s)
    if [ "$code" = 0 ]; then
        echo "$now" >"$RUN_DIR/last-follow"
        rm -f "$RUN_DIR/failing-since"
        # following again, whoever ran this (the watcher, the deploy, by hand): the unit's old failure is history
        # (the journal keeps it); left in place it would keep `invoke check` red while the follower works
        if command -v systemctl >/dev/null 2>&1 \
            && timeout 5 systemctl is-failed --quiet redis-update-master.service 2>/dev/null; then
            timeout 5 systemctl reset-failed redis-update-master.service 2>/dev/null \
                && log "following again: cleared the earlier failure of redis-update-master.service"
        fi
        exit 0
    fi
    [ -s "$RUN_DIR/failing-since" ] || echo "$now" >"$RUN_DIR/failing-since"
    since=$(cat "$RUN_DIR/failing-since" 2>/dev/null || echo "$now")
    if [ $((now - since)) -lt "$FAIL_AFTER" ]; then
        log "could not follow (code $code) for $((now - since)) s; failing the unit after $FAIL_AFTER s"
        exit 0
    fi
    local last
    last=$(cat "$RUN_DIR/last-follow" 2>/dev/null) && last="$(date -d "@$last" '+%F %T') ($((now - last)) s ago)" \
        || last="never since boot"
    log "NOT FOLLOWING the Redis master for $((now - since)) s (code $code; last successful follow: $last)"
    exit "$code"
}

exec 9>>"$LOCK_FILE" || { log "cannot open $LOCK_FILE"; exit 2; }
if ! timeout -k 1 "$((LOCK_WAIT + 5))" flock -w "$LOCK_WAIT" 9; then
    log "lock busy: another run or the haproxy deploy holds $LOCK_FILE for $LOCK_WAIT s; giving up this one"
    finish 5
fi
main
finish $?
