//! Issue 24: network partitions, with the real entrypoint and planner,
//! ejabberd in netns pods. A pod is cut off by blackhole routes in its own
//! namespace (its packets to the others are dropped, and with them its
//! answers to theirs: TCP and distribution fail both ways, as when a NIC or
//! a switch port fails); frozen with SIGSTOP on every process of the pod.
//!
//! net_ticktime is 10 s here (ejabberd.yml's `net_ticktime`; deploy/ keeps
//! ejabberd's default, 60 s): Mnesia on each
//! side sees the other go down after 7.5-12.5 s instead of 45-75 s. Nothing
//! tested depends on the value: the pause comes from the probe (a pod that
//! does not answer), not from Mnesia's nodedown, and the heal rules read
//! `running_db_nodes` after the fact. CLUSTER_CHECK_INTERVAL is 2 s (10 s
//! in deploy/): the figures below scale with it.
//!
//! Scenarios (each ends with every list_cluster complete and the same
//! users everywhere):
//! - (a) `partition_cut_off_from_peers[_otp29]`: chat-2 cut off from
//!   chat-0 and chat-1, not from the API server, over TLS;
//! - (b) `partition_cut_off_from_everything`: the same, the API server
//!   unreachable too, plain TCP;
//! - (c) `partition_two_nodes_autoheal`: 2 pods split in half, autoheal,
//!   writes on both sides, over TLS;
//! - (d) `partition_frozen_pod`: chat-2 frozen past net_ticktime, then
//!   thawed, over TLS.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{Chat, DOMAIN, FULL_LIMIT, Flavour, node};
use crate::{check, report, run};

const TICKTIME: u32 = 10;

/// The cluster of `n` pods under test, started and whole; over TLS when
/// `tls` (deploy/'s default), with its CA directory kept alive beside it.
async fn whole(
    label: &str,
    n: usize,
    flavour: &Flavour,
    tls: bool,
    handling: &str,
) -> Result<(Chat, Option<tempfile::TempDir>), String> {
    let scratch = if tls {
        Some(
            tempfile::Builder::new()
                .prefix("kee2e-partition-ca-")
                .tempdir()
                .map_err(|e| format!("tempdir: {e}"))?,
        )
    } else {
        None
    };
    let ca: Option<PathBuf> = match &scratch {
        Some(d) => Some(super::tls::cluster_ca(d.path())?),
        None => None,
    };
    let mut chat = Chat::with_dist(label, n, flavour, ca).await?;
    chat.extra_env = vec![
        ("CLUSTER_PARTITION_HANDLING".into(), handling.into()),
        ("CLUSTER_CHECK_INTERVAL".into(), "2".into()),
    ];
    // ejabberd sets the VM's net_ticktime from its own option (default 60
    // s) when it starts; the hidden nodes of the entrypoint and ejabberdctl
    // get it from ejabberdctl.cfg.
    chat.ctl_cfg_line(&format!(
        "ERL_OPTIONS=\"$ERL_OPTIONS -kernel net_ticktime {TICKTIME}\""
    ))?;
    for ct in &chat.pods {
        let yml = ct.conf.join("ejabberd.yml");
        let mut text =
            std::fs::read_to_string(&yml).map_err(|e| format!("{}: {e}", yml.display()))?;
        text.push_str(&format!("\nnet_ticktime: {TICKTIME} s\n"));
        std::fs::write(&yml, text).map_err(|e| format!("{}: {e}", yml.display()))?;
    }
    let all: Vec<usize> = (0..n).collect();
    chat.create(&all).await?;
    chat.wait_all_ready(&all).await?;
    chat.wait_full(&all, FULL_LIMIT).await?;
    Ok((chat, scratch))
}

impl Chat {
    /// Cut pod `k` off from pods `from` (and from the API server when
    /// `api`): blackhole routes in its namespace. Returns what to heal.
    fn cut(&self, k: usize, from: &[usize], api: bool) -> Result<Vec<String>, String> {
        let mut ips: Vec<String> = from.iter().map(|&j| self.c.pods[j].ip.clone()).collect();
        if api {
            ips.push(self.c.hub.ip());
        }
        for ip in &ips {
            self.c.pods[k]
                .ns
                .ip(&["route", "add", "blackhole", &format!("{ip}/32")])?;
        }
        Ok(ips)
    }

    fn heal(&self, k: usize, ips: &[String]) -> Result<(), String> {
        for ip in ips {
            self.c.pods[k]
                .ns
                .ip(&["route", "del", "blackhole", &format!("{ip}/32")])?;
        }
        Ok(())
    }

    /// Wait until pod `k`'s entrypoint log, past byte `from`, holds
    /// `needle`; how long that took.
    async fn wait_log(
        &self,
        k: usize,
        from: usize,
        needle: &str,
        limit: Duration,
    ) -> Result<Duration, String> {
        let since = || self.log(k).get(from..).unwrap_or_default().to_string();
        self.c
            .wait(&format!("{needle:?} in chat-{k}'s log"), limit, |_| {
                since().contains(needle)
            })
            .await
            .map_err(|e| format!("{e}:\n{}", since()))
    }

    /// Wait until `list_cluster` on pod `k` is exactly `nodes`.
    async fn wait_running(
        &self,
        k: usize,
        nodes: &[usize],
        limit: Duration,
    ) -> Result<Duration, String> {
        let t0 = Instant::now();
        let mut want: Vec<String> = nodes.iter().map(|&j| node(j)).collect();
        want.sort();
        loop {
            let have = self.list_cluster(k).await;
            if have.as_ref().is_ok_and(|h| *h == want) {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > limit {
                return Err(format!(
                    "chat-{k}: list_cluster is {have:?} after {limit:?}, want {want:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The users pod `k` has.
    async fn users(&self, k: usize) -> Result<Vec<String>, String> {
        let out = self.ctl_ok(k, &["registered_users", DOMAIN]).await?;
        Ok(out.split_whitespace().map(str::to_string).collect())
    }

    /// Wait until the sidecar of pod `k` shows `series` at `want` (gauges
    /// change when the entrypoint next asks for a plan).
    async fn wait_metric(
        &self,
        k: usize,
        series: &str,
        want: f64,
        limit: Duration,
    ) -> Result<Duration, String> {
        self.c
            .wait(&format!("chat-{k}: {series} {want}"), limit, |_| {
                self.metric(k, series).is_ok_and(|v| v == want)
            })
            .await
            .map_err(|e| format!("{e} (now {:?})", self.metric(k, series)))
    }

    /// One sample of the sidecar's metric `name` (full series text) in pod
    /// `k`, as a number.
    fn metric(&self, k: usize, series: &str) -> Result<f64, String> {
        let (code, body) = self.c.admin_get(k, "/metrics")?;
        if code != 200 {
            return Err(format!("chat-{k}: /metrics answered {code}"));
        }
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .ok_or_else(|| format!("chat-{k}: no {series} in /metrics"))
    }
}

fn users_of(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// (a) and (b): chat-2 cut off (from everything when `api`), writes on
/// both sides, healed.
async fn cut_off_minority(flavour: Flavour, api: bool, tls: bool) -> Result<(), String> {
    let label = if api { "pb" } else { "pa" };
    let (chat, _ca) = whole(label, 3, &flavour, tls, "pause_minority").await?;
    let all = [0, 1, 2];
    chat.register(0, "before_cut").await?;
    let seen = chat.log(2).len();
    let t_cut = Instant::now();
    let routes = chat.cut(2, &[0, 1], api)?;
    // A client on chat-2 right after the cut, the pause racing it, and
    // Mnesia on the majority seeing chat-2 go (net_ticktime): each timed
    // from the cut.
    let (attempt, paused, nodedown) = tokio::join!(
        chat.ctl(2, &["register", "minority_write", DOMAIN, "s3cret"]),
        chat.wait_log(2, seen, "paused: ejabberd stops", Duration::from_secs(60)),
        chat.wait_running(0, &[0, 1], Duration::from_secs(90))
    );
    let (paused, nodedown) = (paused?, nodedown?);
    let minority_acked = matches!(attempt, Ok((0, _)));
    chat.register(0, "on_majority").await?;
    // chat-2 serves nothing: its ejabberd is stopped, and stays so.
    let (code, _) = chat.ctl(2, &["registered_users", DOMAIN]).await?;
    check(code != 0, || {
        "chat-2 answers ejabberdctl while paused".into()
    })?;
    let gauge = Duration::from_secs(60);
    if !api {
        chat.wait_metric(2, "kube_epmd_cluster_paused", 1.0, gauge)
            .await?;
    }
    chat.wait_metric(0, "kube_epmd_cluster_partitioned", 1.0, gauge)
        .await?;
    check(chat.metric(0, "kube_epmd_cluster_paused")? == 0.0, || {
        "chat-0 (majority) paused".into()
    })?;
    let cut_for = t_cut.elapsed();
    let t_heal = Instant::now();
    chat.heal(2, &routes)?;
    chat.wait_log(2, seen, "back in the cluster after the pause", FULL_LIMIT)
        .await?;
    let back = t_heal.elapsed();
    chat.wait_full(&all, FULL_LIMIT).await?;
    let whole_after = t_heal.elapsed();
    let mut want = users_of(&["before_cut", "on_majority"]);
    if minority_acked {
        // Acknowledged on the minority: it must have survived.
        want.push("minority_write".into());
    }
    chat.users_everywhere(&all, &want).await?;
    let present = chat.users(0).await?.contains(&"minority_write".to_string());
    chat.wait_metric(0, "kube_epmd_cluster_partitioned", 0.0, gauge)
        .await?;
    say!(
        chat,
        "chat-2 cut off from {} for {cut_for:?}: paused {paused:?} after the cut, the \
         majority running without it {nodedown:?} after the cut; healed: chat-2 back \
         {back:?} after, every list_cluster whole {whole_after:?} after; chat-2 served nothing \
         for {:?}; a write on chat-2 right after the cut was {} ({})",
        if api {
            "everything"
        } else {
            "its peers (not the API)"
        },
        cut_for.saturating_sub(paused) + back,
        if minority_acked {
            "ACKNOWLEDGED"
        } else {
            "refused"
        },
        if present {
            "present after the heal"
        } else {
            "absent after the heal"
        }
    );
    Ok(())
}

async fn cut_off_from_peers(flavour: Flavour) -> Result<(), String> {
    cut_off_minority(flavour, false, true).await
}

async fn cut_off_from_everything(flavour: Flavour) -> Result<(), String> {
    cut_off_minority(flavour, true, false).await
}

/// (c) Two pods split in half under autoheal: both keep serving and take a
/// write each; after the heal chat-1 (the tie goes to the lowest ordinal)
/// restarts and copies chat-0's tables; its write is discarded, logged
/// with the table, and counted.
async fn two_nodes_autoheal(flavour: Flavour) -> Result<(), String> {
    let (chat, _ca) = whole("pc", 2, &flavour, true, "autoheal").await?;
    let both = [0, 1];
    chat.register(0, "before_cut").await?;
    let seen = chat.log(1).len();
    let t_cut = Instant::now();
    let routes = chat.cut(1, &[0], false)?;
    chat.wait_running(0, &[0], Duration::from_secs(60)).await?;
    chat.wait_running(1, &[1], Duration::from_secs(60)).await?;
    let split = t_cut.elapsed();
    chat.register(0, "on_chat0").await?;
    chat.register(1, "on_chat1").await?;
    let t_heal = Instant::now();
    chat.heal(1, &routes)?;
    let rejoin = chat
        .wait_log(1, seen, "rejoin: discarding", FULL_LIMIT)
        .await?;
    chat.wait_full(&both, FULL_LIMIT).await?;
    let whole_after = t_heal.elapsed();
    chat.users_everywhere(&both, &users_of(&["before_cut", "on_chat0"]))
        .await?;
    for k in both {
        let have = chat.users(k).await?;
        check(!have.contains(&"on_chat1".to_string()), || {
            format!("chat-{k} still has the losing side's write: {have:?}")
        })?;
    }
    let log = chat.log(1);
    let line = log
        .get(seen..)
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("rejoin: discarding"))
        .unwrap_or_default()
        .to_string();
    check(line.contains("passwd"), || {
        format!("the rejoin log line names no passwd table: {line}")
    })?;
    let counted = chat.metric(1, "kube_epmd_cluster_plans_total{action=\"rejoin\"}")?;
    check(counted >= 1.0, || "no rejoin counted on chat-1".into())?;
    say!(
        chat,
        "2 pods split in half (autoheal): both sides alone after {split:?}, a write on each; \
         healed: chat-1 rejoined {rejoin:?} after, every list_cluster whole {whole_after:?} \
         after; chat-1's write discarded: {line}"
    );
    Ok(())
}

/// (d) chat-2 frozen (every process of the pod) past net_ticktime while
/// the majority writes, then thawed: it finds itself apart from the others
/// and rejoins them.
async fn frozen_pod(flavour: Flavour) -> Result<(), String> {
    let (chat, _ca) = whole("pd", 3, &flavour, true, "pause_minority").await?;
    let all = [0, 1, 2];
    chat.register(0, "before_freeze").await?;
    let seen = chat.log(2).len();
    let t_freeze = Instant::now();
    chat.c.pods[2].ns.freeze_all();
    let nodedown = chat.wait_running(0, &[0, 1], Duration::from_secs(60)).await;
    if nodedown.is_err() {
        chat.c.pods[2].ns.thaw_all();
    }
    let nodedown = nodedown?;
    chat.register(0, "while_frozen").await?;
    let frozen_for = t_freeze.elapsed();
    let t_thaw = Instant::now();
    chat.c.pods[2].ns.thaw_all();
    chat.wait_full(&all, FULL_LIMIT).await?;
    let whole_after = t_thaw.elapsed();
    chat.users_everywhere(&all, &users_of(&["before_freeze", "while_frozen"]))
        .await?;
    let since = chat.log(2).get(seen..).unwrap_or_default().to_string();
    say!(
        chat,
        "chat-2 frozen for {frozen_for:?} (the majority's nodedown {nodedown:?} after the \
         freeze): thawed, every list_cluster whole {whole_after:?} after; chat-2 {}",
        if since.contains("rejoin: discarding") {
            "rejoined (restarted, copied from the majority)"
        } else {
            "was taken back without a restart"
        }
    );
    Ok(())
}

lifecycle_test!(
    /// (a) chat-2 cut off from its peers, not from the API server, over TLS.
    partition_cut_off_from_peers,
    "partition cut off from peers",
    host,
    cut_off_from_peers
);

lifecycle_test!(
    /// (a) with forky's ejabberd 26.07 on OTP 29.
    partition_otp29_cut_off_from_peers,
    "partition otp29 cut off from peers",
    forky,
    cut_off_from_peers
);

lifecycle_test!(
    /// (b) chat-2 cut off from everything, the API server too; plain TCP.
    partition_cut_off_from_everything,
    "partition cut off from everything",
    host,
    cut_off_from_everything
);

lifecycle_test!(
    /// (c) a 2-node cluster split in half, autoheal, over TLS.
    partition_two_nodes_autoheal,
    "partition two nodes autoheal",
    host,
    two_nodes_autoheal
);

lifecycle_test!(
    /// (d) chat-2 frozen past net_ticktime, then thawed, over TLS.
    partition_frozen_pod,
    "partition frozen pod",
    host,
    frozen_pod
);
