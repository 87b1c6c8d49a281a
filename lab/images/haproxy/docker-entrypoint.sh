#!/bin/sh
# Same contract as the official haproxy image's entrypoint: `haproxy ...` (or bare options) runs in
# master-worker mode (-W: `docker kill -s HUP` / USR2 reloads without dropping connections) and in
# the foreground (-db).
set -e
if [ "${1#-}" != "$1" ]; then
  set -- haproxy "$@"
fi
if [ "$1" = haproxy ]; then
  shift
  set -- haproxy -W -db "$@"
fi
exec "$@"
