//! The decision table: one case per situation an entrypoint meets in the
//! lifecycle events the README names (and the ones earlier sessions could
//! only reason about), with the action the plan must give. The model in
//! `tests/cluster_model.rs` checks the same function over every order of
//! events; these cases pin each rule to a readable example.

use super::facts::{Facts, NodeFact, NodeState, Observation, PartitionHandling, Phase, Timing};
use super::nodes::Naming;
use super::plan::{Action, STALE_SECS, plan};

use NodeState::*;

fn n(k: u32) -> String {
    format!("ejabberd@chat-{k}.x")
}

fn ns(ks: &[u32]) -> Vec<String> {
    ks.iter().map(|&k| n(k)).collect()
}

/// Node `k` as seen: schema `db`, running `run`, up `up` s, saw `saw` go.
fn seen(k: u32, state: NodeState, db: &[u32], run: &[u32], up: u64, saw: &[u32]) -> NodeFact {
    NodeFact {
        node: n(k),
        state,
        db_nodes: ns(db),
        running_db_nodes: ns(run),
        uptime: up,
        saw_down: ns(saw),
        clustered: false,
        reachable: true,
    }
}

/// Node `k`'s pod cut off from this one (no VM, no EPMD answer).
fn cut(k: u32) -> NodeFact {
    NodeFact {
        reachable: false,
        ..down(k)
    }
}

fn down(k: u32) -> NodeFact {
    seen(k, Down, &[], &[], 0, &[])
}

fn empty(k: u32) -> NodeFact {
    seen(k, Empty, &[], &[], 0, &[])
}

/// Pod `me` in `phase`; `nodes` are what the probe saw (pods are those
/// nodes other than `me`), with `replicas`.
struct Case {
    me: u32,
    phase: Phase,
    marker: bool,
    since_start: u64,
    since_phase: u64,
    nodes: Vec<NodeFact>,
    replicas: Option<u32>,
    paused: bool,
    partition: PartitionHandling,
}

fn case(me: u32, phase: Phase, marker: bool, nodes: Vec<NodeFact>) -> Case {
    Case {
        me,
        phase,
        marker,
        since_start: 1,
        since_phase: 1,
        nodes,
        replicas: Some(3),
        paused: false,
        partition: PartitionHandling::PauseMinority,
    }
}

impl Case {
    fn after(mut self, secs: u64) -> Case {
        self.since_start = secs;
        self.since_phase = secs;
        self
    }

    fn replicas(mut self, r: Option<u32>) -> Case {
        self.replicas = r;
        self
    }

    fn paused(mut self) -> Case {
        self.paused = true;
        self
    }

    fn autoheal(mut self) -> Case {
        self.partition = PartitionHandling::Autoheal;
        self
    }

    fn facts(&self) -> Facts {
        let me = n(self.me);
        let naming = Naming::new(&me, &format!("chat-{}", self.me)).expect("test naming");
        Facts {
            pods: self
                .nodes
                .iter()
                .filter(|f| f.node != me)
                .map(|f| f.node.clone())
                .collect(),
            obs: Observation {
                me,
                phase: self.phase,
                marker: self.marker,
                paused: self.paused,
                since_start: self.since_start,
                since_phase: self.since_phase,
                timing: Timing {
                    partition: self.partition,
                    ..Timing::default()
                },
                nodes: self.nodes.clone(),
            },
            naming,
            replicas: self.replicas,
        }
    }

    fn gives(self, want: Action, why: &str) {
        let p = plan(&self.facts());
        assert_eq!(p.action, want, "{why}: got {p:?}");
    }
}

const ALL: &[u32] = &[0, 1, 2];

#[test]
fn first_start_empty_volumes() {
    use Phase::*;
    // chat-0 up, every pod answers, none in a cluster: chat-0 seeds.
    let alone = |k| seen(k, Started, &[k], &[k], 5, &[]);
    case(0, Joining, false, vec![alone(0), alone(1), alone(2)]).gives(
        Action::Seed,
        "ordinal 0 seeds when all answer, none clustered",
    );
    // The others join chat-0 once it has seeded (its marker), not before.
    case(2, Joining, false, vec![alone(2), alone(0), alone(1)])
        .gives(Action::Wait(3), "chat-0 has not seeded yet");
    let mut seeded = alone(0);
    seeded.clustered = true;
    case(2, Joining, false, vec![alone(2), seeded.clone(), alone(1)])
        .gives(Action::Wait(2), "chat-1 joins first: one join at a time");
    case(1, Joining, false, vec![alone(1), seeded.clone(), alone(2)]).gives(
        Action::Join { target: n(0) },
        "others join ordinal 0 once seeded",
    );
    let mut joined = seen(1, Started, &[0, 1], &[0, 1], 5, &[]);
    joined.clustered = true;
    case(2, Joining, false, vec![alone(2), seeded.clone(), joined])
        .gives(Action::Join { target: n(0) }, "chat-1 is in: chat-2's turn");
    case(2, Joining, false, vec![alone(2), seeded, down(1)]).gives(
        Action::Join { target: n(0) },
        "a lower pod that is down does not hold a join",
    );
    // A pod that is not there yet (replicas 3, only 2 pods): nobody seeds.
    case(0, Joining, false, vec![alone(0), alone(1)])
        .gives(Action::Wait(3), "a pod the StatefulSet wants is missing");
    // A pod down (not answering yet): no seed.
    case(0, Joining, false, vec![alone(0), alone(1), down(2)])
        .gives(Action::Wait(3), "a pod does not answer");
    // An empty pod (beacon up, ejabberd not yet): no seed either.
    case(0, Joining, false, vec![alone(0), alone(1), empty(2)])
        .gives(Action::Wait(3), "a pod still boots");
    // chat-0 not started yet: the others wait.
    case(1, Joining, false, vec![alone(1), down(0), alone(2)])
        .gives(Action::Wait(3), "no cluster and no chat-0 to join");
    // Without a replica count the pods present decide.
    case(0, Joining, false, vec![alone(0), alone(1)])
        .replicas(None)
        .gives(Action::Seed, "no replicas file: the listed pods decide");
    // Boot without a database and no member anywhere: start at once.
    case(1, Boot, false, vec![down(1), empty(0), empty(2)])
        .gives(Action::Start, "empty pods do not wait for each other");
}

#[test]
fn joins_the_established_cluster() {
    use Phase::*;
    let member = |k| seen(k, Started, &[0, 2], &[0, 2], 50, &[]);
    // chat-1 new (scale up, lost volume after the entry was dropped).
    case(
        1,
        Joining,
        false,
        vec![seen(1, Started, &[1], &[1], 3, &[]), member(0), member(2)],
    )
    .gives(
        Action::Join { target: n(0) },
        "join a node that knows more than itself",
    );
    // chat-0 empty while chat-1 and chat-2 form the cluster: chat-0 joins, never seeds.
    case(
        0,
        Joining,
        false,
        vec![
            seen(0, Started, &[0], &[0], 3, &[]),
            seen(1, Started, &[1, 2], &[1, 2], 9, &[]),
            seen(2, Started, &[1, 2], &[1, 2], 9, &[]),
        ],
    )
    .gives(
        Action::Join { target: n(1) },
        "ordinal 0 joins a live cluster",
    );
    // Found by tests/cluster_model.rs: chat-1 joined chat-0 before chat-0
    // wrote its marker; chat-0's container was killed, came back without a
    // marker and had chat-1 drop its entry. chat-1, alone in its schema,
    // is the cluster (its volume has the marker): chat-0 joins it instead
    // of seeding a second cluster.
    let mut lone = seen(1, Started, &[1], &[1], 9, &[0]);
    lone.clustered = true;
    case(
        0,
        Joining,
        false,
        vec![
            seen(0, Started, &[0], &[0], 3, &[]),
            lone.clone(),
            seen(2, Started, &[2], &[2], 9, &[]),
        ],
    )
    .gives(
        Action::Join { target: n(1) },
        "a lone node with a marker is a cluster",
    );
    // The same without its down record (the node it saw go was pruned
    // since): the marker alone decides.
    lone.saw_down.clear();
    case(
        0,
        Joining,
        false,
        vec![
            seen(0, Started, &[0], &[0], 3, &[]),
            lone,
            seen(2, Started, &[2], &[2], 9, &[]),
        ],
    )
    .gives(
        Action::Join { target: n(1) },
        "a lone node with a marker is a cluster, records or not",
    );
    // The cluster's members are still loading: wait, do not seed.
    case(
        0,
        Joining,
        false,
        vec![
            seen(0, Started, &[0], &[0], 3, &[]),
            seen(1, Waiting, &[1, 2], &[1], 9, &[]),
            down(2),
        ],
    )
    .gives(Action::Wait(3), "members not started: wait");
    // Someone joined us (we are chat-0 and were joined before we looked).
    case(
        0,
        Joining,
        false,
        vec![
            seen(0, Started, &[0, 1], &[0, 1], 3, &[]),
            seen(1, Started, &[0, 1], &[0, 1], 3, &[]),
        ],
    )
    .gives(Action::Joined, "others joined this node");
    // Our join_cluster reported a failure but happened (ejabberd 23.01
    // restarts its applications inside the join; the ctl call can end in an
    // error, seen in CI): the next plan finds us in the cluster, never
    // joins or seeds again.
    case(
        2,
        Joining,
        false,
        vec![
            seen(2, Started, &[0, 1, 2], &[0, 1, 2], 1, &[]),
            seen(0, Started, &[0, 1, 2], &[0, 1, 2], 40, &[]),
            seen(1, Started, &[0, 1, 2], &[0, 1, 2], 40, &[]),
        ],
    )
    .gives(Action::Joined, "a join reported failed that happened");
    // Undecided past the join timeout: exit, never guess.
    case(
        1,
        Joining,
        false,
        vec![seen(1, Started, &[1], &[1], 3, &[]), down(0), down(2)],
    )
    .after(300)
    .gives(Action::Fail, "the join timeout");
}

#[test]
fn pod_deleted_or_all_down_with_volumes() {
    use Phase::*;
    // One pod deleted: the others run; it starts at once.
    let run = |k| seen(k, Started, ALL, &[0, 2], 80, &[1]);
    case(1, Boot, true, vec![down(1), run(0), run(2)]).gives(Action::Start, "not the lowest node");
    // chat-0 deleted alone: others have the tables, it starts.
    let run12 = |k| seen(k, Started, ALL, &[1, 2], 80, &[0]);
    case(0, Boot, true, vec![down(0), run12(1), run12(2)])
        .gives(Action::Start, "a peer has the tables");
    // All down; chat-0 must not start before another node loaded (orphan rule).
    case(
        0,
        Boot,
        true,
        vec![
            down(0),
            seen(1, Waiting, ALL, &[1], 3, &[0]),
            seen(2, Starting, ALL, &[], 2, &[]),
        ],
    )
    .gives(Action::Wait(2), "lowest node holds back");
    case(0, Boot, true, vec![down(0), down(1), down(2)])
        .gives(Action::Wait(2), "lowest node holds back for pods not up");
    // chat-2 went down last: it loads, then chat-0 starts.
    case(
        0,
        Boot,
        true,
        vec![
            down(0),
            seen(1, Waiting, ALL, &[1, 2], 9, &[0]),
            seen(2, Loaded, ALL, &[1, 2], 9, &[0, 1]),
        ],
    )
    .gives(Action::Start, "a peer loaded the tables");
    // Every other node waits for tables and none saw chat-0 go down: each
    // went down before it, chat-0 holds the newest copy (or all went down
    // at once): start, without waiting out LOAD_GRACE.
    let w = |k, up| seen(k, Waiting, ALL, &[k], up, &[]);
    case(0, Boot, true, vec![down(0), w(1, 6), w(2, 5)])
        .gives(Action::Start, "none saw chat-0 go: it went down last");
    case(0, Boot, true, vec![down(0), w(1, 16), w(2, 4)])
        .gives(Action::Wait(2), "one is up less than SETTLE_SECS");
    // chat-1 went down first, chat-2 saw it go, chat-0 saw both: neither
    // waiter saw chat-0 go.
    let saw1 = seen(2, Waiting, ALL, &[2], 7, &[1]);
    case(0, Boot, true, vec![down(0), w(1, 7), saw1]).gives(Action::Start, "chat-0 went down last");
    // Found by tests/cluster_model.rs: chat-0 killed (both saw it go), a
    // write, then every container killed at once. The others wait for each
    // other; chat-0's copy is the older one: starting it would have the
    // orphan rule load it. The lowest waiter loads its own instead.
    let saw0 = |k| seen(k, Waiting, ALL, &[k], 16, &[0]);
    case(0, Boot, true, vec![down(0), saw0(1), saw0(2)]).gives(
        Action::ForceLoad { node: n(1) },
        "a waiting peer saw chat-0 go down: chat-0 must not start",
    );
    // One of them did not see chat-0 go (it joined later): hold.
    case(0, Boot, true, vec![down(0), saw0(1), w(2, 16)])
        .gives(Action::Wait(2), "older copy here, no safe force-load: hold");
    // HOLD_MAX: start anyway.
    case(0, Boot, true, vec![down(0), down(1), w(2, 200)])
        .after(120)
        .gives(Action::Start, "CLUSTER_HOLD_MAX");
    // A node with a database never fails on the join timeout: it holds, then starts.
    case(0, Boot, true, vec![down(0), down(1), down(2)])
        .after(100)
        .gives(Action::Wait(2), "still within the hold");
    // Higher nodes with a database never hold.
    case(2, Boot, true, vec![down(2), down(0), down(1)])
        .gives(Action::Start, "chat-2 is not the lowest");
    // A lost volume at chat-0: the lowest holder is chat-1 now, which holds.
    case(
        1,
        Boot,
        true,
        vec![
            down(1),
            empty(0),
            seen(2, Waiting, &[0, 1, 2], &[2], 3, &[]),
        ],
    )
    .gives(Action::Wait(2), "chat-0 empty: chat-1 is the lowest holder");
    // Found by tests/cluster_model.rs: chat-0 is the only copy left (the
    // others' volumes lost): start at once, before the empty pods start
    // new schemas that its Mnesia would refuse.
    case(0, Boot, true, vec![down(0), empty(1), empty(2)])
        .gives(Action::Start, "nobody else holds a copy");
    // A scaled-away node (pod gone) does not make us lowest-but-one.
    case(1, Boot, true, vec![down(1), down(2)]).gives(
        Action::Wait(2),
        "chat-0's pod is gone; chat-1 is the lowest known",
    );
}

#[test]
fn lost_volume() {
    use Phase::*;
    // chat-1 back empty, members running and listing it: drop the entry.
    let m = |k| seen(k, Started, ALL, &[0, 2], 80, &[1]);
    case(1, Boot, false, vec![down(1), m(0), m(2)]).gives(
        Action::DropStale { via: n(0) },
        "a running member drops the stale entry",
    );
    // Entry dropped: start empty.
    let m2 = |k| seen(k, Started, &[0, 2], &[0, 2], 80, &[]);
    case(1, Boot, false, vec![down(1), m2(0), m2(2)])
        .gives(Action::Start, "nobody lists us any more");
    // A pod that does not answer yet may list us: wait up to LOAD_GRACE.
    case(1, Boot, false, vec![down(1), down(0), m2(2)])
        .gives(Action::Wait(1), "a pod may still list us");
    case(1, Boot, false, vec![down(1), down(0), m2(2)])
        .after(15)
        .gives(Action::Start, "grace over");
    // Found listed after start (a member came up late): restart empty.
    let late = |k| seen(k, Started, ALL, &[0, 2], 80, &[]);
    case(
        1,
        Joining,
        false,
        vec![seen(1, Started, &[1], &[1], 20, &[]), late(0), late(2)],
    )
    .after(STALE_SECS)
    .gives(Action::RestartEmpty, "stale entry found after start");
    case(
        1,
        Joining,
        false,
        vec![seen(1, Started, &[1], &[1], 5, &[]), late(0), late(2)],
    )
    .after(5)
    .gives(Action::Wait(3), "maybe a join in progress: wait");
    // A member that lists us AND runs with us is joining us: not stale.
    let joining = seen(2, Started, &[0, 2], &[0, 2], 80, &[]);
    case(
        0,
        Joining,
        false,
        vec![seen(0, Started, &[0], &[0], 30, &[]), joining.clone()],
    )
    .replicas(Some(2))
    .after(30)
    .gives(Action::Wait(3), "a join in progress is not a stale entry");
}

#[test]
fn all_down_with_a_volume_lost() {
    use Phase::*;
    // Machine failure: chat-0 went down first (both saw it), chat-1 and
    // chat-2 at once (neither saw the other); chat-0's volume lost. They
    // wait for each other: the lowest member loads its own copy.
    let w = |k, up| seen(k, Waiting, ALL, &[k], up, &[0]);
    case(0, Boot, false, vec![down(0), w(1, 9), w(2, 9)]).gives(
        Action::ForceLoad { node: n(1) },
        "Mnesia's orphan rule, for the lost node",
    );
    // Not settled yet: wait.
    case(0, Boot, false, vec![down(0), w(1, 2), w(2, 9)])
        .gives(Action::Wait(3), "members just started");
    // A member did not see chat-0 go: chat-0 may have been last: no force.
    let blind = seen(2, Waiting, ALL, &[2], 9, &[]);
    case(0, Boot, false, vec![down(0), w(1, 9), blind]).gives(
        Action::Wait(3),
        "the lost node may hold the newest copy: human step",
    );
    // A member saw all others go: it loads by itself, no force needed.
    let last = seen(2, Waiting, ALL, &[2], 9, &[0, 1]);
    case(0, Boot, false, vec![down(0), w(1, 9), last])
        .gives(Action::Wait(3), "the last one down loads by itself");
    // A member of the schema not there: no force (its copy may be newest).
    case(0, Boot, false, vec![down(0), w(1, 9), down(2)])
        .gives(Action::Wait(3), "a member is missing");
    // chat-2's volume lost after a machine failure under chat-0 and chat-1
    // ("reasoned only" before): neither member saw chat-2 go down, so chat-2
    // may have gone down last: nothing forced; after the join timeout the
    // empty pod restarts, the members keep waiting: the human step.
    let w01 = |k| seen(k, Waiting, ALL, &[k], 30, &[]);
    case(2, Boot, false, vec![down(2), w01(0), w01(1)]).gives(
        Action::Wait(3),
        "lost chat-2 not seen going down: human step",
    );
    // chat-2's volume lost, chat-2 stopped before chat-1 (chat-1 saw it) and
    // chat-0 first: chat-1 went down last and loads by itself; chat-0 holds.
    case(
        2,
        Boot,
        false,
        vec![
            down(2),
            seen(0, Starting, ALL, &[], 2, &[]),
            seen(1, Loaded, ALL, &[1], 4, &[0, 2]),
        ],
    )
    .gives(Action::Wait(3), "chat-1 loads; wait until it has started");
    case(
        2,
        Boot,
        false,
        vec![down(2), down(0), seen(1, Started, ALL, &[1], 9, &[0, 2])],
    )
    .gives(
        Action::DropStale { via: n(1) },
        "then drop the entry through it",
    );
}

#[test]
fn scale_down_prunes() {
    use Phase::*;
    let me = |db: &[u32], run: &[u32]| seen(0, Started, db, run, 90, &[]);
    // Replicas 2, chat-2 gone from the API and not running: removed.
    case(
        0,
        Running,
        true,
        vec![me(ALL, &[0, 1]), seen(1, Started, ALL, &[0, 1], 90, &[])],
    )
    .replicas(Some(2))
    .gives(Action::Remove { node: n(2) }, "scaled away");
    // Its pod still exists (terminating): later.
    case(
        0,
        Running,
        true,
        vec![
            me(ALL, &[0, 1]),
            seen(1, Started, ALL, &[0, 1], 90, &[]),
            down(2),
        ],
    )
    .replicas(Some(2))
    .gives(Action::Wait(10), "pod still there");
    // A pod only restarting (ordinal < replicas) is never touched.
    case(0, Running, true, vec![me(ALL, &[0, 2])]).gives(Action::Idle, "ordinal below replicas");
    // No replica count: nobody removed.
    case(0, Running, true, vec![me(ALL, &[0, 1])])
        .replicas(None)
        .gives(Action::Idle, "no replicas file");
    // Not the lowest running node: another prunes.
    case(
        1,
        Running,
        true,
        vec![
            seen(1, Started, ALL, &[0, 1], 90, &[]),
            seen(0, Started, ALL, &[0, 1], 90, &[]),
        ],
    )
    .replicas(Some(2))
    .gives(Action::Idle, "chat-0 prunes");
    // chat-0 gone for a while: chat-1 is the lowest running and prunes.
    case(
        1,
        Running,
        true,
        vec![seen(1, Started, &[0, 1, 2, 3], &[1, 2], 90, &[])],
    )
    .gives(
        Action::Remove { node: n(3) },
        "lowest running prunes; chat-0 (< replicas) kept",
    );
}

#[test]
fn scale_to_zero_and_back() {
    use Phase::*;
    // Scaled to 0: chat-2's pod is already gone while chat-0 still runs
    // (all stop in parallel). Nobody leaves the schema: all come back with
    // their volumes.
    case(
        0,
        Running,
        true,
        vec![seen(0, Started, ALL, &[0, 1], 90, &[])],
    )
    .replicas(Some(0))
    .gives(Action::Idle, "replicas 0 is a pause, not a shrink");
    // Back at 3 with every volume: the usual "all pods deleted" boot.
    case(2, Boot, true, vec![down(2), down(0), down(1)]).gives(
        Action::Start,
        "a retained volume after scale to 0 boots as after all pods deleted",
    );
}

#[test]
fn retained_volume_of_a_pruned_node() {
    use Phase::*;
    // Scaled 3 -> 2 -> 3 with whenScaled: Retain: chat-0 pruned chat-2
    // while replicas was 2; chat-2 is back with its old marker and schema.
    // chat-0 runs the cluster without it: set the old database aside.
    let member = |k, db: &[u32]| NodeFact {
        clustered: true,
        ..seen(k, Started, db, &[0, 1], 300, &[])
    };
    case(
        2,
        Boot,
        true,
        vec![down(2), member(0, &[0, 1]), member(1, &[0, 1])],
    )
    .gives(Action::SetAside, "the cluster dropped chat-2");
    // Scaled 3 -> 1 -> 3: chat-0 alone in its schema, marker: it is the
    // cluster all the same.
    case(1, Boot, true, vec![down(1), member(0, &[0])]).gives(
        Action::SetAside,
        "a one-node cluster that pruned chat-1 is the cluster",
    );
    // Quick 3 -> 2 -> 3 before the prune: chat-0 still lists chat-2, so
    // chat-2 starts as after a restart and copies from the members.
    case(2, Boot, true, vec![down(2), member(0, ALL), member(1, ALL)])
        .gives(Action::Start, "still in the schema: an ordinary restart");
    // A peer started empty and not yet in a cluster (no marker, a schema
    // of itself) is no cluster: it does not decide for us.
    case(
        2,
        Boot,
        true,
        vec![down(2), seen(0, Started, &[0], &[0], 5, &[]), down(1)],
    )
    .gives(Action::Start, "an empty joiner is not the cluster");
    // Only a started member decides: while the members only wait for
    // their tables, nobody can tell which schema is current; chat-2 (no
    // member lists it) holds back until one has them.
    case(
        2,
        Boot,
        true,
        vec![
            down(2),
            seen(0, Waiting, &[0, 1], &[0, 1], 30, &[]),
            seen(1, Waiting, &[0, 1], &[0, 1], 30, &[]),
        ],
    )
    .gives(Action::Wait(2), "nobody started: no set-aside yet");
}

#[test]
fn network_partition() {
    use Phase::*;
    let member = |k, run: &[u32]| NodeFact {
        clustered: true,
        ..seen(k, Started, ALL, run, 300, &[])
    };
    // chat-2 cut off from chat-0 and chat-1 (their pods still exist): it
    // reaches 1 of 3, it pauses; seen before Mnesia's nodedown.
    case(2, Running, true, vec![member(2, ALL), cut(0), cut(1)])
        .gives(Action::Pause, "minority pauses");
    // ... and after Mnesia's nodedown the same.
    case(2, Running, true, vec![member(2, &[2]), cut(0), cut(1)])
        .gives(Action::Pause, "minority pauses after nodedown");
    // The majority side keeps serving (and prunes nobody: chat-2's pod
    // exists).
    case(
        0,
        Running,
        true,
        vec![member(0, &[0, 1]), member(1, &[0, 1]), cut(2)],
    )
    .gives(Action::Idle, "majority serves");
    // A peer whose VM restarts while its pod answers is no partition.
    case(2, Running, true, vec![member(2, &[2]), down(0), down(1)])
        .gives(Action::Idle, "peers restarting, their pods reachable");
    // Peers whose pods are gone (deleted, not cut off) are down, not on
    // another side: the last node keeps serving.
    case(2, Running, true, vec![member(2, &[2])]).gives(Action::Idle, "pods gone: no other side");
    // Autoheal: the minority keeps serving during the partition.
    case(2, Running, true, vec![member(2, &[2]), cut(0), cut(1)])
        .autoheal()
        .gives(Action::Idle, "autoheal serves on every side");
    // Healed: all reach each other, chat-2 runs apart from chat-0/chat-1:
    // the smaller side restarts and copies from the other.
    let healed = vec![member(2, &[2]), member(0, &[0, 1]), member(1, &[0, 1])];
    case(2, Running, true, healed.clone())
        .gives(Action::Rejoin { from: n(0) }, "the smaller side gives way");
    case(2, Running, true, healed.clone())
        .autoheal()
        .gives(Action::Rejoin { from: n(0) }, "autoheal: the same");
    case(0, Running, true, healed).gives(Action::Wait(10), "the larger side stays");
    // Two nodes, one each side: chat-0's side wins the tie.
    let two = |me: u32| {
        let a = NodeFact {
            clustered: true,
            ..seen(0, Started, &[0, 1], &[0], 300, &[])
        };
        let b = NodeFact {
            clustered: true,
            ..seen(1, Started, &[0, 1], &[1], 300, &[])
        };
        let nodes = if me == 0 { vec![a, b] } else { vec![b, a] };
        Case {
            replicas: Some(2),
            ..case(me, Running, true, nodes)
        }
    };
    two(1)
        .autoheal()
        .gives(Action::Rejoin { from: n(0) }, "tie: chat-1 gives way");
    two(0)
        .autoheal()
        .gives(Action::Wait(10), "tie: chat-0 stays");
    // Bridged: chat-2 restarted during a short cut and runs with both,
    // chat-0 and chat-1 are apart. The tie goes to chat-0: chat-1 gives
    // way, and so does the bridge (found by tests/cluster_model.rs).
    let bridged = |me: u32| {
        let all = [member(0, &[0, 2]), member(1, &[1, 2]), member(2, ALL)];
        let mut nodes = vec![all[me as usize].clone()];
        nodes.extend(all.iter().filter(|n| n.node != self::n(me)).cloned());
        case(me, Running, true, nodes)
    };
    bridged(1).gives(Action::Wait(5), "bridged: chat-1 waits for the bridge");
    bridged(0).gives(Action::Wait(5), "bridged: chat-0 waits for the bridge");
    bridged(2).gives(
        Action::Rejoin { from: n(0) },
        "bridged: the bridge holds both sides' writes, it gives way too",
    );
    // A node just restarted has not met its peers yet: no split.
    case(
        2,
        Running,
        true,
        vec![member(2, ALL), member(0, &[0, 1]), member(1, &[0, 1])],
    )
    .gives(
        Action::Idle,
        "chat-2 runs with both: no split from its side",
    );
    // Boot during the partition (the container restarted): hold, never
    // load its own copy alone.
    case(2, Boot, true, vec![down(2), cut(0), cut(1)])
        .gives(Action::Wait(2), "minority holds at boot");
    // Paused, the partition healed: start once a member has the tables.
    case(
        2,
        Boot,
        true,
        vec![down(2), member(0, &[0, 1]), member(1, &[0, 1])],
    )
    .paused()
    .gives(Action::Start, "paused: copies from the majority");
    // Paused and the majority only restarting: wait for the tables.
    case(
        2,
        Boot,
        true,
        vec![down(2), seen(0, Waiting, ALL, &[0, 1], 30, &[2]), cut(1)],
    )
    .paused()
    .gives(Action::Wait(2), "paused: nobody to copy from yet");
}

#[test]
fn plan_text_is_two_lines() {
    let p = plan(
        &case(
            0,
            Phase::Joining,
            false,
            vec![seen(0, Started, &[0], &[0], 1, &[])],
        )
        .replicas(Some(1))
        .facts(),
    );
    assert_eq!(p.action, Action::Seed);
    let text = p.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0], "seed");
    assert!(lines[1].contains("seeds a new cluster"), "{text}");
    assert_eq!(
        Action::Join { target: n(1) }.to_string(),
        "join ejabberd@chat-1.x"
    );
}
