#!/bin/sh
# The ejabberd container's command (under tini): start ejabberd in the
# foreground beside kube-epmd, get it into the cluster, and keep the
# cluster's schema free of nodes the StatefulSet scaled away.
#
#   cluster-entrypoint.sh             run ejabberd (the container's command)
#   cluster-entrypoint.sh peers       print the other pods' node names, lowest ordinal first
#   cluster-entrypoint.sh query NODE...
#                                     print "NODE STATE DB_NODES RUNNING_DB_NODES" per node
#   cluster-entrypoint.sh force-load  MANUAL ESCAPE HATCH, loses data: see below
#   cluster-entrypoint.sh erl         print the erl used for the hidden helper node
#
# Peers come from the hosts file kube-epmd keeps in the shared volume: every
# pod of the StatefulSet that has an IP, Ready or not. Their node names follow
# our own ERLANG_NODE_ARG: ejabberd@chat-0.xmpp-internal-svc gives
# ejabberd@chat-N.xmpp-internal-svc, ejabberd@chat-0 gives ejabberd@chat-N.
#
# What each start does, decided per database volume (a marker file in the
# volume records that this node joined or seeded a cluster):
#   - marker present: start ejabberd; Mnesia's schema on the volume lists the
#     other nodes and Mnesia reconnects by itself. After all nodes went down,
#     Mnesia loads each table from the node that went down last (the others
#     wait for it): the pods start in parallel, so it is there. The lowest
#     node of the schema starts only after another node has loaded the
#     tables (see hold_if_lowest: Mnesia would otherwise let it load its own,
#     possibly older, copy). Nothing is forced.
#   - no marker (a new node, or a lost volume): first, if a running member
#     still lists this node in its schema (lost volume), that member drops the
#     stale entry (`ejabberdctl --node MEMBER leave_cluster US`, which for a
#     node that is not running is Mnesia's del_table_copy(schema, US)); pods
#     that do not answer yet get up to LOAD_GRACE seconds to come up first,
#     except those without a database either (see beacon_start). When the members that list us all wait for each
#     other's tables and each saw us go down before it (all pods went down,
#     ours first, and our volume is gone), the lowest of them loads its own
#     copy (see members_wait_for_each_other). Then start ejabberd empty and
#     join a member of the established cluster (a
#     node whose Mnesia knows more nodes than itself). Only ordinal 0 seeds a
#     new cluster, and only when every other listed pod answers, every pod
#     the replicas file counts is among them, and none belongs to a cluster;
#     the others join ordinal 0 in that case. A member found listing us
#     after ejabberd started: stop it, drop the entry, start again. Whoever
#     cannot decide keeps asking, then exits 1 after CLUSTER_JOIN_TIMEOUT so
#     the container restarts: never a second cluster beside a live one.
#   - while running, a background loop removes from the schema every node of
#     this StatefulSet whose ordinal is >= the desired replica count (the file
#     kube-epmd writes from the StatefulSet's spec.replicas), that Mnesia does
#     not see running and whose pod is gone from the hosts file: scaled away.
#     No replicas file (kube-epmd without --statefulset): nobody is removed.
#     Only the lowest running ordinal does it.
#
# Reading another node's Mnesia (even while it waits for tables at boot,
# when no ejabberdctl command works) uses a short-lived hidden Erlang node,
# started with the erl that ejabberdctl itself uses (its ERL= line; Debian:
# /usr/bin/erl, the ejabberd image: the release's erts-*/bin/erl), the same
# ejabberdctl.cfg options (distribution window, -start_epmd false) and cookie.
#
# force-load: for "the node that went down last is gone for good" only. It
# tells the LOCAL node's Mnesia to load its own copy of every table now
# instead of waiting for the others. Whatever was written after this node
# went down is lost (and a node started later from a newer copy is
# overwritten with this one). Run it in ONE pod, the one that went down last
# among those left (not the lowest node, which holds back before starting
# ejabberd until another node has the tables):
#   kubectl -n xmpp exec chat-1 -c ejabberd -- /bin/sh /opt/kube-epmd/cluster-entrypoint.sh force-load
set -u

: "${POD_NAME:?POD_NAME must be set (downward API)}"
: "${ERLANG_NODE_ARG:?ERLANG_NODE_ARG must be set}"
HOSTS_FILE=${KUBE_EPMD_HOSTS_FILE:-/var/run/kube-epmd/hosts}
REPLICAS_FILE=${KUBE_EPMD_REPLICAS_FILE:-${HOSTS_FILE%/*}/replicas}
SPOOL=${CLUSTER_SPOOL_DIR:-/opt/ejabberd/database}
MARKER=$SPOOL/.kube-epmd-clustered
READY_FLAG=${CLUSTER_READY_FLAG:-/tmp/kube-epmd-clustered}
JOIN_TIMEOUT=${CLUSTER_JOIN_TIMEOUT:-300}
PRUNE_INTERVAL=${CLUSTER_PRUNE_INTERVAL:-10}
LOAD_GRACE=${CLUSTER_LOAD_GRACE:-15}
HOLD_MAX=${CLUSTER_HOLD_MAX:-120}
# Rounds (3 s apart) a member may list us without us being in its cluster
# before we take the entry for a stale one (a join takes a second or two).
STALE_ROUNDS=4
CTL=${EJABBERDCTL:-ejabberdctl}
CTL_CONFIG_DIR=${CONFIG_DIR:-/opt/ejabberd/conf}

me=$ERLANG_NODE_ARG
node_prefix=${me%%@*}
own_host=${me#*@}
statefulset=${POD_NAME%-*}
ordinal=${POD_NAME##*-}
host_suffix=${own_host#"$POD_NAME"}
stopping=0
vm=
ctl_pid=
prune_pid=

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

# The ordinal of a node name of this StatefulSet (same prefix and suffix as
# ours), or nothing for any other name.
ordinal_of() {
    n=$1
    [ "${n%%@*}" = "$node_prefix" ] || return 0
    h=${n#*@}
    [ "${h%"$host_suffix"}$host_suffix" = "$h" ] || return 0
    h=${h%"$host_suffix"}
    [ "${h#"$statefulset"-}" != "$h" ] || return 0
    h=${h#"$statefulset"-}
    case $h in '' | *[!0-9]*) return 0 ;; esac
    echo "$h"
}

# Our own name must resolve before ejabberd starts: ejabberdctl reaches the
# local node by its name. kube-epmd lists this pod once the API shows its IP.
own_entry_listed() {
    [ -r "$HOSTS_FILE" ] || return 1
    awk -v ip="${POD_IP:-}" -v host="$own_host" '
        ip == "" || $1 == ip { for (i = 2; i <= NF; i++) if ($i == host) found = 1 }
        END { exit !found }' "$HOSTS_FILE"
}

# The erl that ejabberdctl runs, found as ejabberdctl finds it: its own
# ERL= line, which in the ejabberd image's release is
#   ERL="${SCRIPT_DIR%/*}/erts-${ERTS_VSN#erts-}/bin/erl"
# (evaluated with that script's directory and ERTS_VSN= line), reached
# through the image's /usr/local/bin wrapper (`exec /opt/.../ejabberdctl`);
# Debian's says ERL="/usr/bin/erl". CLUSTER_ERL overrides; the PATH is last.
find_erl() {
    if [ -n "${CLUSTER_ERL:-}" ]; then
        echo "$CLUSTER_ERL"
        return
    fi
    script=$(command -v "$CTL" 2>/dev/null) || script=
    for f in $script $(sed -n 's|^[ \t]*exec[ \t]\{1,\}\(/[^ \t]*ejabberdctl\).*|\1|p' "$script" 2>/dev/null); do
        e=$(
            line=$(sed -n 's/^ERL=//p' "$f" 2>/dev/null | head -n 1)
            [ -n "$line" ] || exit 0
            # shellcheck disable=SC2034 # read by the eval below
            SCRIPT_DIR=${f%/*}
            # shellcheck disable=SC2034
            ERTS_VSN=$(sed -n 's/^ERTS_VSN="\{0,1\}\([^"]*\)"\{0,1\}[ \t]*$/\1/p' "$f" | head -n 1)
            eval "printf '%s' $line"
        )
        if [ -n "$e" ] && [ -x "$e" ] && [ ! -d "$e" ]; then
            echo "$e"
            return
        fi
    done
    for e in /opt/ejabberd*/erts-*/bin/erl; do
        [ -x "$e" ] && { echo "$e"; return; }
    done
    command -v erl
}

# exec a hidden Erlang node named $1 (NAME@our host) with the arguments
# after it, as ejabberdctl would start one.
hidden_erl() {
    name=$1
    shift
    ERL_OPTIONS=
    FIREWALL_WINDOW=
    # shellcheck disable=SC1091
    [ -r "$CTL_CONFIG_DIR/ejabberdctl.cfg" ] && . "$CTL_CONFIG_DIR/ejabberdctl.cfg"
    erl=$(find_erl) || { log "no erl found (set CLUSTER_ERL)"; exit 127; }
    # The image's ejabberdctl writes ERLANG_COOKIE to this file on first
    # use; we may run before it did.
    if [ -n "${ERLANG_COOKIE:-}" ] && [ ! -f "$HOME/.erlang.cookie" ]; then
        (umask 077 && echo "$ERLANG_COOKIE" > "$HOME/.erlang.cookie")
    fi
    case $own_host in *.*) flag=-name ;; *) flag=-sname ;; esac
    window=
    if [ -n "$FIREWALL_WINDOW" ]; then
        window="-kernel inet_dist_listen_min ${FIREWALL_WINDOW%-*} inet_dist_listen_max ${FIREWALL_WINDOW#*-}"
    fi
    export ERL_INETRC="$CTL_CONFIG_DIR/inetrc"
    cd / || exit 1
    # shellcheck disable=SC2086
    exec "$erl" $flag "$name@$own_host" -hidden -noinput -noshell \
        -start_epmd false $window $ERL_OPTIONS "$@"
}

# Run Erlang expression $1 on a short-lived hidden node (plain arguments
# after it in init:get_plain_arguments()); bounded to 60 s.
erl_eval() {
    expr=$1
    shift
    (
        id=$(cut -c1-8 /proc/sys/kernel/random/uuid 2>/dev/null || echo "$$")
        hidden_erl "cluster-$id-$node_prefix" \
            -eval "spawn(fun() -> receive after 60000 -> halt(124) end end), $expr, halt(0)" \
            -eval 'halt(2)' -extra "$@"
    )
}

# While this pod has no database and its ejabberd is not running yet, a
# hidden node named cluster-empty-NODE tells the other pods so (the query
# prints "NODE empty"): they need not wait for this node to come up, it
# holds no copy of anything.
# It runs nothing (-noshell keeps it up). It holds no state, so it is
# killed outright: a node still booting would defer a graceful stop.
beacon_pid=
beacon_start() {
    [ -z "$beacon_pid" ] || return 0
    (hidden_erl "cluster-empty-$node_prefix") &
    beacon_pid=$!
}
beacon_stop() {
    [ -n "$beacon_pid" ] || return 0
    kill -KILL "$beacon_pid" 2>/dev/null
    wait "$beacon_pid" 2>/dev/null
    beacon_pid=
}

# One line per node named in the arguments:
#   NODE down
#   NODE empty      (down, its pod has no database yet: see beacon_start)
#   NODE STATE DB_NODES RUNNING_DB_NODES   (comma-separated, "-" if none)
# STATE: starting (VM up, Mnesia not running yet), waiting (Mnesia runs,
# some local table not loaded: it waits for other nodes), loaded (every
# local table loaded, ejabberd not started yet), started (the ejabberd
# application runs: ejabberdctl commands work).
QUERY='
F = fun(L) when is_list(L), L =/= [] -> string:join([atom_to_list(N) || N <- L], ",");
       (_) -> "-" end,
C = fun(P, M, F1, A) -> rpc:call(P, M, F1, A, 10000) end,
Q = fun(P) ->
        case net_adm:ping(P) of
            pang ->
                Empty = list_to_atom("cluster-empty-" ++ atom_to_list(P)),
                case net_adm:ping(Empty) of
                    pong -> io:format("~s empty~n", [P]);
                    pang -> io:format("~s down~n", [P])
                end;
            pong ->
                Db = C(P, mnesia, system_info, [db_nodes]),
                Run = C(P, mnesia, system_info, [running_db_nodes]),
                Apps = C(P, application, which_applications, [5000]),
                St = case is_list(Apps) andalso lists:keymember(ejabberd, 1, Apps) of
                         true -> started;
                         false ->
                             case C(P, mnesia, system_info, [is_running]) of
                                 yes ->
                                     Local = C(P, mnesia, system_info, [local_tables]),
                                     case is_list(Local) andalso
                                          C(P, mnesia, wait_for_tables, [Local -- [schema], 0]) of
                                         ok -> loaded;
                                         _ -> waiting
                                     end;
                                 _ -> starting
                             end
                     end,
                io:format("~s ~s ~s ~s~n", [P, St, F(Db), F(Run)])
        end
    end,
[Q(list_to_atom(A)) || A <- init:get_plain_arguments()]'

query() { erl_eval "$QUERY" "$@"; }

# Load every table of the local node from its own disc copy now (once its
# Mnesia runs: at boot the VM is up a moment before Mnesia is).
FORCE_LOAD='
[Me] = [list_to_atom(A) || A <- init:get_plain_arguments()],
pong = net_adm:ping(Me),
Wait = fun W(0) -> exit(mnesia_not_running);
           W(N) -> case rpc:call(Me, mnesia, system_info, [is_running], 5000) of
                       yes -> ok;
                       _ -> timer:sleep(1000), W(N - 1)
                   end
       end,
ok = Wait(20),
Tables = rpc:call(Me, mnesia, system_info, [local_tables], 10000),
[io:format("~s ~p~n", [T, rpc:call(Me, mnesia, force_load_table, [T], 30000)]) || T <- Tables]'

# "NODE SEEN" per node named after the first: SEEN (comma-separated, maybe
# empty) are the nodes named, the first included, that NODE's Mnesia saw go
# down (mnesia_recover keeps these records across restarts until the two
# meet again; at boot a node loads its own copy when it saw every other
# holder go, else it waits).
SAW_DOWN='
Ns = [list_to_atom(A) || A <- init:get_plain_arguments()],
Saw = fun(P, N) -> rpc:call(P, mnesia_recover, has_mnesia_down, [N], 10000) =:= true end,
[io:format("~s ~s~n", [P, string:join([atom_to_list(N) || N <- Ns, N =/= P, Saw(P, N)], ",")])
 || P <- tl(Ns)]'

has_node() { # LIST(comma-separated) NODE
    case ",$1," in *",$2,"*) return 0 ;; esac
    return 1
}

count_nodes() {
    [ "$1" = "-" ] && { echo 0; return; }
    echo "$1" | tr ',' '\n' | grep -c .
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
    ctl_pid=
    [ "$stopping" = 0 ] || return 1
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
    [ -z "$prune_pid" ] || kill "$prune_pid" 2>/dev/null
    beacon_stop
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

start_vm() {
    log "starting $me"
    "$CTL" foreground &
    vm=$!
    wait_started || fail "ejabberd did not start"
}

mark_clustered() {
    : > "$MARKER" || fail "cannot write $MARKER"
}

# A member that still lists us (we came back with an empty volume) drops
# the stale entry while our node is not running; retried until no running
# member lists us, or the deadline. A listed pod whose node does not answer
# yet (or has no Mnesia yet) may be a member too (all pods recreated at
# once): our empty ejabberd must not run when it starts Mnesia (its Mnesia
# would refuse to merge our new schema: "Incompatible schema cookies"). It
# gets up to LOAD_GRACE seconds before we start without asking it;
# cluster_once catches an entry found later. A pod that is here without a
# database too says so (beacon_start): no need to wait for it.
drop_stale_self() {
    unsure_until=$(($(date +%s) + LOAD_GRACE))
    since_waiting=
    while [ "$stopping" = 0 ]; do
        others=$(peers)
        [ -n "$others" ] || return 0
        via=
        booting=0
        unsure=0
        info=$(query $others) || info=
        for line in $(echo "$info" | tr ' ' '|'); do
            IFS='|' read -r node state db _run <<EOF
$line
EOF
            [ "$state" = empty ] && continue
            if [ "$state" = down ] || { [ "$state" = starting ] && ! has_node "$db" "$me"; }; then
                unsure=1
                continue
            fi
            has_node "$db" "$me" || continue
            if [ "$state" = started ]; then
                [ -n "$via" ] || via=$node
            else
                booting=1 # it waits for its tables at boot
            fi
        done
        if [ -n "$via" ]; then
            # The schema is the cluster's: one member removing us is
            # enough; then ask everyone again.
            log "$via still lists $me (empty volume): removing the stale entry there"
            ctl --node "$via" leave_cluster "$me" || pause 3
        elif [ "$booting" = 1 ]; then
            if members_wait_for_each_other "$info"; then
                # Twice in a row, to act on members settled in waiting.
                since_waiting=${since_waiting:-$(date +%s)}
                if [ $(($(date +%s) - since_waiting)) -ge 3 ]; then
                    first=$(echo "$waiters" | LC_ALL=C sort | head -n 1)
                    log "the members wait for each other's tables, none for $me (each saw it go down) and none went down last: $first loads its own copy, as Mnesia would with $me back"
                    erl_eval "$FORCE_LOAD" "$first" >&2 || log "force-load in $first failed; retrying"
                    since_waiting=
                fi
            else
                since_waiting=
            fi
            pause 3
        elif [ "$unsure" = 1 ] && [ "$(date +%s)" -lt "$unsure_until" ]; then
            pause 1
        else
            return 0
        fi
        [ "$(date +%s)" -lt "$deadline" ] || return 1
    done
    return 1
}

# The nodes (sorted, once each) in the schema of every peer in query
# output $1 whose schema lists us.
schema_of_listers() {
    echo "$1" | awk -v me="$me" '
        {
            n = split($3, a, ",")
            for (i = 1; i <= n; i++) if (a[i] == me) mine = 1
            if (mine) for (i = 1; i <= n; i++) print a[i]
            mine = 0
        }' | LC_ALL=C sort -u
}

# All members came back while our volume was lost, and they wait for each
# other's tables (they went down together, none saw another go): Mnesia
# would have the lowest of all load its own copy once every holder runs
# ("orphan" tables), but our empty node never comes back as a holder. True
# (with the members in $waiters) when every other node of their schema
# answers and waits for tables, each saw us go down before it (our lost
# copy was not the newest), and none saw all the others go (that one would
# load its own copy by itself: it went down last). Then loading the lowest
# member's copy is what Mnesia itself would do. If a member did not see us
# go, we may have gone down last with data no one else has: that is
# force-load's case, for a human (see the top).
members_wait_for_each_other() {
    waiters=$(schema_of_listers "$1" | grep -vxF "$me")
    [ -n "$waiters" ] || return 1
    for n in $waiters; do
        echo "$1" | grep -q "^$n waiting " || return 1
    done
    # shellcheck disable=SC2086
    saw=$(erl_eval "$SAW_DOWN" "$me" $waiters) || return 1
    for n in $waiters; do
        seen=$(echo "$saw" | awk -v n="$n" '$1 == n { print $2 }')
        has_node "$seen" "$me" || return 1
        last=1
        for m in $waiters; do
            [ "$m" = "$n" ] || has_node "$seen" "$m" || last=0
        done
        [ "$last" = 0 ] || return 1
    done
    return 0
}

# A restart of the node Mnesia would let load its own copy when nobody has
# the tables: the lowest node name of the schema. When every node holding
# a table runs Mnesia and none has it loaded yet, Mnesia has that node load
# its own copy ("orphan" tables), even if another one went down later and
# holds newer data but has not finished loading it (seen with ejabberd 23.01
# when all pods start at once: the writes made after chat-0 went down were
# lost). So that node starts last: once another node has the tables loaded
# (the one that went down last loads them by itself, and this node then
# copies from it), or once every other node has waited LOAD_GRACE seconds
# without loading (none of them went down last: this node did, or all went
# down together), or after HOLD_MAX seconds whatever the others do.
hold_if_lowest() {
    since=
    hold_until=$(($(date +%s) + HOLD_MAX))
    while [ "$stopping" = 0 ]; do
        others=$(peers)
        [ -n "$others" ] || return 0
        info=$(query $others) || info=
        # The schema's nodes, as the peers in our cluster list them; a peer
        # that does not answer yet (or has no Mnesia yet) may be one too.
        known=$({
            echo "$info" | awk '$2 == "down" || $2 == "starting" { print $1 }'
            schema_of_listers "$(echo "$info" | awk '$2 != "down" && $2 != "starting"')"
        } | LC_ALL=C sort -u)
        # A pod here without a database holds no copy (a lost volume).
        for n in $(echo "$info" | awk '$2 == "empty" { print $1 }'); do
            known=$(echo "$known" | grep -vxF "$n")
        done
        lowest=$(printf '%s\n%s\n' "$me" "$known" | grep . | LC_ALL=C sort | head -n 1)
        [ "$lowest" = "$me" ] || return 0
        if echo "$info" | grep -Eq '^[^ ]+ (loaded|started) '; then
            log "a peer has the tables loaded: starting"
            return 0
        fi
        all_waiting=1
        [ -n "$known" ] || all_waiting=0
        for n in $known; do
            [ "$n" = "$me" ] && continue
            echo "$info" | grep -q "^$n waiting " || all_waiting=0
        done
        now=$(date +%s)
        if [ "$all_waiting" = 1 ]; then
            since=${since:-$now}
            if [ $((now - since)) -ge "$LOAD_GRACE" ]; then
                log "every other node waits for tables: this one went down last (or all at once): starting"
                return 0
            fi
        else
            since=
        fi
        if [ "$now" -ge "$hold_until" ]; then
            log "not every node of the schema is up after $HOLD_MAX s: starting anyway"
            return 0
        fi
        [ -n "${held:-}" ] || log "lowest node of the schema: waiting for a peer to load the tables first"
        held=1
        pause 2
    done
    return 0
}

# Join the established cluster, or seed it (ordinal 0 only), or wait.
cluster_once() {
    stale=0
    while [ "$stopping" = 0 ]; do
        kill -0 "$vm" 2>/dev/null || { log "ejabberd exited while joining"; return 1; }
        info=$(query "$me" $(peers)) || info=
        target=
        seed_ok=1
        zero=
        listed_by=
        for line in $(echo "$info" | tr ' ' '|'); do
            IFS='|' read -r node state db run <<EOF
$line
EOF
            if [ "$node" = "$me" ]; then
                # Someone joined us already (we are ordinal 0 and seeded).
                if [ "$state" != down ] && [ "$(count_nodes "$run")" -gt 1 ]; then
                    mark_clustered
                    log "$run joined $me: in the cluster"
                    return 0
                fi
                continue
            fi
            if [ "$state" = down ] || [ "$state" = empty ]; then
                seed_ok=0
                continue
            fi
            if has_node "$db" "$me"; then
                # It lists us but we are not in its cluster: it is joining
                # us right now (we will see it next round), or it still has
                # the entry of our lost volume (it came up after
                # drop_stale_self looked: all pods recreated at once).
                seed_ok=0
                listed_by=$node
                continue
            fi
            if [ "$(count_nodes "$db")" -gt 1 ]; then
                seed_ok=0
                [ -z "$target" ] && [ "$state" = started ] && target=$node
            elif [ "$(ordinal_of "$node")" = 0 ] && [ "$state" = started ]; then
                zero=$node
            fi
        done
        if [ -n "$listed_by" ]; then
            stale=$((stale + 1))
        else
            stale=0
        fi
        if [ "$stale" -ge "$STALE_ROUNDS" ]; then
            # A stale entry: a member's leave_cluster of a node that answers
            # asks that node to leave, which our empty node cannot; it
            # drops the entry only while we are down. So stop, drop, start
            # again empty.
            log "$listed_by still lists $me but we are not in its cluster: stopping $me to drop the stale entry"
            stop_vm
            beacon_start
            drop_stale_self || return 1
            beacon_stop
            [ "$stopping" = 0 ] || return 1
            start_vm
            stale=0
            continue
        fi
        # A new cluster (seeded by ordinal 0, joined by the others) also
        # needs every pod the StatefulSet wants to answer, when kube-epmd
        # says how many: a pod not created yet may hold the cluster.
        if [ "$seed_ok" = 1 ] && [ -r "$REPLICAS_FILE" ]; then
            want=$(cat "$REPLICAS_FILE" 2>/dev/null) || want=
            case $want in '' | *[!0-9]*) want=1 ;; esac
            i=1
            while [ "$i" -lt "$want" ]; do
                echo "$info" | grep -q "^$node_prefix@$statefulset-$i$host_suffix " || seed_ok=0
                echo "$info" | grep -Eq "^$node_prefix@$statefulset-$i$host_suffix (down|empty)\$" && seed_ok=0
                i=$((i + 1))
            done
        fi
        if [ -z "$target" ] && [ "$seed_ok" = 1 ]; then
            if [ "$ordinal" = 0 ]; then
                mark_clustered
                log "no other node belongs to a cluster: $me seeds a new cluster"
                return 0
            fi
            target=$zero
        fi
        if [ -n "$target" ]; then
            log "joining $target"
            if ctl join_cluster "$target"; then
                # join_cluster restarts ejabberd on this node.
                wait_started || return 1
                mark_clustered
                log "joined the cluster through $target"
                return 0
            fi
        fi
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        log "no cluster to join yet; retrying"
        pause 3
    done
    return 1
}

# Remove scaled-away nodes from the schema (see the top of this file).
prune_once() {
    [ -r "$REPLICAS_FILE" ] || return 0
    replicas=$(cat "$REPLICAS_FILE" 2>/dev/null) || return 0
    case $replicas in '' | *[!0-9]*) return 0 ;; esac
    listed=$(peers | tr '\n' ' ')
    key="$replicas $listed"
    [ "$key" = "$pruned_for" ] && return 0
    line=$(query "$me") || return 0
    IFS=' ' read -r _node state db run <<EOF
$line
EOF
    [ "$state" = started ] || return 0
    lowest=
    for n in $(echo "$run" | tr ',' ' '); do
        o=$(ordinal_of "$n")
        [ -n "$o" ] || continue
        if [ -z "$lowest" ] || [ "$o" -lt "$lowest" ]; then lowest=$o; fi
    done
    [ "$lowest" = "$ordinal" ] || { pruned_for=$key; return 0; }
    pending=0
    for n in $(echo "$db" | tr ',' ' '); do
        o=$(ordinal_of "$n")
        [ -n "$o" ] && [ "$o" -ge "$replicas" ] || continue
        if has_node "$run" "$n" || has_node "$(echo "$listed" | tr ' ' ',')" "$n"; then
            pending=1 # still running or its pod still exists: ask again later
            continue
        fi
        log "$n (ordinal $o >= replicas $replicas, pod gone) leaves the cluster's schema"
        "$CTL" leave_cluster "$n" >&2 || pending=1
    done
    [ "$pending" = 1 ] || pruned_for=$key
}

prune_loop() {
    trap 'exit 0' TERM INT
    pruned_for=
    while :; do
        prune_once
        sleep "$PRUNE_INTERVAL"
    done
}

run() {
    rm -f "$READY_FLAG"
    # SIGTERM from tini (pod deletion): stop ejabberd, then leave.
    trap 'stopping=1; [ -n "$ctl_pid" ] && kill "$ctl_pid" 2>/dev/null; [ -n "$prune_pid" ] && kill "$prune_pid" 2>/dev/null; beacon_stop; stop_vm; exit 0' TERM INT

    waited=0
    until own_entry_listed; do
        [ "$stopping" = 0 ] || exit 0
        [ "$waited" -lt 120 ] || fail "$own_host is not in $HOSTS_FILE after 120 s: is kube-epmd running?"
        pause 1
        waited=$((waited + 1))
    done

    deadline=$(($(date +%s) + JOIN_TIMEOUT))
    if [ -e "$MARKER" ]; then
        hold_if_lowest
        [ "$stopping" = 0 ] || exit 0
        start_vm
        log "clustered before ($MARKER): Mnesia reconnects by itself"
    else
        beacon_start
        drop_stale_self || fail "a member still lists $me and could not drop it: see above"
        beacon_stop
        start_vm
        cluster_once || fail "could not join a cluster: see the peers above, or run 'ejabberdctl join_cluster' by hand"
    fi
    : > "$READY_FLAG"
    prune_loop &
    prune_pid=$!
    wait_vm
    rc=$?
    kill "$prune_pid" 2>/dev/null
    exit "$rc"
}

case "${1:-run}" in
    run) run ;;
    peers) peers ;;
    query) shift; query "$@" ;;
    force-load) erl_eval "$FORCE_LOAD" "$me" ;;
    erl) find_erl ;;
    *) log "usage: $0 [run|peers|query NODE...|force-load|erl]"; exit 2 ;;
esac
