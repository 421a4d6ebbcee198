//! Issue 21: backup and restore, and migration from an existing ejabberd,
//! both through ejabberd's own Mnesia backup, on the [`Chat`] harness.
//!
//! What ejabberd does (src/ejabberd_admin.erl, the same in 23.01 and
//! 26.07): `ejabberdctl backup FILE` is `mnesia:backup(FILE)` on the node
//! it reaches (the whole database, every table, with the schema and its
//! node names); `ejabberdctl restore FILE` is `mnesia:restore(FILE,
//! [{keep_tables, Tabs}, {default_op, skip_tables}])` with `Tabs` = acl,
//! passwd, config and the tables of the modules loaded for the first host
//! (roster, vcard, offline_msg, last_activity, privacy, private_storage,
//! motd, muc_room, sr_*, pubsub_node). `keep_tables` writes the backup's
//! records into the tables as they are now, in one transaction, on every
//! node that holds a replica (Mnesia's `where_to_commit` of the running
//! cluster, not the backup's node names): records with the same key are
//! overwritten, records only the running cluster has stay, the schema and
//! every other table (MAM archives, pubsub items, ...) are untouched.
//! The restore writes under ejabberd's own caches: a node that looked a
//! user up before (passwd and roster are disc_only_copies here, which
//! ejabberd caches in memory) answers from its cache until `ejabberdctl
//! clear_cache` (run on one node, it clears every node's).
//!
//! Shown here, both flavours:
//!   - `backup_restore`: a cluster of 3 with users, backed up on one node;
//!     every pod deleted and every volume emptied, the pods come back on
//!     new IPs as a new empty cluster (the users are gone); `restore` on
//!     one node, then `clear_cache`, puts every user (its password, a
//!     roster) on every node, the schema unchanged; they survive all pods
//!     being deleted again.
//!   - `migration`: a standalone ejabberd with its own node name
//!     (`ejabberd@localhost`, a default install's) in a namespace of its
//!     own, with users, backed up and stopped; its backup restored as it
//!     is into a running cluster of 3 (the rename is unnecessary), and a
//!     second backup renamed with `mnesia_change_nodename` first (works
//!     too); every user on every node, a user of the cluster's own kept,
//!     a user both have gets the backup's password (the record is
//!     overwritten), the old node name nowhere in the schema.

use super::*;
use crate::netns::Netns;

/// A default install's node name: what an existing ejabberd is called.
const OLD_NODE: &str = "ejabberd@localhost";

/// An existing single-node ejabberd, as a plain install runs it: the
/// flavour's own `ejabberdctl start` with its node name, its spool, its
/// config and OTP's own EPMD, in a network namespace of its own (only
/// loopback: nothing of it reaches the cluster but the backup file).
struct Standalone {
    ns: Netns,
    conf: PathBuf,
    spool: PathBuf,
    logs: PathBuf,
    home: PathBuf,
}

impl Chat {
    /// A directory of the scratch directory, owned by the ejabberd user:
    /// where the nodes write and read backups (the same path in every pod
    /// and, in the forky flavour, inside the root).
    fn backup_dir(&self) -> Result<PathBuf, String> {
        let dir = self.c.path("backup");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        set_mode(&dir, 0o755)?;
        sh(&format!(
            "chown {}:{} {}",
            self.uid,
            self.gid,
            dir.display()
        ))?;
        Ok(dir)
    }

    /// A [`Standalone`] ejabberd beside this cluster (not started), with
    /// the deploy's ejabberd.yml (same host and modules).
    fn standalone(&self) -> Result<Standalone, String> {
        let hub = &self.c.hub.ns.name;
        let name = hub
            .strip_suffix("-hub")
            .map(|p| format!("{p}-old"))
            .ok_or_else(|| format!("hub namespace {hub} does not end in -hub"))?;
        let ns = Netns::create(name)?;
        let dir = self.c.path("old");
        let old = Standalone {
            ns,
            conf: dir.join("conf"),
            spool: dir.join("database"),
            logs: dir.join("logs"),
            home: dir.join("home"),
        };
        for d in [&old.conf, &old.spool, &old.logs, &old.home] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let pem = self.c.path("server.pem");
        let yml = std::fs::read_to_string(Path::new(CONF).join("ejabberd.yml"))
            .map_err(|e| format!("ejabberd.yml: {e}"))?
            .replace("/opt/ejabberd/conf/server.pem", &pem.display().to_string());
        let write = |p: PathBuf, text: &str| {
            std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
        };
        write(old.conf.join("ejabberd.yml"), &yml)?;
        write(
            old.conf.join("ejabberdctl.cfg"),
            "EJABBERD_BYPASS_WARNINGS=true\n",
        )?;
        // ejabberdctl points ERL_INETRC here. The forky root has no
        // /etc/hosts, and `localhost` must resolve for the ctl node to
        // reach the server (the `file` lookup reads the `host` entries).
        write(
            old.conf.join("inetrc"),
            "{host, {127,0,0,1}, [\"localhost\"]}.\n{lookup, [file, native]}.\n",
        )?;
        set_mode(&dir, 0o755)?;
        sh(&format!(
            "chown -R {}:{} {}",
            self.uid,
            self.gid,
            dir.display()
        ))?;
        Ok(old)
    }

    /// `ejabberdctl ARGS` of the standalone install, as its own user.
    fn old_command(&self, old: &Standalone, args: &[&str]) -> tokio::process::Command {
        let d = |p: &Path| p.display().to_string();
        let mut argv = self.as_ejabberd_user();
        for (k, v) in [
            ("PATH", PATH.to_string()),
            ("HOME", d(&old.home)),
            ("CONFIG_DIR", d(&old.conf)),
            ("SPOOL_DIR", d(&old.spool)),
            ("LOGS_DIR", d(&old.logs)),
            ("ERLANG_NODE_ARG", OLD_NODE.to_string()),
        ] {
            argv.push(format!("{k}={v}").into());
        }
        argv.push("/usr/sbin/ejabberdctl".into());
        argv.extend(args.iter().map(OsString::from));
        let mut cmd = match &self.root {
            Some(root) => root.command(&old.ns, &argv),
            None => {
                let mut cmd = old.ns.command("setpriv");
                cmd.args(&argv[1..]);
                cmd
            }
        };
        cmd.current_dir("/").stdin(Stdio::null());
        cmd
    }

    async fn old_ctl(&self, old: &Standalone, args: &[&str]) -> Result<String, String> {
        let what = format!("{OLD_NODE}: ejabberdctl {args:?}");
        match exec(self.old_command(old, args), &what, Duration::from_secs(90)).await? {
            (0, out) => Ok(out),
            (code, out) => {
                let log =
                    std::fs::read_to_string(old.logs.join("ejabberd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                Err(format!(
                    "{what} exited {code}: {out}\nejabberd.log (newest first):\n{}",
                    tail.join("\n")
                ))
            }
        }
    }

    /// `ejabberdctl start` (it detaches), then `started` (which waits).
    async fn old_start(&self, old: &Standalone) -> Result<(), String> {
        let log = old.logs.join("ctl-start.log");
        let f = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let g = f.try_clone().map_err(|e| format!("{e}"))?;
        let mut cmd = self.old_command(old, &["start"]);
        cmd.stdout(f).stderr(g);
        let what = format!("{OLD_NODE}: ejabberdctl start");
        let out = output(cmd, &what, Duration::from_secs(30)).await?;
        check(out.status.success(), || {
            format!(
                "{what}: {}: {}",
                out.status,
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        self.old_ctl(old, &["started"]).await.map(|_| ())
    }

    /// `add_rosteritem USER localhost CONTACT localhost ...` (mod_admin_extra).
    async fn add_contact(&self, k: usize, user: &str, contact: &str) -> Result<(), String> {
        self.ctl_ok(
            k,
            &[
                "add_rosteritem",
                user,
                DOMAIN,
                contact,
                DOMAIN,
                contact,
                "Friends",
                "both",
            ],
        )
        .await
        .map(|_| ())
    }

    /// `user`'s roster lists `contact` on every pod of `ks`.
    async fn roster_everywhere(
        &self,
        ks: &[usize],
        user: &str,
        contact: &str,
    ) -> Result<(), String> {
        let jid = format!("{contact}@{DOMAIN}");
        for &k in ks {
            let out = self.ctl_ok(k, &["get_roster", user, DOMAIN]).await?;
            check(out.contains(&jid), || {
                format!("chat-{k}: {user}'s roster lacks {jid}: {out:?}")
            })?;
        }
        Ok(())
    }

    /// None of `users` exists on any pod of `ks`.
    async fn users_nowhere(&self, ks: &[usize], users: &[String]) -> Result<(), String> {
        for &k in ks {
            let out = self.ctl_ok(k, &["registered_users", DOMAIN]).await?;
            let have: Vec<&str> = out.split_whitespace().collect();
            if let Some(u) = users.iter().find(|u| have.contains(&u.as_str())) {
                return Err(format!("chat-{k}: user {u} is there: {have:?}"));
            }
        }
        Ok(())
    }

    /// `ejabberdctl check_password USER localhost PASSWORD` in pod `k`.
    async fn password_is(&self, k: usize, user: &str, password: &str) -> Result<bool, String> {
        let (code, _) = self
            .ctl(k, &["check_password", user, DOMAIN, password])
            .await?;
        Ok(code == 0)
    }

    /// `ejabberdctl restore FILE` in pod `k`, timed.
    async fn restore(&self, k: usize, file: &Path) -> Result<Duration, String> {
        let t = Instant::now();
        self.ctl_ok(k, &["restore", &file.display().to_string()])
            .await?;
        Ok(t.elapsed())
    }
}

fn file_size(p: &Path) -> Result<u64, String> {
    std::fs::metadata(p)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// Backup of a running cluster, restored into a fresh one (new volumes,
/// new pod IPs).
async fn backup_restore(flavour: Flavour) -> Result<(), String> {
    let t_all = Instant::now();
    let mut chat = Chat::new("bk", 3, &flavour).await?;
    chat.name = match flavour {
        Flavour::Host => "backup",
        Flavour::Root(_) => "backup otp29",
    };
    let dir = chat.backup_dir()?;
    chat.create(&ALL).await?;
    chat.wait_all_ready(&ALL).await?;
    chat.wait_full(&ALL, FULL_LIMIT).await?;
    // One user registered on each node, and a roster item.
    let users: Vec<String> = ALL.iter().map(|k| format!("user_on_chat{k}")).collect();
    for (k, u) in users.iter().enumerate() {
        chat.register(k, u).await?;
    }
    chat.add_contact(0, &users[0], &users[2]).await?;
    chat.users_everywhere(&ALL, &users).await?;

    // The backup, on one running node of the live cluster.
    let file = dir.join("cluster.backup");
    let t = Instant::now();
    chat.ctl_ok(1, &["backup", &file.display().to_string()])
        .await?;
    let d_backup = t.elapsed();
    let size = file_size(&file)?;
    say!(
        chat,
        "ejabberdctl backup on chat-1 of a running cluster of 3 ({} users): {d_backup:?}, {size} bytes",
        users.len()
    );

    // A fresh cluster: every pod deleted, every claim new and empty, the
    // pods recreated elsewhere (new IPs), first start again.
    chat.delete(&ALL).await?;
    for k in ALL {
        chat.empty_volume(k)?;
        let _ = std::fs::remove_file(&chat.pods[k].log);
        chat.c
            .readdress(k, &format!("{}.{}", crate::netns::SUBNET, 20 + k))?;
    }
    let t = Instant::now();
    chat.create(&ALL).await?;
    chat.wait_all_ready(&ALL).await?;
    chat.wait_full(&ALL, FULL_LIMIT).await?;
    chat.schema_is(&ALL).await?;
    chat.one_seed()?;
    chat.users_nowhere(&ALL, &users).await?;
    // A client logging in meanwhile: chat-0 looks the user up (and
    // caches that it has none).
    check(!chat.password_is(0, &users[0], "s3cret").await?, || {
        format!("{} logs in before the restore", users[0])
    })?;
    say!(
        chat,
        "all deleted, every volume new, new pod IPs: a new empty cluster of 3 in {:?}",
        t.elapsed()
    );

    // Restore on one node (not the one that made the backup), then
    // clear ejabberd's caches (every node's).
    let d_restore = chat.restore(2, &file).await?;
    let stale = !chat.password_is(0, &users[0], "s3cret").await?;
    chat.ctl_ok(2, &["clear_cache"]).await?;
    let t = Instant::now();
    chat.users_everywhere(&ALL, &users).await?;
    for k in ALL {
        for u in &users {
            check(chat.password_is(k, u, "s3cret").await?, || {
                format!("chat-{k}: {u}'s password does not check after the restore")
            })?;
        }
    }
    chat.roster_everywhere(&ALL, &users[0], &users[2]).await?;
    chat.wait_full(&ALL, FULL_LIMIT).await?;
    chat.schema_is(&ALL).await?;
    say!(
        chat,
        "ejabberdctl restore on chat-2: {d_restore:?}; every user (with its password) and \
         the roster on every node after clear_cache (checked in {:?}), every list_cluster \
         whole; before clear_cache chat-0 {} the user it had looked up",
        t.elapsed(),
        if stale {
            "still refused"
        } else {
            "already accepted"
        }
    );

    // Written to every node's disc: all pods deleted and recreated on
    // their volumes, the users are still everywhere.
    let t = Instant::now();
    chat.delete(&ALL).await?;
    chat.create(&ALL).await?;
    chat.wait_all_ready(&ALL).await?;
    chat.wait_full(&ALL, FULL_LIMIT).await?;
    chat.users_everywhere(&ALL, &users).await?;
    chat.roster_everywhere(&ALL, &users[0], &users[2]).await?;
    say!(
        chat,
        "restored users kept through all pods deleted and recreated ({:?})",
        t.elapsed()
    );
    chat.delete(&ALL).await?;
    say!(chat, "total {:?}", t_all.elapsed());
    Ok(())
}

lifecycle_test!(
    /// Issue 21: a backup of a running cluster restored into a fresh one.
    operations_backup_restore,
    "operations backup restore",
    host,
    backup_restore
);

lifecycle_test!(
    /// [`operations_backup_restore`] with forky's ejabberd on OTP 29.
    operations_otp29_backup_restore,
    "operations otp29 backup restore",
    forky,
    backup_restore
);

/// A single-node database of an existing ejabberd with another node name
/// brought into a running cluster of 3.
async fn migration(flavour: Flavour) -> Result<(), String> {
    let t_all = Instant::now();
    let mut chat = Chat::new("mg", 3, &flavour).await?;
    chat.name = match flavour {
        Flavour::Host => "migration",
        Flavour::Root(_) => "migration otp29",
    };
    let dir = chat.backup_dir()?;
    // Declared after `chat`: dropped (every process of it killed) first.
    let old = chat.standalone()?;
    // The cluster starts while the old server is used and backed up.
    chat.create(&ALL).await?;

    let t = Instant::now();
    chat.old_start(&old).await?;
    let d_start = t.elapsed();
    let first: Vec<String> = vec!["old_alice".into(), "old_bob".into()];
    for u in &first {
        chat.old_ctl(&old, &["register", u, DOMAIN, "s3cret"])
            .await?;
    }
    chat.old_ctl(
        &old,
        &[
            "add_rosteritem",
            &first[0],
            DOMAIN,
            &first[1],
            DOMAIN,
            &first[1],
            "Friends",
            "both",
        ],
    )
    .await?;
    let file1 = dir.join("old-1.backup");
    let t = Instant::now();
    chat.old_ctl(&old, &["backup", &file1.display().to_string()])
        .await?;
    let d_backup = t.elapsed();
    // A second backup with one more user, for the renamed path below.
    chat.old_ctl(&old, &["register", "old_carol", DOMAIN, "s3cret"])
        .await?;
    let file2 = dir.join("old-2.backup");
    chat.old_ctl(&old, &["backup", &file2.display().to_string()])
        .await?;
    let listed = chat.old_ctl(&old, &["list_cluster"]).await?;
    check(listed.contains(OLD_NODE), || {
        format!("the old server is not {OLD_NODE}: {listed}")
    })?;
    chat.old_ctl(&old, &["stop"]).await?;
    say!(
        chat,
        "standalone {OLD_NODE} started in {d_start:?}; backup {d_backup:?}, {} bytes",
        file_size(&file1)?
    );

    chat.wait_all_ready(&ALL).await?;
    chat.wait_full(&ALL, FULL_LIMIT).await?;
    // The cluster's own user, and one with a name the backup also has
    // (another password): restore merges by key.
    chat.register(1, "native").await?;
    chat.ctl_ok(1, &["register", &first[0], DOMAIN, "cluster-pw"])
        .await?;
    let mut users: Vec<String> = first.clone();
    users.push("native".into());

    // (a) The backup as it is, node names ejabberd@localhost.
    let d = chat.restore(0, &file1).await?;
    chat.users_everywhere(&ALL, &users).await?;
    chat.roster_everywhere(&ALL, &first[0], &first[1]).await?;
    // Mnesia has the backup's record on every node, but ejabberd caches
    // passwords (and rosters) of disc_only tables in each node's memory:
    // a node that read the user before still answers from its cache
    // until `clear_cache` (on one node: it clears every node's).
    let mut stale = Vec::new();
    for k in ALL {
        if chat.password_is(k, &first[0], "cluster-pw").await? {
            stale.push(k);
        }
    }
    chat.ctl_ok(0, &["clear_cache"]).await?;
    for k in ALL {
        check(chat.password_is(k, &first[0], "s3cret").await?, || {
            format!(
                "chat-{k}: {} lacks the backup's password after restore and clear_cache",
                first[0]
            )
        })?;
        check(!chat.password_is(k, &first[0], "cluster-pw").await?, || {
            format!("chat-{k}: {} kept the cluster's password", first[0])
        })?;
    }
    chat.wait_full(&ALL, FULL_LIMIT).await?;
    chat.schema_is(&ALL).await?;
    say!(
        chat,
        "restore of {OLD_NODE}'s backup, not renamed, on chat-0: {d:?}; its users and \
         roster on every node, the cluster's own user kept, a user in both has the backup's \
         password after clear_cache (before it, stale on chat-{stale:?}), the schema still \
         chat-0..2"
    );

    // (b) The documented rename first: works as well.
    let file2r = dir.join("old-2-renamed.backup");
    let renamed = chat
        .ctl_ok(
            0,
            &[
                "mnesia_change_nodename",
                OLD_NODE,
                &node(0),
                &file2.display().to_string(),
                &file2r.display().to_string(),
            ],
        )
        .await?;
    check(renamed.contains("Replacing nodename"), || {
        format!("mnesia_change_nodename replaced nothing: {renamed}")
    })?;
    let d = chat.restore(2, &file2r).await?;
    users.push("old_carol".into());
    chat.users_everywhere(&ALL, &users).await?;
    chat.wait_full(&ALL, FULL_LIMIT).await?;
    chat.schema_is(&ALL).await?;
    say!(
        chat,
        "mnesia_change_nodename {OLD_NODE} -> {} then restore on chat-2: {d:?}; every user \
         on every node",
        node(0)
    );
    chat.delete(&ALL).await?;
    say!(chat, "total {:?}", t_all.elapsed());
    Ok(())
}

lifecycle_test!(
    /// Issue 21: a standalone ejabberd's database into a running cluster.
    operations_migration,
    "operations migration",
    host,
    migration
);

lifecycle_test!(
    /// [`operations_migration`] with forky's ejabberd on OTP 29.
    operations_otp29_migration,
    "operations otp29 migration",
    forky,
    migration
);

/// Issue 21: a database found on a volume without the marker is never
/// deleted. With `CLUSTER_UNMARKED_DATABASE=fail` the entrypoint refuses
/// to start and names it, leaving it in place; by default it is moved
/// into `set-aside/<time>/` on the volume and ejabberd starts empty. The
/// files stand for a database put there by hand (only their names matter
/// to the entrypoint, which never reads them).
async fn unmarked_database(flavour: Flavour) -> Result<(), String> {
    let mut chat = Chat::new("um", 1, &flavour).await?;
    let spool = chat.pods[0].spool.clone();
    for f in ["schema.DAT", "passwd.DCD", "LATEST.LOG"] {
        std::fs::write(spool.join(f), format!("{f} of another server\n"))
            .map_err(|e| format!("{f}: {e}"))?;
    }
    sh(&format!(
        "chown -R {}:{} {}",
        chat.uid,
        chat.gid,
        spool.display()
    ))?;
    chat.extra_env = vec![("CLUSTER_UNMARKED_DATABASE".into(), "fail".into())];
    chat.create(&[0]).await?;
    let refused = match chat.wait_ready(0, FULL_LIMIT).await {
        Ok(_) => return Err(format!("started on an unmarked database:\n{}", chat.log(0))),
        Err(e) => e,
    };
    check(
        refused.contains("the entrypoint exited")
            && refused.contains("CLUSTER_UNMARKED_DATABASE=fail")
            && spool.join("passwd.DCD").exists()
            && chat.set_aside(0).is_empty(),
        || format!("not refused with the files in place:\n{refused}"),
    )?;
    // The container restarts with the default: set aside, started empty.
    chat.extra_env.clear();
    chat.create(&[0]).await?;
    chat.wait_ready(0, FULL_LIMIT).await?;
    let aside = chat.set_aside(0);
    check(
        aside.len() == 1
            && aside[0].1 == ["LATEST.LOG", "passwd.DCD", "schema.DAT"]
            && chat.log(0).contains("database moved to"),
        || format!("not set aside as it was: {aside:?}\n{}", chat.log(0)),
    )?;
    say!(
        chat,
        "an unmarked database: refused with CLUSTER_UNMARKED_DATABASE=fail (files in place), \
         set aside by default ({}) and ejabberd started empty",
        aside[0].0
    );
    chat.delete(&[0]).await
}

lifecycle_test!(
    /// Issue 21: an unmarked database is refused or set aside, never deleted.
    operations_unmarked_database,
    "operations unmarked database",
    host,
    unmarked_database
);
