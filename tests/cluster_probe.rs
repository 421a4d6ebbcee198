//! deploy/base/ejabberd/cluster-probe.erl, the Erlang half of the cluster
//! planner, against real parts: Erlang nodes with a disc Mnesia schema
//! registered with kube-epmd (plain mode), and a stand-in for the
//! sidecar's `/cluster/nodes` and `/cluster/plan` that records what the
//! probe sent. The probe runs exactly as cluster-entrypoint.sh runs it: a
//! hidden node evaluating the file with `file:script/1`.

mod support;

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use support::daemon::ChildGuard;
use support::epmd::{Daemon, Impl, kube_epmd_path, run, wait_until};
use support::prereq;

const PROBE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/base/ejabberd/cluster-probe.erl"
);
const COOKIE: &str = "kube-epmd-probe-test";
/// Longest wait for something the nodes owe us (a reply, a Mnesia state).
const LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------
// The JSON contract: the crate's own types (strict: deny_unknown_fields),
// so the probe and the planner cannot drift apart.

use kube_epmd::cluster::facts::{
    NodeFact, NodeState as State, Observation, PartitionHandling, Phase, Timing,
};

/// What `query` prints: the observation without the plan's inputs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    #[serde(rename = "self")]
    self_node: String,
    nodes: Vec<NodeFact>,
}

impl Query {
    fn fact(&self, node: &str) -> &NodeFact {
        self.nodes
            .iter()
            .find(|f| f.node == node)
            .unwrap_or_else(|| panic!("{node} is not in the query's nodes: {self:?}"))
    }

    fn order(&self) -> Vec<&str> {
        self.nodes.iter().map(|f| f.node.as_str()).collect()
    }
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn names<S: AsRef<str>>(v: &[S]) -> Vec<String> {
    sorted(&v.iter().map(|n| n.as_ref().to_string()).collect::<Vec<_>>())
}

// ---------------------------------------------------------------------
// The sidecar's stand-in: HTTP/1 with hyper, on loopback, on a runtime of
// its own so the tests themselves stay synchronous.

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    /// Path and query, as sent.
    target: String,
    version: hyper::Version,
    content_type: Option<String>,
    body: Vec<u8>,
}

struct Answers {
    /// `/cluster/nodes`: status and body.
    nodes: (u16, String),
    /// `/cluster/plan`: status and body.
    plan: (u16, String),
    requests: Vec<Recorded>,
}

struct Sidecar {
    addr: SocketAddr,
    answers: Arc<Mutex<Answers>>,
    _runtime: tokio::runtime::Runtime,
}

impl Sidecar {
    fn start() -> Sidecar {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("sidecar runtime");
        let answers = Arc::new(Mutex::new(Answers {
            nodes: (200, String::new()),
            plan: (200, "wait\nnothing decided\n".into()),
            requests: Vec::new(),
        }));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the sidecar stand-in");
        let addr = listener.local_addr().expect("local addr");
        let shared = answers.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| answer(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Sidecar {
            addr,
            answers,
            _runtime: runtime,
        }
    }

    fn admin(&self) -> String {
        self.addr.to_string()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Answers> {
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_nodes(&self, nodes: &[&str]) {
        self.lock().nodes = (200, nodes.iter().map(|n| format!("{n}\n")).collect());
    }

    fn set_nodes_answer(&self, status: u16, body: &str) {
        self.lock().nodes = (status, body.into());
    }

    fn set_plan_answer(&self, status: u16, body: &str) {
        self.lock().plan = (status, body.into());
    }

    /// The requests so far, and forget them.
    fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.lock().requests)
    }
}

async fn answer(
    answers: Arc<Mutex<Answers>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let version = req.version();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)").to_string());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let (status, text) = {
        let mut a = answers.lock().unwrap_or_else(|e| e.into_inner());
        a.requests.push(Recorded {
            method: method.clone(),
            target,
            version,
            content_type,
            body,
        });
        match (method.as_str(), path.as_str()) {
            ("GET", "/cluster/nodes") => a.nodes.clone(),
            ("POST", "/cluster/plan") => a.plan.clone(),
            _ => (404, "no such endpoint\n".into()),
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = StatusCode::from_u16(status).expect("status");
    Ok(resp)
}

// ---------------------------------------------------------------------
// The test bed: kube-epmd, the sidecar's stand-in, a scratch directory.
// Every node is NAME@127.0.0.1 (one EPMD: the names must differ).

struct Bed {
    epmd: Daemon,
    sidecar: Sidecar,
    dir: tempfile::TempDir,
}

fn node(short: &str) -> String {
    format!("{short}@127.0.0.1")
}

impl Bed {
    fn start() -> Bed {
        prereq::erl();
        Bed {
            epmd: Daemon::start(Impl::Kube, &[]),
            sidecar: Sidecar::start(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// `erl` for a node named `name`, distribution through our kube-epmd.
    fn erl(&self, name: &str) -> Command {
        let mut c = Command::new("erl");
        c.args(["-name", name, "-setcookie", COOKIE])
            .args(["-noshell", "-start_epmd", "false"])
            .env("ERL_EPMD_PORT", self.epmd.port.to_string())
            // A crash dump lands in the scratch directory, not the repository.
            .current_dir(self.dir.path());
        c
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log file")
    }

    /// The node names kube-epmd has registered.
    fn registered(&self) -> String {
        run(Command::new(kube_epmd_path()).args(["-port", &self.epmd.port.to_string(), "-names"])).1
    }

    fn wait_registered(&self, short: &str, yes: bool) {
        let line = format!("name {short} at port");
        let what = format!("{short} to be {}registered", if yes { "" } else { "un" });
        wait_until(LIMIT, &what, || self.registered().contains(&line) == yes);
    }

    /// The hidden node cluster-entrypoint.sh's beacon_start runs while a
    /// pod has no database: named cluster-empty-NODE, running nothing.
    fn beacon(&self, short: &str) -> ChildGuard {
        let name = format!("cluster-empty-{short}");
        let child = self
            .erl(&node(&name))
            .args(["-hidden", "-noinput"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file(&name))
            .spawn()
            .expect("start the beacon");
        let guard = ChildGuard(child);
        self.wait_registered(&name, true);
        guard
    }

    /// Run the probe with `args` after -extra, as the entrypoint does:
    /// (exit code, stdout, stderr, wall time).
    fn probe(&self, args: &[&str]) -> (i32, String, String, Duration) {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = node(&format!(
            "cluster-{:04}-probe",
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let script = format!(
            "case file:script(\"{PROBE}\") of {{ok, _}} -> halt(0); \
             E -> io:format(standard_error, \"cluster-probe: ~p~n\", [E]), halt(2) end"
        );
        let started = Instant::now();
        let mut cmd = self.erl(&name);
        cmd.args(["-hidden", "-noinput", "-eval", &script, "-extra"])
            .args(args);
        let (code, out, err) = run(&mut cmd);
        (code, out, err, started.elapsed())
    }

    /// `query` as SELF: the parsed line.
    fn query(&self, self_node: &str) -> Query {
        let (code, out, err, _) = self.probe(&["query", &self.sidecar.admin(), self_node]);
        assert_eq!(code, 0, "query failed: {err}");
        assert_eq!(out.lines().count(), 1, "query prints one line: {out:?}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("query printed {out:?}: {e}"))
    }

    /// `query` as SELF until `cond` holds (bounded by LIMIT).
    fn query_until(&self, self_node: &str, what: &str, cond: impl Fn(&Query) -> bool) -> Query {
        let deadline = Instant::now() + LIMIT;
        loop {
            let q = self.query(self_node);
            if cond(&q) {
                return q;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {LIMIT:?} waiting for {what}; last query: {q:#?}"
            );
        }
    }
}

// ---------------------------------------------------------------------
// A node under test: an erl whose stdin takes expressions and whose
// stdout answers each with one "=> RESULT" line (~w, so on one line).

const CONSOLE: &str = "Loop = fun L() -> \
      case io:parse_erl_exprs('') of \
        {ok, Es, _} -> \
          R = try erl_eval:exprs(Es, []) of {value, V, _} -> V catch C:X -> {caught, C, X} end, \
          io:format(\"=> ~w~n\", [R]), L(); \
        {eof, _} -> halt(0); \
        {error, Err, _} -> io:format(\"=> ~w~n\", [{parse_error, Err}]), L() \
      end end, \
    Loop().";

struct Vm {
    name: String,
    stdin: ChildStdin,
    replies: Receiver<String>,
    log: PathBuf,
    _child: ChildGuard,
}

impl Vm {
    /// Start NAME@127.0.0.1 with its Mnesia directory in the bed (the same
    /// one again on a restart), and wait until it answers.
    fn start(bed: &Bed, short: &str) -> Vm {
        let name = node(short);
        let mnesia_dir = bed.dir.path().join(format!("mnesia-{short}"));
        let log = bed.dir.path().join(format!("{short}.log"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut child = bed
            .erl(&name)
            .arg("-mnesia")
            .arg("dir")
            .arg(format!("\"{}\"", mnesia_dir.display()))
            .args(["-eval", CONSOLE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start erl");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, replies) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(reply) = line.strip_prefix("=> ")
                    && tx.send(reply.to_string()).is_err()
                {
                    break;
                }
            }
        });
        let mut vm = Vm {
            name,
            stdin,
            replies,
            log,
            _child: ChildGuard(child),
        };
        let me = vm.eval("node()");
        assert_eq!(me, format!("'{}'", vm.name));
        vm
    }

    /// Evaluate `expr` on the node; its result as ~w prints it.
    fn eval(&mut self, expr: &str) -> String {
        writeln!(self.stdin, "{expr}.").expect("write to erl");
        match self.replies.recv_timeout(LIMIT) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => panic!(
                "{}: no answer to {expr} in {LIMIT:?}\n{}",
                self.name,
                read(&self.log)
            ),
            Err(RecvTimeoutError::Disconnected) => {
                panic!("{} exited:\n{}", self.name, read(&self.log))
            }
        }
    }

    fn expect(&mut self, expr: &str, want: &str) {
        let got = self.eval(expr);
        assert_eq!(got, want, "{}: {expr}", self.name);
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// An Erlang list of node atoms.
fn atoms(shorts: &[&str]) -> String {
    let v: Vec<String> = shorts.iter().map(|s| format!("'{}'", node(s))).collect();
    format!("[{}]", v.join(","))
}

// ---------------------------------------------------------------------

/// Three nodes with a disc_copies table on each, through every state the
/// planner distinguishes, then a `plan` round and a force-load.
#[test]
#[cfg_attr(skip_erl, ignore = "needs erl (erlang-base) (KUBE_EPMD_TEST_SKIP)")]
fn probe_reports_the_mnesia_facts_of_real_nodes() {
    let bed = Bed::start();
    let (a, b, c, d, e) = (node("a"), node("b"), node("c"), node("d"), node("e"));
    let admin = bed.sidecar.admin();
    let mut va = Vm::start(&bed, "a");
    let mut vb = Vm::start(&bed, "b");
    let mut vc = Vm::start(&bed, "c");
    // d never runs; e's pod is here without a database (its beacon).
    let _beacon = bed.beacon("e");
    bed.sidecar.set_nodes(&[&b, &c, &d, &e]);

    // nodes: the sidecar's list, as it sent it.
    let (code, out, err, _) = bed.probe(&["nodes", &admin, &a]);
    assert_eq!(
        (code, out.as_str()),
        (0, format!("{b}\n{c}\n{d}\n{e}\n").as_str()),
        "{err}"
    );
    let reqs = bed.sidecar.take_requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].target, "/cluster/nodes?self=a%40127.0.0.1");

    // VMs up, Mnesia not started: starting. A Mnesia not running and
    // without a schema on disc reports its own node alone as db_nodes
    // (with one, it reads the schema's nodes from disc) and none running.
    let q = bed.query(&a);
    assert_eq!(q.self_node, a);
    assert_eq!(
        q.order(),
        [&a, &b, &c, &d, &e],
        "SELF first, then the sidecar's order"
    );
    for n in [&a, &b, &c] {
        let f = q.fact(n);
        assert_eq!(f.state, State::Starting, "{f:?}");
        assert_eq!(f.db_nodes, [n.as_str()], "{f:?}");
        assert!(
            f.running_db_nodes.is_empty() && f.saw_down.is_empty(),
            "{f:?}"
        );
    }
    for (n, state) in [(&d, State::Down), (&e, State::Empty)] {
        let f = q.fact(n);
        assert_eq!(f.state, state, "{f:?}");
        assert!(f.db_nodes.is_empty() && f.running_db_nodes.is_empty() && f.saw_down.is_empty());
        assert_eq!(f.uptime, 0);
    }

    // One schema over the three, a disc_copies table on each: loaded.
    va.expect(
        &format!("mnesia:create_schema({})", atoms(&["a", "b", "c"])),
        "ok",
    );
    for vm in [&mut va, &mut vb, &mut vc] {
        vm.expect("mnesia:start()", "ok");
    }
    va.expect(
        &format!(
            "mnesia:create_table(t, [{{disc_copies, {}}}])",
            atoms(&["a", "b", "c"])
        ),
        "{atomic,ok}",
    );
    for vm in [&mut va, &mut vb, &mut vc] {
        vm.expect("mnesia:wait_for_tables([t], 20000)", "ok");
    }
    let born = Instant::now();
    // ejabberd itself is not needed for "started": an application by
    // that name running is what the probe looks for.
    vc.expect(
        "{application:load({application, ejabberd, [{description, \"stand-in\"}, {vsn, \"0\"}, \
         {modules, []}, {registered, []}, {applications, [kernel, stdlib]}]}), \
         application:start(ejabberd)}",
        "{ok,ok}",
    );
    let q = bed.query(&a);
    let all = names(&[&a, &b, &c]);
    for (n, state) in [
        (&a, State::Loaded),
        (&b, State::Loaded),
        (&c, State::Started),
    ] {
        let f = q.fact(n);
        assert_eq!(f.state, state, "{f:?}");
        assert_eq!(sorted(&f.db_nodes), all, "{f:?}");
        assert_eq!(sorted(&f.running_db_nodes), all, "{f:?}");
        assert!(f.saw_down.is_empty(), "{f:?}");
    }

    // plan with three nodes up: the body is the crate's Observation, the
    // answer comes out verbatim (a UTF-8 reason too).
    let answer = "wait\nb and c are “loaded”: a joins\n";
    bed.sidecar.set_plan_answer(200, answer);
    bed.sidecar.take_requests();
    let (code, out, err, took) = bed.probe(&[
        "plan", &admin, &a, "joining", "true", "12", "3", "15", "120", "300",
    ]);
    println!("plan round with 3 nodes up (erl wall time): {took:?}");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, answer, "the answer, byte for byte");
    let reqs = bed.sidecar.take_requests();
    let [get, post] = &reqs[..] else {
        panic!("want a GET and a POST: {reqs:?}")
    };
    assert_eq!((get.method.as_str(), post.method.as_str()), ("GET", "POST"));
    assert_eq!(post.target, "/cluster/plan");
    assert_eq!(post.content_type.as_deref(), Some("application/json"));
    assert_eq!(post.version, hyper::Version::HTTP_10);
    let obs: Observation = serde_json::from_slice(&post.body).unwrap_or_else(|e| {
        panic!(
            "the plan body is not an Observation: {e}\n{}",
            String::from_utf8_lossy(&post.body)
        )
    });
    assert_eq!(obs.me, a);
    assert_eq!(obs.phase, Phase::Joining);
    assert!(obs.marker);
    assert_eq!((obs.since_start, obs.since_phase), (12, 3));
    assert_eq!(
        obs.timing,
        Timing {
            load_grace: 15,
            hold_max: 120,
            join_timeout: 300,
            partition: PartitionHandling::PauseMinority,
        }
    );
    let states: Vec<(&str, State)> = obs
        .nodes
        .iter()
        .map(|f| (f.node.as_str(), f.state))
        .collect();
    assert_eq!(
        states,
        [
            (a.as_str(), State::Loaded),
            (b.as_str(), State::Loaded),
            (c.as_str(), State::Started),
            (d.as_str(), State::Down),
            (e.as_str(), State::Empty)
        ]
    );
    // Uptime is the node's, in seconds: at most the time since we
    // started the VMs (they came up before `born`, give them 10 s).
    for f in &obs.nodes[..3] {
        assert!(f.uptime <= born.elapsed().as_secs() + 10, "{f:?}");
    }

    // a goes (a pod killed): b and c saw it go.
    drop(va);
    bed.sidecar.set_nodes(&[&a, &c, &d, &e]);
    let q = bed.query_until(&b, "b and c to see a go down", |q| {
        q.fact(&b).saw_down == [a.clone()] && q.fact(&c).saw_down == [a.clone()]
    });
    assert_eq!(q.fact(&a).state, State::Down);
    assert_eq!(sorted(&q.fact(&b).running_db_nodes), names(&[&b, &c]));

    // b goes too: c saw both. Then c goes: all down, c last.
    bed.sidecar.set_nodes(&[&a, &b]);
    drop(vb);
    bed.query_until(&c, "c to see a and b go down", |q| {
        sorted(&q.fact(&c).saw_down) == names(&[&a, &b])
    });
    drop(vc);

    // a comes back alone. It went down first, saw nobody go, so Mnesia
    // waits for the copies of b or c: waiting.
    bed.wait_registered("a", false);
    let mut va = Vm::start(&bed, "a");
    va.expect("mnesia:start()", "ok");
    bed.sidecar.set_nodes(&[&b, &c]);
    let q = bed.query_until(&a, "a to wait for its tables", |q| {
        q.fact(&a).state == State::Waiting
    });
    let fa = q.fact(&a);
    assert_eq!(sorted(&fa.db_nodes), all, "{fa:?}");
    assert_eq!(fa.running_db_nodes, [a.as_str()], "{fa:?}");
    assert!(fa.saw_down.is_empty(), "a went first: {fa:?}");
    assert_eq!(q.fact(&b).state, State::Down);
    assert_eq!(q.fact(&c).state, State::Down);

    // force-load: a loads its own copy now.
    let (code, out, err, _) = bed.probe(&["force-load", &a]);
    assert_eq!((code, out.as_str()), (0, "t yes\n"), "{err}");
    let q = bed.query_until(&a, "a to have loaded its tables", |q| {
        q.fact(&a).state == State::Loaded
    });
    assert!(q.fact(&a).saw_down.is_empty());

    // clustered: the entrypoint's marker in a node's Mnesia directory.
    assert!(!q.fact(&a).clustered, "no marker yet: {:?}", q.fact(&a));
    let dir = |short: &str| bed.dir.path().join(format!("mnesia-{short}"));
    std::fs::write(dir("a").join(".kube-epmd-clustered"), "").expect("marker");
    let q = bed.query(&a);
    assert!(q.fact(&a).clustered, "{:?}", q.fact(&a));
    assert!(!q.fact(&b).clustered, "down: not asked");

    // schema DIR SELF: the schema on disc without starting Mnesia, SELF
    // left out; nothing for a directory without one.
    for (who, want) in [
        ("b", vec![a.clone(), c.clone()]),
        ("c", vec![a.clone(), b.clone()]),
    ] {
        let d = dir(who).display().to_string();
        let (code, out, err, _) = bed.probe(&["schema", &d, &node(who)]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            names(&out.lines().collect::<Vec<_>>()),
            want,
            "{who}: {out}"
        );
    }
    let none = bed.dir.path().join("no-schema").display().to_string();
    let (code, out, err, _) = bed.probe(&["schema", &none, &a]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
}

/// The HTTP side without Mnesia: what the sidecar gets and what the probe
/// does with each kind of answer. SELF is not running (down).
#[test]
#[cfg_attr(skip_erl, ignore = "needs erl (erlang-base) (KUBE_EPMD_TEST_SKIP)")]
fn probe_talks_to_the_sidecar_and_exits_3_when_it_fails() {
    let bed = Bed::start();
    let admin = bed.sidecar.admin();
    let me = node("x");
    let plan = [
        "plan",
        admin.as_str(),
        me.as_str(),
        "boot",
        "false",
        "0",
        "0",
        "15",
        "120",
        "300",
    ];

    // No other pods: nothing printed; the plan's nodes are SELF alone.
    let (code, out, err, _) = bed.probe(&["nodes", &admin, &me]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    bed.sidecar.set_plan_answer(200, "seed\nno other pod\n");
    let (code, out, err, _) = bed.probe(&plan);
    assert_eq!((code, out.as_str()), (0, "seed\nno other pod\n"), "{err}");
    let reqs = bed.sidecar.take_requests();
    let obs: Observation = serde_json::from_slice(&reqs.last().expect("a POST").body)
        .expect("the plan body is an Observation");
    assert_eq!(obs.phase, Phase::Boot);
    assert!(!obs.marker);
    assert_eq!(obs.nodes.len(), 1);
    assert_eq!(
        (obs.nodes[0].node.as_str(), obs.nodes[0].state),
        (me.as_str(), State::Down)
    );

    // A SELF that needs every escape: quoted, backslashed, control
    // characters, UTF-8. It comes back as given, URL-encoded in the GET.
    let odd = "q\"\\\t\u{1}é@127.0.0.1";
    bed.sidecar.take_requests();
    let q = bed.query(odd);
    assert_eq!(q.self_node, odd);
    assert_eq!(
        (q.nodes[0].node.as_str(), q.nodes[0].state),
        (odd, State::Down)
    );
    assert_eq!(
        bed.sidecar.take_requests()[0].target,
        "/cluster/nodes?self=q%22%5C%09%01%C3%A9%40127.0.0.1"
    );

    // The planner refuses: 3, its status and body on stderr, nothing on stdout.
    bed.sidecar.set_plan_answer(422, "unknown field `uptim`\n");
    let (code, out, err, _) = bed.probe(&plan);
    assert_eq!((code, out.as_str()), (3, ""), "{err}");
    assert!(
        err.contains("422") && err.contains("unknown field `uptim`"),
        "{err}"
    );

    // The node list is unavailable: 3 before anything is observed or posted.
    bed.sidecar
        .set_nodes_answer(503, "not ready: no pod list yet\n");
    bed.sidecar.take_requests();
    let (code, out, err, _) = bed.probe(&plan);
    assert_eq!((code, out.as_str()), (3, ""), "{err}");
    assert!(
        err.contains("503") && err.contains("not ready: no pod list yet"),
        "{err}"
    );
    let reqs = bed.sidecar.take_requests();
    assert_eq!(reqs.len(), 1, "no POST after a failed GET: {reqs:?}");

    // Nobody listening: 3 too.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let nobody = closed.local_addr().expect("addr").to_string();
    drop(closed);
    let (code, out, err, _) = bed.probe(&["query", &nobody, &me]);
    assert_eq!((code, out.as_str()), (3, ""), "{err}");
    assert!(err.contains("did not answer"), "{err}");
}

/// A sidecar that accepts and never answers costs the probe its 10 s HTTP
/// deadline, not the shell's patience: 3 well before the 60 s bound.
#[test]
#[cfg_attr(skip_erl, ignore = "needs erl (erlang-base) (KUBE_EPMD_TEST_SKIP)")]
fn probe_gives_up_on_a_silent_sidecar() {
    let bed = Bed::start();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    // Accepted (so no refusal), read from, never answered.
    let holder = std::thread::spawn(move || silent.accept().map(|(s, _)| s));
    let (code, out, err, took) = bed.probe(&["nodes", &addr, &node("x")]);
    assert_eq!((code, out.as_str()), (3, ""), "{err}");
    assert!(
        err.contains("did not answer") && err.contains("timeout"),
        "{err}"
    );
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(30),
        "gave up after {took:?}"
    );
    drop(holder.join());
}

/// Bad arguments: 2 and the usage, before the sidecar is asked anything.
#[test]
#[cfg_attr(skip_erl, ignore = "needs erl (erlang-base) (KUBE_EPMD_TEST_SKIP)")]
fn probe_exits_2_on_bad_arguments() {
    let bed = Bed::start();
    let admin = bed.sidecar.admin();
    let me = node("x");
    let plan = |phase: &'static str, marker: &'static str, n: &'static str| {
        vec![
            "plan",
            admin.as_str(),
            me.as_str(),
            phase,
            marker,
            n,
            "0",
            "15",
            "120",
            "300",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let cases: Vec<Vec<String>> = vec![
        vec![],
        vec!["frobnicate".into()],
        vec!["nodes".into(), admin.clone()],
        vec!["query".into(), admin.clone(), me.clone(), "extra".into()],
        vec!["nodes".into(), admin.clone(), "no-host-part".into()],
        vec!["nodes".into(), "127.0.0.1".into(), me.clone()],
        vec!["nodes".into(), "127.0.0.1:99999".into(), me.clone()],
        plan("booting", "true", "0"),
        plan("boot", "yes", "0"),
        plan("boot", "true", "-1"),
        plan("boot", "true", "1.5"),
        plan("boot", "true", ""),
        vec!["force-load".into()],
        vec!["force-load".into(), "nohost".into()],
        vec!["schema".into(), "/tmp".into()],
        vec!["schema".into(), "/tmp".into(), "nohost".into()],
    ];
    for args in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err, _) = bed.probe(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.contains("usage:"), "{args:?}: {err}");
    }
    let reqs = bed.sidecar.take_requests();
    assert!(reqs.is_empty(), "bad arguments asked the sidecar: {reqs:?}");
}
