//! The exploration: a scheduler of entrypoint and Mnesia steps on the
//! model clock, a breadth-first search by number of external events over
//! deduplicated states, the invariants, and traces of violations.

use std::collections::BTreeMap;

use kube_epmd::cluster::facts::{PartitionHandling, Phase};
use rustc_hash::FxHashMap;

use super::entrypoint;
use super::events::{self, Event, Faults};
use super::mnesia::{self, Blame, Cause, Discard, Notes};
use super::world::{Tag, Vm, World, members as members_of};

/// Who acts next: a pod's entrypoint, or its Mnesia.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Actor {
    Mnesia(usize),
    Entrypoint(usize),
}

#[derive(Clone, Copy, Debug)]
pub enum Label {
    Event(Event),
    Actor(Actor),
}

/// The actors that can act, with the time each is due.
fn actors(w: &World) -> Vec<(u64, Actor)> {
    let mut v = Vec::new();
    for (k, n) in w.nodes.iter().enumerate() {
        if !n.pod {
            continue;
        }
        let mn = match n.vm {
            Vm::Starting | Vm::Loaded => true,
            Vm::Waiting => mnesia::waiting_move(w, k).is_some(),
            _ => false,
        };
        if mn {
            v.push((n.next_mn, Actor::Mnesia(k)));
        }
        v.push((n.next_ep, Actor::Entrypoint(k)));
    }
    v
}

/// The fair default order: the actor due first (Mnesia before an
/// entrypoint due at the same time, then the lower ordinal).
fn earliest(w: &World) -> Option<(u64, Actor)> {
    actors(w).into_iter().min_by_key(|&(t, a)| {
        (
            t,
            match a {
                Actor::Mnesia(k) => k,
                Actor::Entrypoint(k) => 8 + k,
            },
        )
    })
}

/// Run one actor at its due time (or now, if overdue).
fn run(w: &mut World, due: u64, a: Actor, notes: &mut Notes) {
    w.now = w.now.max(due);
    match a {
        Actor::Entrypoint(k) => {
            entrypoint::step(w, k, notes);
        }
        Actor::Mnesia(k) => match w.nodes[k].vm {
            Vm::Starting => mnesia::start(w, k, notes),
            Vm::Waiting => {
                if let Some(m) = mnesia::waiting_move(w, k) {
                    mnesia::apply_move(w, k, m, notes);
                }
            }
            Vm::Loaded => {
                // The entrypoint removes the paused flag once ejabberd is
                // started again.
                let node = &mut w.nodes[k];
                node.vm = Vm::Started;
                node.paused = false;
                node.gave_way = false;
                notes.say(w.now, || format!("chat-{k} ejabberd started"));
            }
            _ => {}
        },
    }
    mnesia::settle(w, notes);
}

/// Model seconds after which a state whose key does not change is a fixed
/// point (every age is past the largest threshold, 300 s).
const FOLD_LIMIT: u64 = 400;

/// After a step that changed nothing the plan can see (a Wait), let the
/// default order run until something does: the key only tells thresholds
/// apart, so the steps in between are the same state. None: nothing ever
/// changes again (a fixed point).
fn fold(w: &mut World, key0: &[u8], notes: &mut Notes) -> Option<Vec<u8>> {
    let t0 = w.now;
    while w.now < t0 + FOLD_LIMIT {
        let (due, a) = earliest(w)?;
        run(w, due, a, notes);
        let key = w.key();
        if key != key0 {
            return Some(key);
        }
    }
    None
}

/// Apply one label the way the search did (used again to print traces).
fn transition(
    w: &mut World,
    key0: &[u8],
    label: Label,
    faults: &Faults,
    notes: &mut Notes,
) -> Option<Vec<u8>> {
    match label {
        Label::Event(e) => {
            events::apply(w, e, faults, notes);
            mnesia::settle(w, notes);
            Some(w.key())
        }
        Label::Actor(a) => {
            let due = actors(w)
                .into_iter()
                .find(|&(_, b)| b == a)
                .map(|(t, _)| t)?;
            run(w, due, a, notes);
            let key = w.key();
            if key != key0 {
                Some(key)
            } else {
                fold(w, key0, notes)
            }
        }
    }
}

/// What the operator and the controller do before a liveness run: the
/// network healed, a StatefulSet scaled to 0 is scaled back (its
/// remaining pods deleted first, as the controller finishes the
/// scale-down), then every missing pod is created.
fn recover(w: &mut World, faults: &Faults, notes: &mut Notes) {
    if w.cut.is_some() {
        events::apply(w, Event::Heal, faults, notes);
        mnesia::settle(w, notes);
    }
    if w.replicas == 0 {
        for k in 0..w.n() {
            if w.nodes[k].pod {
                events::apply(w, Event::Delete(k), faults, notes);
                mnesia::settle(w, notes);
            }
        }
        events::apply(w, Event::ScaleBack, faults, notes);
    }
    for k in 0..w.replicas {
        if !w.nodes[k].pod {
            w.create_pod(k);
        }
    }
}

/// Where a liveness run from a state ends, relative to that state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Live {
    /// Full cluster; `newest`: at that state's newest surviving version.
    Full { newest: bool },
    /// Not full within the bound; `manual`: a waiting member waits for a
    /// schema node whose copy is gone and that it did not see go down.
    Stuck {
        manual: bool,
        scaled: bool,
        gone: bool,
        bridged: bool,
        waiting_apart: bool,
    },
}

/// The verdict of the liveness run from one state.
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Full,
    /// Full, at an older version than the newest surviving copy, because
    /// of an own load with this blame.
    Older(Blame),
    /// Full at an older version with no own load to explain it.
    OlderUnexplained,
    /// Stuck waiting for a node that may have gone down last and whose
    /// copy is gone (lost or scaled-away volume), or the newest
    /// acknowledged copy is gone: the documented manual force-load.
    ManualStep,
    /// Stuck although the newest acknowledged copy survives.
    Stuck,
    /// Stuck: a member waits for a node whose copy is gone although it saw
    /// it go down (the record came after its Mnesia decided; known, open).
    StuckCopyGone,
    /// Stuck: the members wait for a scaled-away node (known, open: the
    /// prune needs a started node).
    StuckScaledAway,
    /// Stuck: every pod started in one lineage, but two of them do not run
    /// together while a third runs with both (a node restarted during a
    /// cut too short for a nodedown; known, open: see the module doc).
    StuckBridged,
    /// Stuck: a node's Mnesia, started during a cut, waits for tables
    /// apart from started members after the heal (nothing reconnects it;
    /// known, open: see the module doc).
    StuckWaitingApart,
}

impl Verdict {
    fn is_violation(self) -> bool {
        matches!(
            self,
            Verdict::Older(Blame::Plan) | Verdict::OlderUnexplained | Verdict::Stuck
        )
    }
}

/// A full cluster: every pod the StatefulSet wants started and in, one
/// schema (cookie, lineage), exactly those pods in it, all running
/// together (Mnesia's running_db_nodes), one copy of the data.
fn full(w: &World) -> Option<u32> {
    let want = (1u16 << w.replicas) as u8 - 1;
    let first = &w.nodes[0];
    let v0 = first.vol?;
    for (k, n) in w.nodes[..w.replicas].iter().enumerate() {
        let v = n.vol?;
        let ok = n.pod
            && n.vm == Vm::Started
            && n.phase == Phase::Running
            && n.marker
            && v.cookie == v0.cookie
            && n.lineage == first.lineage
            && v.db == want
            && w.running_view(k) == want
            && v.data == v0.data;
        if !ok {
            return None;
        }
    }
    Some(w.version(v0.data))
}

/// The README's manual step: a member (marker) has a schema node that holds
/// no copy of its schema any more and that it did not see go down (so that
/// node may have gone down last: nobody can tell it was not). Its Mnesia
/// waits, or keeps restarting on the lost node's new cookie.
/// `unseen`: only a node it did not see go down counts.
fn gone_last(w: &World, unseen: bool) -> bool {
    w.nodes.iter().enumerate().any(|(j, n)| {
        n.pod
            && n.marker
            && n.vol.is_some_and(|v| {
                (0..w.n()).any(|x| {
                    x != j
                        && v.db & (1 << x) != 0
                        && (!unseen || v.down & (1 << x) == 0)
                        && w.nodes[x].cookie() != Some(v.cookie)
                })
            })
    })
}

fn stuck(w: &World) -> Live {
    let scaled = w
        .nodes
        .iter()
        .any(|n| n.pod && n.vm == Vm::Waiting && n.vol.is_some_and(|v| v.db >> w.replicas != 0));
    Live::Stuck {
        manual: gone_last(w, true),
        scaled,
        gone: gone_last(w, false),
        bridged: bridged(w),
        waiting_apart: waiting_apart(w),
    }
}

/// A waiting Mnesia apart from a running Mnesia of its schema.
fn waiting_apart(w: &World) -> bool {
    w.nodes.iter().any(|n| {
        n.pod
            && n.vm == Vm::Waiting
            && members_of(n.apart).any(|j| {
                let nj = &w.nodes[j];
                nj.pod && nj.vm.mnesia_runs() && nj.cookie() == n.cookie()
            })
    })
}

/// Every pod the StatefulSet wants started in one lineage and schema, but
/// not all running together (Mnesia-level connections not transitive).
fn bridged(w: &World) -> bool {
    let want = (1u16 << w.replicas) as u8 - 1;
    let first = &w.nodes[0];
    let Some(v0) = first.vol else { return false };
    let one = w.nodes[..w.replicas].iter().all(|n| {
        n.pod
            && n.vm == Vm::Started
            && n.marker
            && n.lineage == first.lineage
            && n.vol.is_some_and(|v| v.cookie == v0.cookie && v.db == want)
    });
    one && (0..w.replicas).any(|k| w.running_view(k) != want)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Two {
    No,
    /// Autoheal, while the two sides cannot reach each other (cut, or
    /// apart since the heal): every side serves, by design.
    Sides,
    Yes,
}

/// Two clusters: nodes with tables that belong to a cluster (marker, or a
/// schema of more than themselves) of different cookies or lineages.
fn two_clusters(w: &World) -> Two {
    let members: Vec<usize> = (0..w.n())
        .filter(|&k| {
            let n = &w.nodes[k];
            n.pod && n.vm.has_tables() && n.vol.is_some_and(|v| n.marker || v.db.count_ones() > 1)
        })
        .collect();
    let id = |k: usize| (w.vol(k).cookie, w.nodes[k].lineage);
    let mut verdict = Two::No;
    for (i, &a) in members.iter().enumerate() {
        for &b in &members[i + 1..] {
            if id(a) == id(b) {
                continue;
            }
            let apart = !w.reach(a, b) || w.nodes[a].apart & (1 << b) != 0;
            // pause_minority: across a cut, a side whose commits still wait
            // for the other (no nodedown there yet) acknowledges nothing;
            // its entrypoint pauses it at its next check.
            let waits = !w.reach(a, b) && (w.hangs(a) || w.hangs(b));
            if apart && (w.policy == PartitionHandling::Autoheal || waits) {
                verdict = Two::Sides;
            } else {
                return Two::Yes;
            }
        }
    }
    verdict
}

pub struct Config {
    pub depth: usize,
    /// At most this many events on a path that are not partition events
    /// (Partition, Nodedown, Heal).
    pub plain_max: usize,
    /// Let any actor whose step changes the state go first (else only the
    /// fair order, with events between any two steps).
    pub orders: bool,
    pub faults: Faults,
}

#[derive(Default, Debug)]
pub struct Stats {
    pub transitions: u64,
    pub distinct: usize,
    pub per_depth: Vec<usize>,
    pub fixed_points: u64,
    pub two_clusters: u64,
    pub own_loads: BTreeMap<(Cause, Option<Blame>), u64>,
    pub fails: u64,
    pub fails_with_db: u64,
    pub incompatible: u64,
    pub set_asides: u64,
    pub set_asides_newest: u64,
    pub verdicts: BTreeMap<Verdict, u64>,
    pub newest_lost: u64,
    pub liveness_steps: u64,
    /// Autoheal: states where the sides of a partition serve two
    /// lineages (by design, until the heal).
    pub two_sides: u64,
    /// Writes lost by transition (the last copy replaced), by tag and how.
    pub discards: BTreeMap<(Tag, Discard), u64>,
    /// Transitions in which a paused node loaded its own copy while
    /// another node had the tables.
    pub paused_own_loads: u64,
    /// States with a network cut, and with nodes apart after a heal.
    pub cut_states: u64,
    pub apart_states: u64,
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub kind: String,
    pub state: u32,
    /// The liveness run from that state shows it.
    pub liveness: bool,
}

pub struct Search {
    cfg: Config,
    seen: FxHashMap<Vec<u8>, u32>,
    parents: Vec<(u32, Option<Label>, u8)>,
    roots: Vec<World>,
    live: FxHashMap<Vec<u8>, (Live, Option<Blame>)>,
    pub stats: Stats,
    pub violations: BTreeMap<String, Violation>,
}

impl Search {
    pub fn new(cfg: Config) -> Search {
        Search {
            cfg,
            seen: FxHashMap::default(),
            parents: Vec::new(),
            roots: Vec::new(),
            live: FxHashMap::default(),
            stats: Stats::default(),
            violations: BTreeMap::new(),
        }
    }

    fn violation(&mut self, w: &World, kind: String, state: u32, liveness: bool) {
        // Known and open (see the report in the module doc of the test):
        // after a node went down inside the join window.
        let kind = if w.window {
            format!("known, after the join window: {kind}")
        } else if w.start_in_cut {
            format!("known, a Mnesia start decided before a cut loaded during it: {kind}")
        } else if w.hold_max_load {
            format!("known, after a CLUSTER_HOLD_MAX orphan load (documented): {kind}")
        } else if w.late_pause {
            format!("known, the majority wrote before the minority paused: {kind}")
        } else {
            kind
        };
        self.violations.entry(kind.clone()).or_insert(Violation {
            kind,
            state,
            liveness,
        });
    }

    /// Count what a transition did; flag what breaks an invariant.
    fn note(&mut self, w: &World, notes: &Notes, state: u32) {
        // A write that must survive (Whole, Won) and is lost shows in (3)
        // (the full cluster ends at an older version), blamed on the own
        // load that left the copy it came from behind.
        for &(tag, how) in &notes.discards {
            *self.stats.discards.entry((tag, how)).or_default() += 1;
        }
        if notes.paused_own_load > 0 {
            self.stats.paused_own_loads += notes.paused_own_load as u64;
            self.violation(
                w,
                "(P4) a paused node loaded its own copy while another had the tables".into(),
                state,
                false,
            );
        }
        for l in &notes.own_loads {
            *self.stats.own_loads.entry((l.cause, l.blame)).or_default() += 1;
            if l.blame == Some(Blame::Plan) {
                self.violation(
                    w,
                    format!("(2) {:?} discards a newer copy (plan)", l.cause),
                    state,
                    false,
                );
            }
        }
        self.stats.incompatible += notes.incompatible as u64;
        self.stats.set_asides += notes.set_asides as u64;
        self.stats.set_asides_newest += notes.set_aside_newest as u64;
        if notes.set_aside_newest > 0 {
            self.violation(
                w,
                "(2) set-aside of the newest surviving copy".into(),
                state,
                false,
            );
        }
        for &(_, db) in &notes.fails {
            self.stats.fails += 1;
            if db {
                self.stats.fails_with_db += 1;
                self.violation(w, "(4) a pod with a database failed".into(), state, false);
            }
        }
    }

    /// Breadth-first by number of external events from every root.
    pub fn run(&mut self, roots: Vec<World>) {
        // (state, world, events on its path that are not partition events)
        let mut level: Vec<(u32, World, u8)> = Vec::new();
        for w in roots {
            let key = w.key();
            if self.seen.contains_key(&key) {
                continue;
            }
            let idx = self.parents.len() as u32;
            self.seen.insert(key, idx);
            self.parents.push((self.roots.len() as u32, None, 0));
            self.roots.push(w.clone());
            level.push((idx, w, 0));
        }
        for depth in 0..=self.cfg.depth {
            let mut next: Vec<(u32, World, u8)> = Vec::new();
            let mut stack = std::mem::take(&mut level);
            let mut count = 0;
            while let Some((idx, w, plain)) = stack.pop() {
                count += 1;
                self.check_state(idx, &w);
                let key = w.key();
                let mut succ: Vec<(Label, World, Notes, u8)> = Vec::new();
                let acts = actors(&w);
                let first = earliest(&w).map(|(_, a)| a);
                for &(_, a) in &acts {
                    if !self.cfg.orders && Some(a) != first {
                        continue;
                    }
                    let mut w2 = w.clone();
                    let mut notes = Notes::default();
                    let due = acts
                        .iter()
                        .find(|&&(_, b)| b == a)
                        .map(|&(t, _)| t)
                        .unwrap();
                    run(&mut w2, due, a, &mut notes);
                    let k2 = w2.key();
                    if k2 != key {
                        succ.push((Label::Actor(a), w2, notes, plain));
                    } else if Some(a) == first {
                        // Only the default order folds a step that changed
                        // nothing: another actor's Wait just moves the clock.
                        if fold(&mut w2, &key, &mut notes).is_some() {
                            succ.push((Label::Actor(a), w2, notes, plain));
                        } else {
                            self.stats.fixed_points += 1;
                        }
                    }
                }
                if depth < self.cfg.depth {
                    for e in events::enabled(&w, &self.cfg.faults) {
                        let p = plain + !e.is_partition() as u8;
                        if p as usize > self.cfg.plain_max {
                            continue;
                        }
                        let mut w2 = w.clone();
                        let mut notes = Notes::default();
                        events::apply(&mut w2, e, &self.cfg.faults, &mut notes);
                        mnesia::settle(&mut w2, &mut notes);
                        succ.push((Label::Event(e), w2, notes, p));
                    }
                }
                for (label, w2, notes, p) in succ {
                    self.stats.transitions += 1;
                    let k2 = w2.key();
                    if self.seen.contains_key(&k2) {
                        continue;
                    }
                    let i2 = self.parents.len() as u32;
                    let d2 = depth as u8 + matches!(label, Label::Event(_)) as u8;
                    self.seen.insert(k2, i2);
                    self.parents.push((idx, Some(label), d2));
                    self.note(&w2, &notes, i2);
                    if matches!(label, Label::Event(_)) {
                        next.push((i2, w2, p));
                    } else {
                        stack.push((i2, w2, p));
                    }
                }
            }
            self.stats.per_depth.push(count);
            level = next;
        }
        self.stats.distinct = self.seen.len();
    }

    fn check_state(&mut self, idx: u32, w: &World) {
        match two_clusters(w) {
            Two::Yes => {
                self.stats.two_clusters += 1;
                self.violation(w, "(1) two clusters".into(), idx, false);
            }
            Two::Sides => self.stats.two_sides += 1,
            Two::No => {}
        }
        if w.cut.is_some() {
            self.stats.cut_states += 1;
        }
        if w.nodes.iter().any(|n| n.apart != 0) {
            self.stats.apart_states += 1;
        }
        let verdict = self.liveness(w);
        *self.stats.verdicts.entry(verdict).or_default() += 1;
        if !w.acked_survives() {
            self.stats.newest_lost += 1;
        }
        if verdict == Verdict::StuckScaledAway {
            self.violation(
                w,
                "known, scaled away during an outage: (3) liveness".into(),
                idx,
                true,
            );
        } else if verdict == Verdict::StuckWaitingApart {
            self.violation(
                w,
                "known, a node whose Mnesia started during a cut waits apart after the heal: (3) liveness".into(),
                idx,
                true,
            );
        } else if verdict == Verdict::StuckBridged {
            self.violation(
                w,
                "known, two started nodes apart, a third runs with both (restarted during a short cut): (3) liveness".into(),
                idx,
                true,
            );
        } else if verdict == Verdict::StuckCopyGone {
            self.violation(
                w,
                "known, waits for a lost copy it saw go down: (3) liveness".into(),
                idx,
                true,
            );
        } else if verdict.is_violation() {
            self.violation(w, format!("(3) liveness: {verdict:?}"), idx, true);
        }
    }

    /// Every missing pod created, no more faults: run the default order to
    /// a full cluster (or give up after a bound). Memoized by key: every
    /// state a run passes through gets the run's end.
    fn liveness(&mut self, w: &World) -> Verdict {
        let mut w = w.clone();
        let mut notes = Notes::default();
        recover(&mut w, &self.cfg.faults, &mut notes);
        let survives = w.acked_survives();
        let t0 = w.now;
        // (key, newest surviving version, blame of the step from it)
        let mut path: Vec<(Vec<u8>, u32, Option<Blame>)> = Vec::new();
        let (mut end, mut blame, mut newest_after) = loop {
            let key = w.key();
            let newest = w.newest_surviving();
            if let Some(&(end, b)) = self.live.get(&key) {
                break (end, b, newest);
            }
            if let Some(v) = full(&w) {
                path.push((key, newest, None));
                break (
                    Live::Full {
                        newest: v == newest,
                    },
                    None,
                    newest,
                );
            }
            if w.now > t0 + 3000 {
                path.push((key, newest, None));
                break (stuck(&w), None, newest);
            }
            let Some((due, a)) = earliest(&w) else {
                break (stuck(&w), None, newest);
            };
            notes.own_loads.clear();
            notes.discards.clear();
            run(&mut w, due, a, &mut notes);
            self.stats.liveness_steps += 1;
            path.push((key, newest, notes.worst_blame()));
        };
        // Backwards: a run that ends at the newest version of a later state
        // is behind an earlier state whose newest surviving copy was newer.
        for (key, newest, b) in path.into_iter().rev() {
            blame = blame.max(b);
            if let Live::Full { newest: at } = end {
                end = Live::Full {
                    newest: at && newest <= newest_after,
                };
            }
            newest_after = newest;
            self.live.entry(key).or_insert((end, blame));
        }
        match end {
            Live::Full { newest: true } => Verdict::Full,
            Live::Full { newest: false } => blame.map_or(Verdict::OlderUnexplained, Verdict::Older),
            Live::Stuck { bridged: true, .. } => Verdict::StuckBridged,
            Live::Stuck {
                waiting_apart: true,
                ..
            } => Verdict::StuckWaitingApart,
            Live::Stuck {
                manual: false,
                scaled: true,
                ..
            } if survives => Verdict::StuckScaledAway,
            Live::Stuck {
                manual: false,
                gone: true,
                ..
            } if survives => Verdict::StuckCopyGone,
            Live::Stuck { manual: false, .. } if survives => Verdict::Stuck,
            Live::Stuck { .. } => Verdict::ManualStep,
        }
    }

    /// The events and steps from a root to state `idx`, replayed with every
    /// plan and Mnesia move printed; with the liveness run after it if
    /// asked.
    pub fn trace(&self, idx: u32, liveness: bool) -> String {
        let mut chain = Vec::new();
        let mut i = idx;
        let root = loop {
            let (parent, label, _) = self.parents[i as usize];
            match label {
                Some(l) => {
                    chain.push(l);
                    i = parent;
                }
                None => break parent,
            }
        };
        chain.reverse();
        let mut w = self.roots[root as usize].clone();
        let mut notes = Notes::logging();
        notes.say(w.now, || format!("root {}", w.describe()));
        for l in chain {
            let key = w.key();
            transition(&mut w, &key, l, &self.cfg.faults, &mut notes);
        }
        notes.say(w.now, || format!("state {}", w.describe()));
        if liveness {
            notes.say(w.now, || {
                "== liveness: create every pod, no more faults".into()
            });
            recover(&mut w, &self.cfg.faults, &mut notes);
            let t0 = w.now;
            while full(&w).is_none() && w.now <= t0 + 3000 {
                let Some((due, a)) = earliest(&w) else { break };
                run(&mut w, due, a, &mut notes);
            }
            notes.say(w.now, || format!("end {}", w.describe()));
        }
        collapse(notes.log.unwrap_or_default())
    }

    pub fn depth_of(&self, idx: u32) -> u8 {
        self.parents[idx as usize].2
    }
}

/// Repeated plan lines (the same node waiting) once, with a count.
fn collapse(lines: Vec<String>) -> String {
    let mut out: Vec<(String, String, usize)> = Vec::new();
    for l in lines {
        let body = l.get(7..).unwrap_or("").to_string();
        match out.last_mut() {
            Some((_, b, n)) if *b == body => *n += 1,
            _ => out.push((l, body, 1)),
        }
    }
    out.into_iter()
        .map(|(l, _, n)| {
            if n > 1 {
                format!("  {l}  (x{n})\n")
            } else {
                format!("  {l}\n")
            }
        })
        .collect()
}
