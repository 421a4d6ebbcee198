//! The entrypoint: the probe's and the sidecar's view of the model built
//! into `Facts` exactly as they would report it, the real `plan`, and the
//! action carried out on the model.

use kube_epmd::cluster::facts::{Facts, NodeFact, NodeState, Observation, Phase, Timing};
use kube_epmd::cluster::plan::{Action, plan};

use super::mnesia::{Cause, Notes, go_down, own_load};
use super::world::{Mask, StartWhy, Vm, World, bit, members, name, naming, ordinal};

fn names(m: Mask) -> Vec<String> {
    members(m).map(|k| name(k).to_string()).collect()
}

/// What the probe run in pod `k` reports of node `j`, asked together
/// with `asked`. A pod across the cut answers neither with its VM nor its
/// EPMD: down and unreachable.
fn node_fact(w: &World, k: usize, j: usize, asked: Mask) -> NodeFact {
    let nj = &w.nodes[j];
    if !w.reach(k, j) {
        return NodeFact {
            node: name(j).to_string(),
            state: NodeState::Down,
            db_nodes: Vec::new(),
            running_db_nodes: Vec::new(),
            uptime: 0,
            saw_down: Vec::new(),
            clustered: false,
            reachable: false,
        };
    }
    let up = w.now - nj.t_vm;
    let (state, db, run, uptime, saw) = match nj.vm {
        // A VM is off only while its entrypoint is in Boot; without a
        // marker the entrypoint's `cluster-empty-` beacon answers.
        Vm::Off if nj.marker => (NodeState::Down, 0, 0, 0, 0),
        Vm::Off => (NodeState::Empty, 0, 0, 0, 0),
        // Mnesia not running: db_nodes is the schema on disc (or just the
        // node itself without one), nothing runs, no down records.
        Vm::Starting => (
            NodeState::Starting,
            nj.vol.map_or(bit(j), |v| v.db),
            0,
            up,
            0,
        ),
        vm => {
            let v = w.vol(j);
            let state = match vm {
                Vm::Waiting => NodeState::Waiting,
                Vm::Loaded => NodeState::Loaded,
                _ => NodeState::Started,
            };
            (state, v.db, w.running_view(j), up, v.down & asked & !bit(j))
        }
    };
    NodeFact {
        node: name(j).to_string(),
        state,
        db_nodes: names(db),
        running_db_nodes: names(run),
        uptime,
        saw_down: names(saw),
        // The probe reads the marker through the node's VM: not when down.
        clustered: nj.marker && !matches!(state, NodeState::Down | NodeState::Empty),
        // Its VM or its EPMD answers: on this side of any cut.
        reachable: true,
    }
}

/// The plan's input for node `k`'s entrypoint: itself first, then every
/// other pod that exists (the sidecar's peer table), lowest ordinal first.
pub fn facts(w: &World, k: usize) -> Facts {
    let nk = &w.nodes[k];
    let others: Vec<usize> = (0..w.n()).filter(|&j| j != k && w.nodes[j].pod).collect();
    let asked = others.iter().fold(bit(k), |m, &j| m | bit(j));
    let nodes = std::iter::once(k)
        .chain(others.iter().copied())
        .map(|j| node_fact(w, k, j, asked))
        .collect();
    Facts {
        obs: Observation {
            me: name(k).to_string(),
            phase: nk.phase,
            marker: nk.marker,
            paused: nk.paused,
            since_start: w.now - nk.t_start,
            since_phase: w.now - nk.t_phase,
            timing: Timing {
                partition: w.policy,
                ..Timing::default()
            },
            nodes,
        },
        naming: naming().clone(),
        pods: others.iter().map(|&j| name(j).to_string()).collect(),
        replicas: Some(w.replicas as u32),
    }
}

/// One round of node `k`'s entrypoint: observe, plan, act. Observation and
/// action are one atomic step (the model has no probe/act race).
pub fn step(w: &mut World, k: usize, notes: &mut Notes) -> Action {
    let f = facts(w, k);
    let p = plan(&f);
    let now = w.now;
    notes.say(now, || {
        format!(
            "chat-{k} [{:?}{}] plan: {} -- {}",
            w.nodes[k].phase,
            if w.nodes[k].marker { ", marker" } else { "" },
            p.action,
            p.reason
        )
    });
    let mut pause = 1;
    match &p.action {
        Action::Wait(s) => pause = *s,
        Action::Idle => pause = 10,
        Action::Start => {
            let saw_me = f.obs.nodes.iter().any(|n| {
                n.node != f.obs.me && n.state == NodeState::Waiting && n.saw_go_down(&f.obs.me)
            });
            let node = &mut w.nodes[k];
            assert_eq!(node.vm, Vm::Off, "plan said start on a running VM");
            node.start_why = if p.reason.contains("every other node waits") {
                StartWhy::HoldWaiters { saw_me }
            } else if p.reason.contains("CLUSTER_HOLD_MAX") {
                StartWhy::HoldMax
            } else {
                StartWhy::Other
            };
            // Without a marker the volume holds nothing of the cluster's
            // (the others take this pod for `empty`): the entrypoint starts
            // it empty, so Mnesia creates a fresh schema. Keeping a schema
            // that a member joined before the marker was written lets it
            // come back listing nodes that dropped it (found by this model:
            // the node then waits for ever).
            if !node.marker {
                node.vol = None;
            }
            node.vm = Vm::Starting;
            node.t_vm = now;
            node.next_mn = now + 2;
            node.phase = if node.marker {
                Phase::Running
            } else {
                Phase::Joining
            };
            node.t_phase = now;
        }
        Action::DropStale { via } => {
            // `ejabberdctl --node VIA leave_cluster SELF`: works while VIA
            // runs and SELF is down; the schema change reaches VIA's
            // running cluster (nodes down now get it when they copy).
            let via = ordinal(via);
            if w.nodes[via].vm == Vm::Started
                && w.nodes[k].vm == Vm::Off
                && w.reach(k, via)
                && !w.hangs(via)
            {
                drop_from_schema(w, via, k);
            } else {
                notes.say(now, || "  (drop-stale failed)".into());
            }
        }
        Action::ForceLoad { node } => {
            let j = ordinal(node);
            if w.nodes[j].pod && w.nodes[j].vm == Vm::Waiting && w.reach(k, j) {
                own_load(w, j, Cause::ForceLoad, notes);
            }
        }
        Action::SetAside => {
            // The entrypoint moves Mnesia's files and the marker aside
            // (kept on the volume, out of Mnesia's reach) and boots again
            // without a database: the beacon answers `empty`.
            assert_eq!(
                w.nodes[k].vm,
                Vm::Off,
                "plan said set-aside on a running VM"
            );
            notes.set_asides += 1;
            if let Some(v) = w.nodes[k].vol {
                let newest_elsewhere = (0..w.n())
                    .filter(|&j| j != k)
                    .filter_map(|j| w.nodes[j].vol)
                    .map(|x| w.version(x.data))
                    .max()
                    .unwrap_or(0);
                let mine = w.version(v.data);
                if mine > newest_elsewhere {
                    notes.set_aside_newest += 1;
                    notes.say(now, || {
                        format!(
                            "  SET ASIDE the newest copy (version {mine}, others {newest_elsewhere})"
                        )
                    });
                }
            }
            let node = &mut w.nodes[k];
            node.vol = None;
            node.marker = false;
            node.paused = false;
            node.phase = Phase::Boot;
            node.t_phase = now;
        }
        Action::Seed | Action::Joined => {
            let node = &mut w.nodes[k];
            node.marker = true;
            node.phase = Phase::Running;
            node.t_phase = now;
        }
        Action::Join { target } => {
            let t = ordinal(target);
            if w.nodes[t].pod
                && w.nodes[t].vm == Vm::Started
                && w.nodes[k].vm == Vm::Started
                && w.reach(k, t)
                && !w.hangs(t)
            {
                join(w, k, t);
            } else {
                notes.say(now, || "  (join failed: target or self not started)".into());
            }
        }
        Action::RestartEmpty => {
            go_down(w, bit(k));
            w.nodes[k].phase = Phase::Boot;
            w.nodes[k].t_phase = now;
        }
        Action::Remove { node } => {
            let x = ordinal(node);
            let x_runs = w.nodes[x].pod && w.nodes[x].vm.mnesia_runs();
            if w.nodes[k].vm == Vm::Started && !x_runs && !w.hangs(k) {
                drop_from_schema(w, k, x);
            }
        }
        Action::Pause | Action::Rejoin { .. } => {
            // The running loop: the paused flag and RESTART, `ejabberdctl
            // stop` (killed after 10 s: the model stops it at once), and
            // the main loop boots again (phase Boot, t_phase reset,
            // t_start kept). Rejoin logs the tables that differ first
            // (`probe diverged`), which changes nothing here; it sets the
            // flag too, so that it copies from the side that stays, not
            // from a node of its own side still running.
            assert!(
                w.nodes[k].vm.mnesia_runs(),
                "plan said {} on a stopped VM",
                p.action
            );
            w.nodes[k].paused = true;
            w.nodes[k].gave_way = true;
            go_down(w, bit(k));
            w.nodes[k].phase = Phase::Boot;
            w.nodes[k].t_phase = now;
        }
        Action::Fail => {
            notes.fails.push((k, w.nodes[k].marker));
            go_down(w, bit(k));
            w.restart_container(k);
        }
    }
    w.nodes[k].next_ep = now + pause.max(1);
    p.action
}

/// del_table_copy(schema, X) through `via`: every node of via's running
/// cluster forgets X.
fn drop_from_schema(w: &mut World, via: usize, x: usize) {
    for j in members(w.cluster_of(via)) {
        if let Some(v) = &mut w.nodes[j].vol {
            v.db &= !bit(x);
        }
    }
}

/// `ejabberdctl join_cluster T`: our empty node takes T's schema and data;
/// T's running cluster adds us; join_cluster restarts ejabberd here.
fn join(w: &mut World, k: usize, t: usize) {
    // join_cluster restarts Mnesia here: nothing is apart from it any more.
    for node in &mut w.nodes {
        node.apart &= !bit(k);
    }
    w.nodes[k].apart = 0;
    let cluster = w.cluster_of(t);
    for j in members(cluster) {
        if let Some(v) = &mut w.nodes[j].vol {
            v.db |= bit(k);
            v.down &= !bit(k);
        }
    }
    let src = w.vol(t);
    // The joiner connects through T (extra_db_nodes): to T's running
    // cluster only; a node of the schema apart from T stays apart from it.
    for j in 0..w.n() {
        let nj = &w.nodes[j];
        if j != k
            && cluster & bit(j) == 0
            && nj.pod
            && nj.vm.mnesia_runs()
            && nj.cookie() == Some(src.cookie)
        {
            w.nodes[j].apart |= bit(k);
            w.nodes[k].apart |= bit(j);
        }
    }
    let lineage = w.nodes[t].lineage;
    let now = w.now;
    let node = &mut w.nodes[k];
    node.vol = Some(super::world::Volume { down: 0, ..src });
    node.lineage = lineage;
    node.vm = Vm::Started;
    node.marker = true;
    node.phase = Phase::Running;
    node.t_phase = now;
}
