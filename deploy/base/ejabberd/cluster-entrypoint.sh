#!/bin/sh
# The ejabberd container's command (under tini): start ejabberd in the
# foreground beside kube-epmd and, the first time this node starts with an
# empty database, join a running peer once.
#
#   cluster-entrypoint.sh         run ejabberd
#   cluster-entrypoint.sh peers   print the other nodes' names, lowest ordinal first
#
# Peers come from the hosts file that kube-epmd keeps in the shared volume:
# every pod of the StatefulSet that has an IP, Ready or not. Their node names
# follow our own ERLANG_NODE_ARG: ejabberd@chat-0.xmpp-internal-svc gives
# ejabberd@chat-N.xmpp-internal-svc, ejabberd@chat-0 gives ejabberd@chat-N.
#
# Cluster membership is decided once per database volume: a marker file in
# the volume records that this node joined (or seeded) a cluster. After
# that, restarts rejoin through Mnesia's own schema and nothing is run.
#   - no marker, a peer answers: `ejabberdctl join_cluster PEER`, then mark;
#   - no marker, ordinal 0, no other pod listed: seed a new cluster, mark;
#   - otherwise keep trying (CLUSTER_JOIN_TIMEOUT seconds), then exit 1 so
#     the container restarts: never seed a second cluster beside a live one.
set -u

: "${POD_NAME:?POD_NAME must be set (downward API)}"
: "${ERLANG_NODE_ARG:?ERLANG_NODE_ARG must be set}"
HOSTS_FILE=${KUBE_EPMD_HOSTS_FILE:-/var/run/kube-epmd/hosts}
SPOOL=${CLUSTER_SPOOL_DIR:-/opt/ejabberd/database}
MARKER=$SPOOL/.kube-epmd-clustered
READY_FLAG=${CLUSTER_READY_FLAG:-/tmp/kube-epmd-clustered}
JOIN_TIMEOUT=${CLUSTER_JOIN_TIMEOUT:-300}
CTL=${EJABBERDCTL:-ejabberdctl}

node_prefix=${ERLANG_NODE_ARG%%@*}
own_host=${ERLANG_NODE_ARG#*@}
statefulset=${POD_NAME%-*}
ordinal=${POD_NAME##*-}
host_suffix=${own_host#"$POD_NAME"}
stopping=0
vm=

log() { printf 'cluster-entrypoint: %s\n' "$*" >&2; }

# The other pods' node names, lowest ordinal first, one per pod (a dual-stack
# pod has two lines in the hosts file).
peers() {
    [ -r "$HOSTS_FILE" ] || return 0
    awk -v sts="$statefulset-" -v suffix="$host_suffix" -v self="$own_host" \
        -v prefix="$node_prefix" '
        /^[ \t]*#/ { next }
        {
            for (i = 2; i <= NF; i++) {
                name = $i
                if (name == self || length(name) <= length(suffix)) continue
                if (substr(name, length(name) - length(suffix) + 1) != suffix) continue
                base = substr(name, 1, length(name) - length(suffix))
                if (index(base, sts) != 1) continue
                ord = substr(base, length(sts) + 1)
                if (ord !~ /^[0-9]+$/) continue
                print ord " " prefix "@" name
            }
        }' "$HOSTS_FILE" | sort -n -u -k1,1 | cut -d' ' -f2
}

# Our own name must resolve before ejabberd starts: ejabberdctl reaches the
# local node by its name. kube-epmd lists this pod once the API shows its IP.
own_entry_listed() {
    [ -r "$HOSTS_FILE" ] || return 1
    awk -v ip="${POD_IP:-}" -v host="$own_host" '
        ip == "" || $1 == ip { for (i = 2; i <= NF; i++) if ($i == host) found = 1 }
        END { exit !found }' "$HOSTS_FILE"
}

# Sleep and ejabberdctl run in the background so that SIGTERM is handled at
# once instead of after the command ends.
pause() {
    sleep "$1" &
    wait $! 2>/dev/null
}

ctl() {
    "$CTL" "$@" &
    ctl_pid=$!
    wait "$ctl_pid"
    rc=$?
    if [ "$stopping" = 1 ]; then
        kill "$ctl_pid" 2>/dev/null
        return 1
    fi
    return "$rc"
}

wait_vm() {
    while :; do
        wait "$vm"
        rc=$?
        kill -0 "$vm" 2>/dev/null || return "$rc"
    done
}

# Stop ejabberd gracefully and wait until it has exited. `ejabberdctl stop`
# works whether ejabberdctl exec'ed the VM (the image's does) or runs it as
# a child (Debian's does: a signal to it would orphan the VM). Signals are
# the fallback for a node that is not up far enough to take commands.
stop_vm() {
    [ -n "$vm" ] && kill -0 "$vm" 2>/dev/null || return 0
    if ! "$CTL" stop >/dev/null 2>&1; then
        pkill -TERM -P "$vm" 2>/dev/null
        kill -TERM "$vm" 2>/dev/null
    fi
    wait_vm
}

fail() {
    log "$*"
    stop_vm
    exit 1
}

wait_started() {
    tries=0
    while [ "$stopping" = 0 ] && kill -0 "$vm" 2>/dev/null; do
        ctl started && return 0
        tries=$((tries + 1))
        [ "$tries" -lt 10 ] || return 1
    done
    return 1
}

mark_clustered() {
    : > "$MARKER" || fail "cannot write $MARKER"
}

cluster_once() {
    deadline=$(($(date +%s) + JOIN_TIMEOUT))
    while [ "$stopping" = 0 ]; do
        kill -0 "$vm" 2>/dev/null || { log "ejabberd exited while joining"; return 1; }
        listed=0
        for peer in $(peers); do
            listed=1
            log "joining $peer"
            if ctl join_cluster "$peer"; then
                # join_cluster restarts ejabberd on this node.
                wait_started || return 1
                mark_clustered
                log "joined the cluster through $peer"
                return 0
            fi
            # Joined before, but the marker was not written?
            if "$CTL" list_cluster 2>/dev/null | grep -qF "$peer"; then
                mark_clustered
                log "already in the cluster with $peer"
                return 0
            fi
        done
        if [ "$listed" = 0 ] && [ "$ordinal" = 0 ]; then
            mark_clustered
            log "no other pod: $ERLANG_NODE_ARG seeds a new cluster"
            return 0
        fi
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        log "no peer could be joined yet; retrying"
        pause 5
    done
    return 1
}

run() {
    rm -f "$READY_FLAG"
    # SIGTERM from tini (pod deletion): stop ejabberd, then leave.
    trap 'stopping=1; [ -n "${ctl_pid:-}" ] && kill "$ctl_pid" 2>/dev/null; stop_vm; exit 0' TERM INT

    waited=0
    until own_entry_listed; do
        [ "$stopping" = 0 ] || exit 0
        [ "$waited" -lt 120 ] || fail "$own_host is not in $HOSTS_FILE after 120 s: is kube-epmd running?"
        pause 1
        waited=$((waited + 1))
    done

    log "starting $ERLANG_NODE_ARG"
    "$CTL" foreground &
    vm=$!
    wait_started || fail "ejabberd did not start"

    if [ -e "$MARKER" ]; then
        log "clustered before ($MARKER): Mnesia reconnects by itself"
    else
        cluster_once || fail "could not join a cluster: see the peers above, or run 'ejabberdctl join_cluster' by hand"
    fi
    : > "$READY_FLAG"
    wait_vm
    exit $?
}

case "${1:-run}" in
    run) run ;;
    peers) peers ;;
    *) log "usage: $0 [run|peers]"; exit 2 ;;
esac
