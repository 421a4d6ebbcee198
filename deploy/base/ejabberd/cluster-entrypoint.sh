#!/bin/sh
# The ejabberd container's command (under tini): run ejabberd beside
# kube-epmd and carry out the sidecar's cluster plan. Every decision (seed,
# join, hold the lowest node, drop a stale entry, force-load, prune) is
# made by kube-epmd's pure planner (src/cluster/plan.rs; README "Joining,
# restarts, scaling"); this script only observes, asks and acts:
#   observe  cluster-probe.erl on a short-lived hidden node reads every
#            pod's Mnesia and POSTs the facts to the sidecar's /cluster/plan
#   act      the plan's first line: wait N | start | drop-stale NODE |
#            force-load NODE | set-aside | seed | joined | join NODE |
#            restart-empty | remove NODE | idle | fail (its second line
#            says why)
#
# No database is ever deleted that may hold what a client wrote: one the
# cluster dropped (set-aside), or one without the marker that this script
# did not create empty itself, is moved into $SPOOL/set-aside/<UTC time>/
# on the volume (CLUSTER_UNMARKED_DATABASE=fail refuses to start instead).
#
#   cluster-entrypoint.sh             run ejabberd (the container's command)
#   cluster-entrypoint.sh query       print what the probe sees (JSON)
#   cluster-entrypoint.sh force-load  MANUAL ESCAPE HATCH, loses data: in ONE
#       pod, the one that went down last among those left, when the node that
#       went down last is gone for good (README); its own copy of every table
#       is loaded now, whatever only the lost node had is gone.
#   cluster-entrypoint.sh erl         print the erl used for the hidden node
set -u
: "${POD_NAME:?POD_NAME must be set (downward API)}"
: "${ERLANG_NODE_ARG:?ERLANG_NODE_ARG must be set}"
HOSTS_FILE=${KUBE_EPMD_HOSTS_FILE:-/var/run/kube-epmd/hosts}
REPLICAS_FILE=${KUBE_EPMD_REPLICAS_FILE:-${HOSTS_FILE%/*}/replicas}
ADMIN=${KUBE_EPMD_ADMIN:-127.0.0.1:9090}
PROBE=${CLUSTER_PROBE:-$(cd "${0%/*}" && pwd)/cluster-probe.erl}
SPOOL=${CLUSTER_SPOOL_DIR:-/opt/ejabberd/database}
MARKER=$SPOOL/.kube-epmd-clustered
# Written when this script starts ejabberd on an empty database, removed
# when that node seeds or joins: a database without the marker but with
# this flag is this script's own, empty, never served (not Ready before the
# marker), and may go.
CREATED_EMPTY=$SPOOL/.kube-epmd-created-empty
UNMARKED=${CLUSTER_UNMARKED_DATABASE:-set-aside}
READY_FLAG=${CLUSTER_READY_FLAG:-/tmp/kube-epmd-clustered}
CHECK_INTERVAL=${CLUSTER_CHECK_INTERVAL:-${CLUSTER_PRUNE_INTERVAL:-10}}
PARTITION=${CLUSTER_PARTITION_HANDLING:-pause_minority}
# On the volume while this node has stopped serving for want of a majority
# (README "Network partitions"): its copy is older than the majority's.
PAUSED=$SPOOL/.kube-epmd-paused
# Set by the running loop before it stops ejabberd for a pause or a rejoin:
# the script boots again instead of exiting.
RESTART=${READY_FLAG}.restart
TIMING="${CLUSTER_LOAD_GRACE:-15} ${CLUSTER_HOLD_MAX:-120} ${CLUSTER_JOIN_TIMEOUT:-300}"
CTL=${EJABBERDCTL:-ejabberdctl}
CTL_CONFIG_DIR=${CONFIG_DIR:-/opt/ejabberd/conf}
me=$ERLANG_NODE_ARG
own_host=${me#*@}
stopping=0 vm='' ctl_pid='' beacon_pid='' loop_pid=''

log() { printf 'cluster-entrypoint: %s\n' "$*" >&2; }

# The erl ejabberdctl runs: its ERL= line (Debian: /usr/bin/erl; the image's
# release: ${SCRIPT_DIR%/*}/erts-$ERTS_VSN/bin/erl, reached through the
# /usr/local/bin wrapper's exec line). CLUSTER_ERL overrides; PATH is last.
find_erl() {
    [ -n "${CLUSTER_ERL:-}" ] && { echo "$CLUSTER_ERL"; return; }
    s=$(command -v "$CTL" 2>/dev/null) || s=
    for f in $s $(sed -n 's|^[ \t]*exec[ \t]\{1,\}\(/[^ \t]*ejabberdctl\).*|\1|p' "$s" 2>/dev/null); do
        e=$(line=$(sed -n 's/^ERL=//p' "$f" 2>/dev/null | head -n 1)
            [ -n "$line" ] || exit 0
            # shellcheck disable=SC2034 # both read by the eval
            SCRIPT_DIR=${f%/*} ERTS_VSN=$(sed -n 's/^ERTS_VSN="\{0,1\}\([^"]*\)"\{0,1\}[ \t]*$/\1/p' "$f" | head -n 1)
            eval "printf '%s' $line")
        [ -n "$e" ] && [ -x "$e" ] && [ ! -d "$e" ] && { echo "$e"; return; }
    done
    for e in /opt/ejabberd*/erts-*/bin/erl; do [ -x "$e" ] && { echo "$e"; return; }; done
    command -v erl
}

# exec a hidden node NAME@our-host (arguments after it) as ejabberdctl
# starts one: its ejabberdctl.cfg (distribution window, options), cookie.
hidden_erl() {
    name=$1 && shift
    ERL_OPTIONS='' FIREWALL_WINDOW=''
    # shellcheck disable=SC1091
    [ -r "$CTL_CONFIG_DIR/ejabberdctl.cfg" ] && . "$CTL_CONFIG_DIR/ejabberdctl.cfg"
    erl=$(find_erl) || { log "no erl found (set CLUSTER_ERL)"; exit 127; }
    # The image's ejabberdctl writes the cookie file on first use; we may be first.
    [ -n "${ERLANG_COOKIE:-}" ] && [ ! -f "$HOME/.erlang.cookie" ] &&
        (umask 077 && echo "$ERLANG_COOKIE" > "$HOME/.erlang.cookie")
    case $own_host in *.*) flag=-name ;; *) flag=-sname ;; esac
    w=${FIREWALL_WINDOW:+-kernel inet_dist_listen_min ${FIREWALL_WINDOW%-*} inet_dist_listen_max ${FIREWALL_WINDOW#*-}}
    export ERL_INETRC="$CTL_CONFIG_DIR/inetrc"
    cd / || exit 1
    # shellcheck disable=SC2086
    exec "$erl" $flag "$name@$own_host" -hidden -noinput -noshell -start_epmd false $w $ERL_OPTIONS "$@"
}

probe() { # MODE ARGS...: cluster-probe.erl (it halts by itself within 60 s)
    (hidden_erl "cluster-$(cut -c1-8 /proc/sys/kernel/random/uuid 2>/dev/null || echo $$)-${me%%@*}" \
        -eval "case file:script(\"$PROBE\") of {ok, _} -> halt(0); E -> io:format(standard_error, \"cluster-probe: ~p~n\", [E]), halt(2) end" \
        -extra "$@")
}

# While this pod has no database and ejabberd does not run, the hidden node
# cluster-empty-NODE tells the other pods so (the probe sees "empty"). It
# holds no state: killed outright.
beacon_start() { [ -n "$beacon_pid" ] || { (hidden_erl "cluster-empty-${me%%@*}") & beacon_pid=$!; }; }
beacon_stop() {
    [ -n "$beacon_pid" ] && { kill -KILL "$beacon_pid" 2>/dev/null; wait "$beacon_pid" 2>/dev/null; }
    beacon_pid=
}

# Sleep and ejabberdctl run in the background so SIGTERM is handled at once.
pause() { sleep "$1" & wait $! 2>/dev/null; }
ctl() { "$CTL" "$@" & ctl_pid=$!; wait "$ctl_pid"; rc=$?; ctl_pid=; [ "$stopping" = 0 ] && return "$rc"; }
wait_vm() { while :; do wait "$vm"; rc=$?; kill -0 "$vm" 2>/dev/null || return "$rc"; done; }
wait_started() {
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        [ "$stopping" = 0 ] && kill -0 "$vm" 2>/dev/null || return 1
        ctl started && return 0
    done
    return 1
}
start_vm() { log "starting $me"; "$CTL" foreground & vm=$!; wait_started || fail "ejabberd did not start"; }
# `ejabberdctl stop` whether ejabberdctl exec'ed the VM (the image's) or runs
# it as a child (Debian's); signals for a node not up far enough for it.
stop_vm() {
    [ -n "$vm" ] && kill -0 "$vm" 2>/dev/null || return 0
    "$CTL" stop >/dev/null 2>&1 || { pkill -TERM -P "$vm" 2>/dev/null; kill -TERM "$vm" 2>/dev/null; }
    wait_vm
}
fail() { log "$*"; [ -n "$loop_pid" ] && kill "$loop_pid" 2>/dev/null; beacon_stop; stop_vm; exit 1; }
# From the running loop (not the VM's parent): `ejabberdctl stop`, and the
# VM killed if it is still there after 10 s: cut off from its peers, a
# stop can hang on Mnesia until net_ticktime gives up on them (45-75 s),
# and a paused node must be gone before then (README "Network
# partitions": until Mnesia's nodedown it acknowledges no write).
stop_from_loop() {
    "$CTL" stop >/dev/null 2>&1 &
    i=0
    while kill -0 "$vm" 2>/dev/null && [ "$i" -lt 10 ]; do sleep 1; i=$((i + 1)); done
    kill -0 "$vm" 2>/dev/null && { log "ejabberd still runs 10 s after stop: killed"; pkill -KILL -P "$vm"; kill -KILL "$vm"; }
}

# Ask for the plan in phase $1: sets action, arg, reason; logs each new one.
decide() {
    now=$(date +%s) marker=false paused=false
    [ -e "$MARKER" ] && marker=true
    [ -e "$PAUSED" ] && paused=true
    # shellcheck disable=SC2086 # TIMING is three numbers
    out=$(probe plan "$ADMIN" "$me" "$1" "$marker" $((now - t_start)) $((now - t_phase)) $TIMING "$PARTITION" "$paused") ||
        out="wait 3
the probe failed (above); asking again"
    { read -r action arg; read -r reason; } <<EOF
$out
EOF
    [ "$action $arg $reason" = "${last:-}" ] || log "${action:-?}${arg:+ $arg}: ${reason:-}"
    last="$action $arg $reason"
}

# Running: the plan is asked every CHECK_INTERVAL seconds (a partition is
# only seen by looking): it prunes scaled-away nodes, pauses this node when
# it cannot reach a majority, and has it rejoin when a healed partition
# left it on the side that gives way. For those two it stops ejabberd; the
# main loop sees RESTART and boots again.
running_loop() {
    trap 'exit 0' TERM INT
    while :; do
        decide running
        case $action in
            remove) "$CTL" leave_cluster "$arg" >&2 && continue ;;
            pause)
                : > "$PAUSED" && : > "$RESTART"
                log "paused: ejabberd stops until a majority is reachable again"
                stop_from_loop
                exit 0 ;;
            rejoin)
                lost=$(probe diverged "$me" "$arg" 2>/dev/null | tr '\n' ' ')
                log "rejoin: discarding what this side wrote during the partition; tables that differ from $arg (table, here, there): ${lost:-none}"
                # Like a pause: boot again, copy only from the side that
                # stays once no node of this side runs apart from it.
                : > "$PAUSED" && : > "$RESTART"
                stop_from_loop
                exit 0 ;;
        esac
        sleep "$CHECK_INTERVAL"
    done
}

# Mnesia's files on the volume (the image keeps other files there too).
mnesia_files() {
    for f in "$SPOOL"/*.DAT "$SPOOL"/*.DCD "$SPOOL"/*.DCL "$SPOOL"/*.LOG "$SPOOL"/*.BUP "$SPOOL"/*.TMP; do
        [ -e "$f" ] && printf '%s\n' "$f"
    done
}

# set_aside WHY: move Mnesia's files and the marker into a new directory
# $SPOOL/set-aside/<UTC time>/ on the same volume (a rename: instant, and
# Mnesia never looks there). Kept until an operator deletes it; README
# "Backup and restore" says how to get users back from it.
set_aside() {
    if [ -z "$(mnesia_files)" ]; then rm -f "$MARKER"; return 0; fi
    dir=$SPOOL/set-aside/$(date -u +%Y%m%dT%H%M%SZ)-$$
    mkdir -p "$dir" || fail "cannot create $dir"
    mnesia_files | while IFS= read -r f; do mv "$f" "$dir/" || exit 1; done ||
        fail "cannot move the database into $dir"
    [ -e "$MARKER" ] && { mv "$MARKER" "$dir/" || fail "cannot move $MARKER into $dir"; }
    rm -f "$PAUSED"
    log "database moved to $dir (kept, not deleted): $1"
}

# Start without the marker: the database, if any, is not the cluster's (a
# join the container did not live to record, which the members may have
# dropped since, or a database put there by hand): ejabberd starts empty.
# This script's own empty database goes; any other is set aside.
fresh_db() {
    if [ -e "$CREATED_EMPTY" ]; then
        mnesia_files | while IFS= read -r f; do rm -f "$f"; done
    else
        set_aside "no marker: not the cluster's database"
    fi
    : > "$CREATED_EMPTY" || fail "cannot write $CREATED_EMPTY"
}
in_cluster() { : > "$MARKER" || fail "cannot write $MARKER"; rm -f "$CREATED_EMPTY"; }

run() {
    rm -f "$READY_FLAG" "$RESTART"
    case $PARTITION in
        pause_minority|autoheal) ;;
        *) fail "CLUSTER_PARTITION_HANDLING=$PARTITION: pause_minority or autoheal" ;;
    esac
    # SIGTERM from tini (pod deletion): stop ejabberd, then leave.
    trap 'stopping=1; [ -n "$ctl_pid" ] && kill "$ctl_pid" 2>/dev/null; beacon_stop; stop_vm; exit 0' TERM INT
    # ejabberdctl reaches the local node by its name: wait for kube-epmd to list it.
    i=0
    until grep -q "[[:space:]]$own_host\([[:space:]]\|\$\)" "$HOSTS_FILE" 2>/dev/null; do
        [ "$i" -lt 120 ] || fail "$own_host is not in $HOSTS_FILE after 120 s: is kube-epmd running?"
        pause 1 && i=$((i + 1))
    done
    # A join the container did not live to record: the database's own
    # schema lists the cluster's nodes. It is the cluster's: say so.
    if [ ! -e "$MARKER" ] && [ -n "$(probe schema "$SPOOL" "$me" 2>/dev/null)" ]; then
        log "the database's schema lists other nodes (a join not recorded): marker restored"
        in_cluster
    fi
    # A database without the marker that this script did not create: by
    # default set aside at start (fresh_db); CLUSTER_UNMARKED_DATABASE=fail
    # refuses to touch it (a database placed by hand, README "Migration").
    if [ ! -e "$MARKER" ] && [ ! -e "$CREATED_EMPTY" ] && [ -n "$(mnesia_files)" ]; then
        case $UNMARKED in
            set-aside) ;;
            fail) fail "$SPOOL holds a database without the marker $MARKER (CLUSTER_UNMARKED_DATABASE=fail): see README \"Migration\"" ;;
            *) fail "CLUSTER_UNMARKED_DATABASE=$UNMARKED: set-aside or fail" ;;
        esac
    fi
    t_start=$(date +%s) t_phase=$t_start phase=boot
    [ -e "$MARKER" ] || beacon_start
    while :; do
    while [ "$phase" != running ]; do
        [ "$phase" = boot ] || kill -0 "$vm" 2>/dev/null || fail "ejabberd exited while joining"
        decide "$phase"
        case $action in
            wait) pause "${arg:-3}" ;;
            start)
                [ -e "$MARKER" ] || fresh_db
                beacon_stop && start_vm
                if [ -e "$MARKER" ]; then phase=running; else phase=joining t_phase=$(date +%s); fi ;;
            drop-stale) ctl --node "$arg" leave_cluster "$me" || pause 3 ;;
            force-load) probe force-load "$arg" >&2 || pause 3 ;;
            # The cluster dropped this node: its database goes aside and it
            # boots again without one (the beacon says so to the others).
            set-aside) set_aside "$reason" && beacon_start && t_phase=$(date +%s) ;;
            seed) in_cluster && phase=running ;;
            # A join ejabberdctl reported failed may have happened: the
            # database is the cluster's now; an ejabberd stuck after it
            # restarts, as a member.
            joined)
                in_cluster
                wait_started || fail "ejabberd did not start after joining"
                phase=running ;;
            join)
                if ctl join_cluster "$arg"; then
                    wait_started || fail "ejabberd did not start again after join_cluster"
                    in_cluster && log "joined the cluster through $arg" && phase=running
                else
                    # ejabberd 23.01 restarts its applications inside the
                    # join: the call can end in badrpc although the join
                    # happened (then the plan says joined).
                    rc=$? && log "join_cluster $arg: ejabberdctl exited $rc; asking the plan again"
                    pause 3
                fi ;;
            restart-empty) stop_vm; beacon_start; phase=boot t_phase=$(date +%s) ;;
            fail) fail "could not decide: see above, or run 'ejabberdctl join_cluster' by hand" ;;
            *) pause 3 ;;
        esac
    done
    # Started after a pause: the tables came from the majority.
    [ -e "$PAUSED" ] && rm -f "$PAUSED" && log "back in the cluster after the pause"
    : > "$READY_FLAG"
    running_loop & loop_pid=$!
    wait_vm
    rc=$?
    kill "$loop_pid" 2>/dev/null
    wait "$loop_pid" 2>/dev/null
    loop_pid=
    [ -e "$RESTART" ] || exit "$rc"
    rm -f "$RESTART"
    t_phase=$(date +%s) phase=boot
    done
}

case "${1:-run}" in
    run) run ;;
    query) probe query "$ADMIN" "$me" ;;
    force-load) probe force-load "$me" ;;
    erl) find_erl ;;
    *) log "usage: $0 [run|query|force-load|erl]"; exit 2 ;;
esac
