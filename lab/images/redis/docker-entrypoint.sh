#!/bin/sh
# Same contract as the official redis image's entrypoint: `docker run IMAGE --port 7000` or
# `docker run IMAGE /path/redis.conf` run redis-server; started as root, redis-server steps down to
# the redis user (the deploy runs it with --user 999:1000 anyway).
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
  set -- redis-server "$@"
fi
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
  find . \! -user redis -exec chown redis '{}' +
  exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi
[ "$(umask)" != 0022 ] || umask 0077
exec "$@"
