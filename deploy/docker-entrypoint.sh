#!/bin/sh
# Entrypoint of the baton-relay image.
#
# The admin server (allocation API, /metrics, probes) listens on 127.0.0.1:7701 inside the
# container by default, which the outside cannot reach. It is bound to 0.0.0.0:7701, and so
# reachable through the published port, only when BATON_ADMIN_TOKEN is set, so that the
# allocation API is never exposed unauthenticated. To expose it without a token anyway (for
# example behind a Kubernetes NetworkPolicy), set BATON_ADMIN_LISTEN=0.0.0.0:7701 yourself;
# an explicit BATON_ADMIN_LISTEN or BATON_NO_ADMIN is always respected.
set -eu

if [ -n "${BATON_ADMIN_TOKEN:-}" ] && [ -z "${BATON_ADMIN_LISTEN:-}" ] && [ -z "${BATON_NO_ADMIN:-}" ]; then
    export BATON_ADMIN_LISTEN=0.0.0.0:7701
fi

# exec: the relay is PID 1 and receives SIGTERM from `docker stop` directly.
exec /usr/local/bin/baton-relay "$@"
