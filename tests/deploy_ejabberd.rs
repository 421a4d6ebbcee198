//! The deploy's ejabberd side, run for real: two "pods" as network
//! namespaces joined by a veth pair, each with kube-epmd on 4369 (the
//! sidecar) and a real ejabberd (Debian's package) started by
//! deploy/base/ejabberd/cluster-entrypoint.sh with the deploy's own
//! ejabberd.yml and ejabberdctl.cfg.
//!
//! kube-epmd runs in plain mode here (the Kubernetes watch has its own
//! tests); the hosts file it would write is written by the test in its
//! format, and grows by rename when the second pod "is created" (the
//! parallel starts and every other lifecycle event are in tests/e2e,
//! lifecycle.rs, with kube-epmd in Kubernetes mode).
//!
//! Shows: chat-0 seeds, chat-1 joins it once, data replicates, the node
//! registers inside the pinned window through kube-epmd (FIREWALL_WINDOW and
//! -start_epmd false from ejabberdctl.cfg), SIGTERM stops ejabberd cleanly,
//! and a restart with the marker rejoins without a second join.
//!
//! Needs root, iproute2, erlang and the ejabberd package (.ci/run installs
//! them). Addresses exist only inside the namespaces this test creates.

#[allow(dead_code)]
#[path = "support/prereq.rs"]
mod prereq;

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/base/ejabberd/cluster-entrypoint.sh"
);
const CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/base/ejabberd");

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// The two namespaces, their processes and files; removed on drop, also
/// when an assertion fails.
struct Pods {
    names: [String; 2],
    dir: tempfile::TempDir,
    daemons: Vec<Child>,
}

impl Drop for Pods {
    fn drop(&mut self) {
        for sig in ["-TERM", "-KILL"] {
            for ns in &self.names {
                let pids = Command::new("ip")
                    .args(["netns", "pids", ns])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                for pid in pids.split_whitespace() {
                    let _ = Command::new("kill").args([sig, pid]).status();
                }
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        for d in &mut self.daemons {
            let _ = d.wait();
        }
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Pods {
    /// `sh -c` as user ejabberd inside pod `i`'s network namespace.
    fn as_ejabberd(&self, i: usize) -> Command {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.names[i],
            "su",
            "ejabberd",
            "-s",
            "/bin/sh",
            "-c",
        ]);
        c
    }

    fn pod_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("chat-{i}"))
    }

    fn hosts(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    /// Replace the hosts file by rename, as kube-epmd does.
    fn write_hosts(&self, pods: usize) {
        let mut text = String::from(
            "# Written by kube-epmd from the Kubernetes API; replaced as pods change.\n\
             127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        );
        for i in 0..pods {
            text += &format!(
                "10.78.0.{}\tchat-{i} chat-{i}.xmpp-internal-svc chat-{i}.xmpp-internal-svc.xmpp\n",
                10 + i
            );
        }
        let tmp = self.dir.path().join(".hosts.tmp");
        fs::write(&tmp, text).expect("write hosts");
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::rename(&tmp, self.hosts()).expect("rename hosts");
    }

    /// The ejabberd container of pod `i`: the cluster script as the
    /// ejabberd user, with the pod's environment. Returns the script's pid.
    fn start_ejabberd(&mut self, i: usize) -> u32 {
        let d = self.pod_dir(i);
        let pid_file = d.join("tmp/pid");
        let _ = fs::remove_file(&pid_file);
        let env = [
            format!("POD_NAME=chat-{i}"),
            format!("POD_IP=10.78.0.{}", 10 + i),
            format!("ERLANG_NODE_ARG=ejabberd@chat-{i}.xmpp-internal-svc"),
            format!("CONFIG_DIR={}", d.join("conf").display()),
            format!("SPOOL_DIR={}", d.join("spool").display()),
            format!("LOGS_DIR={}", d.join("logs").display()),
            format!("KUBE_EPMD_HOSTS_FILE={}", self.hosts().display()),
            format!("CLUSTER_SPOOL_DIR={}", d.join("spool").display()),
            format!("CLUSTER_READY_FLAG={}", d.join("tmp/ready").display()),
            "CLUSTER_JOIN_TIMEOUT=120".to_string(),
        ]
        .join(" ");
        let shell = format!(
            "cd {dir} && echo $$ > {pid} && exec env {env} sh {SCRIPT}",
            dir = d.display(),
            pid = pid_file.display()
        );
        let log = fs::File::create(d.join("entrypoint.log")).expect("log");
        let child = self
            .as_ejabberd(i)
            .arg(shell)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start ejabberd");
        self.daemons.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster script did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_ready(&self, i: usize, limit: Duration) -> Duration {
        let start = Instant::now();
        while !self.pod_dir(i).join("tmp/ready").exists() {
            assert!(
                start.elapsed() < limit,
                "chat-{i} not clustered after {limit:?}:\n{}",
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        start.elapsed()
    }

    fn log(&self, i: usize) -> String {
        fs::read_to_string(self.pod_dir(i).join("entrypoint.log")).unwrap_or_default()
    }

    /// `ejabberdctl ARGS` in pod `i`, as `kubectl exec` would run it.
    fn ctl(&self, i: usize, args: &str) -> String {
        let d = self.pod_dir(i);
        let shell = format!(
            "env ERLANG_NODE_ARG=ejabberd@chat-{i}.xmpp-internal-svc CONFIG_DIR={c} SPOOL_DIR={s} LOGS_DIR={l} ejabberdctl {args}",
            c = d.join("conf").display(),
            s = d.join("spool").display(),
            l = d.join("logs").display()
        );
        run(self.as_ejabberd(i).arg(shell))
    }

    /// `kube-epmd -names` inside pod `i`.
    fn epmd_names(&self, i: usize) -> String {
        run(Command::new("ip").args([
            "netns",
            "exec",
            &self.names[i],
            env!("CARGO_BIN_EXE_kube-epmd"),
            "-names",
        ]))
    }
}

fn setup() -> Pods {
    let tag = std::process::id() % 100_000;
    let names = [format!("kdeploy-{tag}-0"), format!("kdeploy-{tag}-1")];
    let dir = tempfile::Builder::new()
        .prefix("kdeploy")
        .tempdir()
        .expect("tempdir");
    let mut pods = Pods {
        names,
        dir,
        daemons: Vec::new(),
    };
    let (a, b) = (&pods.names[0].clone(), &pods.names[1].clone());
    let (va, vb) = (format!("kd{tag}a"), format!("kd{tag}b"));
    ip(&["netns", "add", a]);
    ip(&["netns", "add", b]);
    ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
    ip(&["link", "set", &va, "netns", a]);
    ip(&["link", "set", &vb, "netns", b]);
    for (ns, dev, addr) in [(a, &va, "10.78.0.10/24"), (b, &vb, "10.78.0.11/24")] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }

    let root = pods.dir.path().to_path_buf();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod");
    let pem = root.join("server.pem");
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-batch", "-nodes", "-newkey", "rsa:2048", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&pem)
        .arg("-out")
        .arg(&pem)
        .stderr(Stdio::null()));
    let yml = fs::read_to_string(Path::new(CONF).join("ejabberd.yml"))
        .expect("ejabberd.yml")
        .replace("/opt/ejabberd/conf/server.pem", &pem.display().to_string());
    let cfg = fs::read_to_string(Path::new(CONF).join("ejabberdctl.cfg")).expect("cfg");
    for i in 0..2 {
        let d = pods.pod_dir(i);
        for sub in ["conf", "spool", "logs", "tmp"] {
            fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        fs::write(d.join("conf/ejabberd.yml"), &yml).expect("yml");
        fs::write(d.join("conf/ejabberdctl.cfg"), &cfg).expect("cfg");
        // What kube-epmd writes into its output directory.
        fs::write(
            d.join("conf/inetrc"),
            format!(
                "{{hosts_file, \"{}\"}}.\n{{lookup, [file, native]}}.\n",
                pods.hosts().display()
            ),
        )
        .expect("inetrc");
    }
    pods.write_hosts(1);
    let (uid, gid) = ejabberd_ids();
    run(Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(&root));
    chown(&root, Some(uid), Some(gid)).expect("chown");

    for ns in [a, b] {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_kube-epmd")])
            .args(["--dist-port-range", "4200-4210"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kube-epmd");
        pods.daemons.push(child);
    }
    pods
}

fn ejabberd_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        run(Command::new("id").args([flag, "ejabberd"]))
            .trim()
            .parse()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

#[test]
#[cfg_attr(skip_netns, ignore = "needs root and ip netns (KUBE_EPMD_TEST_SKIP)")]
#[cfg_attr(
    skip_ejabberd,
    ignore = "needs Debian's ejabberd (KUBE_EPMD_TEST_SKIP)"
)]
fn deploy_files_form_an_ejabberd_cluster_through_kube_epmd() {
    prereq::netns();
    prereq::ejabberd();
    let mut pods = setup();

    let _ = pods.start_ejabberd(0);
    let t0 = pods.wait_ready(0, Duration::from_secs(120));
    assert!(
        pods.log(0).contains("seeds a new cluster"),
        "{}",
        pods.log(0)
    );
    eprintln!("chat-0 seeded in {t0:?}");

    // The StatefulSet creates chat-1 now: kube-epmd lists it.
    pods.write_hosts(2);
    let _ = pods.start_ejabberd(1);
    let t1 = pods.wait_ready(1, Duration::from_secs(180));
    let log1 = pods.log(1);
    assert!(
        log1.contains("joined the cluster through ejabberd@chat-0.xmpp-internal-svc"),
        "{log1}"
    );
    eprintln!("chat-1 joined in {t1:?}");

    for i in 0..2 {
        let members = pods.ctl(i, "list_cluster");
        for n in 0..2 {
            assert!(
                members.contains(&format!("ejabberd@chat-{n}.xmpp-internal-svc")),
                "chat-{i} list_cluster: {members}"
            );
        }
    }
    pods.ctl(0, "register alice localhost s3cret");
    assert!(pods.ctl(1, "registered_users localhost").contains("alice"));

    // Registered through kube-epmd, inside the window ejabberdctl.cfg sets.
    let names = pods.epmd_names(1);
    let port: u16 = names
        .lines()
        .find_map(|l| l.strip_prefix("name ejabberd at port "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("ejabberd is not registered with kube-epmd: {names}"));
    assert!((4200..=4210).contains(&port), "dist port {port}");

    // SIGTERM (what tini forwards on pod deletion) stops ejabberd; a restart
    // finds the marker and rejoins through Mnesia, without join_cluster.
    let pid = fs::read_to_string(pods.pod_dir(1).join("tmp/pid")).expect("pid");
    run(Command::new("kill").args(["-TERM", pid.trim()]));
    let stop = Instant::now();
    while Path::new(&format!("/proc/{}", pid.trim())).exists() {
        assert!(
            stop.elapsed() < Duration::from_secs(60),
            "chat-1 did not stop"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        pods.epmd_names(1)
            .lines()
            .all(|l| !l.contains("name ejabberd"))
    );
    let _ = fs::remove_file(pods.pod_dir(1).join("tmp/ready"));
    let _ = pods.start_ejabberd(1);
    pods.wait_ready(1, Duration::from_secs(120));
    let log1 = pods.log(1);
    assert!(log1.contains("clustered before"), "{log1}");
    assert!(!log1.contains("joining"), "{log1}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let members = pods.ctl(0, "list_cluster");
        if members.contains("ejabberd@chat-1.xmpp-internal-svc") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chat-1 did not come back: {members}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(pods.ctl(1, "registered_users localhost").contains("alice"));
}
