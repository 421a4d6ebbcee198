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

/// What the probe reports of node `j`, asked together with `asked`.
fn node_fact(w: &World, j: usize, asked: Mask) -> NodeFact {
    let nj = &w.nodes[j];
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
            (state, v.db, w.cluster_of(j), up, v.down & asked & !bit(j))
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
        // No partitions in this model: every pod that exists answers.
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
        .map(|j| node_fact(w, j, asked))
        .collect();
    Facts {
        obs: Observation {
            me: name(k).to_string(),
            phase: nk.phase,
            marker: nk.marker,
            paused: false,
            since_start: w.now - nk.t_start,
            since_phase: w.now - nk.t_phase,
            timing: Timing::default(),
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
            if w.nodes[via].vm == Vm::Started && w.nodes[k].vm == Vm::Off {
                drop_from_schema(w, via, k);
            } else {
                notes.say(now, || "  (drop-stale failed)".into());
            }
        }
        Action::ForceLoad { node } => {
            let j = ordinal(node);
            if w.nodes[j].pod && w.nodes[j].vm == Vm::Waiting {
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
                    .map(|x| x.version)
                    .max()
                    .unwrap_or(0);
                if v.version > newest_elsewhere {
                    notes.set_aside_newest += 1;
                    notes.say(now, || {
                        format!(
                            "  SET ASIDE the newest copy v{} (others v{newest_elsewhere})",
                            v.version
                        )
                    });
                }
            }
            let node = &mut w.nodes[k];
            node.vol = None;
            node.marker = false;
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
            if w.nodes[t].pod && w.nodes[t].vm == Vm::Started && w.nodes[k].vm == Vm::Started {
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
            if w.nodes[k].vm == Vm::Started && !x_runs {
                drop_from_schema(w, k, x);
            }
        }
        Action::Pause | Action::Rejoin { .. } => {
            // Every pod reaches every other here: a partition rule firing
            // is a bug in the plan.
            panic!("chat-{k}: {} without a partition: {}", p.action, p.reason);
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
    let cluster = w.cluster_of(t);
    for j in members(cluster) {
        if let Some(v) = &mut w.nodes[j].vol {
            v.db |= bit(k);
            v.down &= !bit(k);
        }
    }
    let src = w.vol(t);
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
