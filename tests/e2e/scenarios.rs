//! Scenarios 1 and 3-8 with plain `erl` nodes (scenario 2, real ejabberd,
//! is in ejabberd.rs).

use std::time::{Duration, Instant};

use crate::cluster::{K8S_NS, SUBDOMAIN, pod_ip, pod_name};
use crate::erlang::{ErlNode, Naming};
use crate::mesh::{Mesh, erl_ip};
use crate::netns::SUBNET;
use crate::{check, report, run};

const MESH_LIMIT: Duration = Duration::from_secs(60);

async fn full_mesh(naming: Naming, tag: &str) -> Result<(), String> {
    let mut mesh = Mesh::boot(tag, 3, naming, |_| true).await?;
    // Each pod's hosts file maps every peer under every form.
    for k in 0..3 {
        for peer in 0..3 {
            let name = pod_name(peer);
            for form in [
                name.clone(),
                format!("{name}.{SUBDOMAIN}"),
                format!("{name}.{SUBDOMAIN}.{K8S_NS}.svc.cluster.local"),
            ] {
                check(mesh.cluster.resolves(k, &form, &pod_ip(peer)), || {
                    format!(
                        "pod {k}'s hosts file lacks {form} -> {}:\n{}",
                        pod_ip(peer),
                        mesh.cluster.pods[k].hosts()
                    )
                })?;
            }
        }
    }
    let d = mesh.full_mesh(MESH_LIMIT).await?;
    report!("{tag}: full mesh of 3 ({naming:?} names, ping + rpc:call every pair) in {d:?}");
    // The sidecar pins the distribution range: a node listening outside
    // 4200-4210 is refused registration and cannot come up.
    let p = &mesh.cluster.pods[0];
    let host = mesh
        .name(0)
        .split_once('@')
        .map(|(_, h)| h.to_string())
        .unwrap();
    let stray = ErlNode::start_args(
        &p.ns,
        &format!("stray@{host}"),
        naming,
        &p.inetrc(),
        &mesh.ebin,
        (4300, 4300),
        &[],
    )
    .await;
    let why = match stray {
        Ok(_) => {
            return Err(
                "a node listening on 4300 registered with kube-epmd (range 4200-4210)".into(),
            );
        }
        Err(e) => e,
    };
    // OTP reports a refused ALIVE2 as "name ... seems to be in use".
    check(why.contains("seems to be in use"), || {
        format!("node on 4300 failed for another reason: {why}")
    })?;
    check(mesh.cluster.registered(0, "stray")?.is_none(), || {
        "kube-epmd lists a node outside 4200-4210".into()
    })?;
    report!("{tag}: node listening on 4300 refused registration by kube-epmd");
    // Control: the same name inside the range comes up.
    let mut ok = ErlNode::start(
        &p.ns,
        &format!("stray@{host}"),
        naming,
        &p.inetrc(),
        &mesh.ebin,
    )
    .await
    .map_err(|e| format!("control node inside the range: {e}"))?;
    let port = mesh.cluster.registered(0, "stray")?;
    ok.stop().await;
    check(port.is_some_and(|p| (4200..=4210).contains(&p)), || {
        format!("control node inside the range registered at {port:?}")
    })?;
    Ok(())
}

/// PORT_PLEASE for "ejabberd" asked by node `from` of pod `to`'s EPMD,
/// as the text of erl_epmd's answer (`{port,P,V}`, `noport`, `{error,_}`).
async fn port_please(mesh: &mut Mesh, from: usize, to: usize) -> Result<String, String> {
    let ip = pod_ip(to).replace('.', ",");
    mesh.node(from)?
        .eval(
            &format!("erl_epmd:port_please(\"ejabberd\", {{{ip}}}, 5000)"),
            Duration::from_secs(10),
        )
        .await
}

/// Scenario 1: three `ejabberd@chat-K.xmpp-internal-svc` nodes mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_netns, ignore = "needs root and ip netns (KUBE_EPMD_TEST_SKIP)")]
async fn s1_full_mesh_long_names() {
    run("s1 full mesh, long names", full_mesh(Naming::Long, "s1l")).await;
}

/// Scenario 1 again with the seed's short names `ejabberd@chat-K`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_netns, ignore = "needs root and ip netns (KUBE_EPMD_TEST_SKIP)")]
async fn s1_full_mesh_short_names() {
    run("s1 full mesh, short names", full_mesh(Naming::Short, "s1s")).await;
}

/// Scenario 3: a published but not Ready pod is resolvable and joinable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_netns, ignore = "needs root and ip netns (KUBE_EPMD_TEST_SKIP)")]
async fn s3_not_ready_pod_joins() {
    run("s3 not-Ready pod resolvable and joinable", async {
        let mut mesh = Mesh::boot("s3", 3, Naming::Long, |k| k != 2).await?;
        let name = format!("{}.{SUBDOMAIN}", pod_name(2));
        for k in 0..2 {
            check(mesh.cluster.resolves(k, &name, &pod_ip(2)), || {
                format!("pod {k} cannot resolve not-Ready {name}")
            })?;
            let got = mesh.getaddr(k, &name).await?;
            check(got == erl_ip(&pod_ip(2)), || {
                format!("{} resolves {name} to {got}", mesh.name(k))
            })?;
            let (code, peers) = mesh.cluster.admin_get(k, "/peers")?;
            check(code == 200 && peers.contains("chat-2"), || {
                format!("pod {k} /peers ({code}) lacks chat-2: {peers}")
            })?;
        }
        let d = mesh.full_mesh(MESH_LIMIT).await?;
        report!("s3: mesh with not-Ready chat-2 formed in {d:?}");
        // Becoming Ready changes nothing for resolution.
        mesh.cluster.publish(2, true);
        tokio::time::sleep(Duration::from_millis(500)).await;
        check(mesh.cluster.resolves(0, &name, &pod_ip(2)), || {
            "chat-2 vanished when it became Ready".into()
        })?;
        Ok(())
    })
    .await;
}

/// Scenario 4: kube-epmd killed and restarted under a running node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_netns, ignore = "needs root and ip netns (KUBE_EPMD_TEST_SKIP)")]
async fn s4_sidecar_restart() {
    run("s4 kube-epmd killed and restarted", async {
        let mut mesh = Mesh::boot("s4", 3, Naming::Short, |_| true).await?;
        mesh.full_mesh(MESH_LIMIT).await?;
        let creation = mesh.node(1)?.creation;
        let port = mesh.cluster.registered(1, "ejabberd")?;

        let t_kill = Instant::now();
        mesh.cluster.kill_sidecar(1).await;
        check(mesh.cluster.names(1).is_err(), || {
            "pod 1's EPMD still answers after kill".into()
        })?;
        // Existing connections do not need EPMD: they carry on.
        let peer1 = mesh.name(1);
        let peer0 = mesh.name(0);
        mesh.node(0)?.rpc_node(&peer1).await?;
        mesh.node(1)?.rpc_node(&peer0).await?;
        // A new connection needs PORT_PLEASE from pod 1's EPMD: with the
        // sidecar down it fails (shows the test depends on it). Asked
        // directly, so no connection is torn down to show it (OTP's global
        // would then drop others to prevent overlapping partitions).
        let pp = port_please(&mut mesh, 2, 1).await?;
        check(!pp.starts_with("{port,"), || {
            format!("PORT_PLEASE to pod 1 answered {pp} with its EPMD down")
        })?;
        // Stay down a while: more than one 2 s re-registration attempt.
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(t_kill.elapsed())).await;

        let t_restart = Instant::now();
        let down_for = t_restart - t_kill;
        let ready_in = mesh.cluster.start_sidecar(1).await?;
        mesh.cluster
            .wait(
                "node 1 re-registered with the new kube-epmd",
                Duration::from_secs(30),
                |c| c.registered(1, "ejabberd").ok().flatten().is_some(),
            )
            .await?;
        let after_restart = t_restart.elapsed();
        report!(
            "s4: sidecar down {down_for:?}, restarted and ready in {ready_in:?}; node \
             re-registered by itself {after_restart:?} after the restart"
        );
        check(after_restart < Duration::from_secs(15), || {
            format!("re-registration took {after_restart:?}")
        })?;
        let port2 = mesh.cluster.registered(1, "ejabberd")?;
        check(port2 == port, || {
            format!("re-registered on port {port2:?}, was {port:?}")
        })?;
        let c2: u64 = mesh
            .node(1)?
            .eval("erlang:system_info(creation)", Duration::from_secs(5))
            .await?
            .parse()
            .map_err(|e| format!("creation: {e}"))?;
        check(c2 == creation, || {
            format!("node creation changed {creation} -> {c2}")
        })?;
        // The 0<->1 connection lived through the outage.
        for (k, other) in [(0, &peer1), (1, &peer0)] {
            let ev = mesh.node(k)?.events().await?;
            check(!ev.contains(&format!("{{down,'{other}'}}")), || {
                format!("{} lost its connection to {other}: {ev}", mesh.name(k))
            })?;
        }
        // New connections work again.
        let d = mesh
            .node(2)?
            .ping_until(&peer1, Duration::from_secs(20))
            .await?;
        report!("s4: new connection to the node behind the restarted sidecar in {d:?}");
        mesh.full_mesh(MESH_LIMIT).await?;
        Ok(())
    })
    .await;
}

/// Scenario 5: a node restarted gets dropped at once and comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_netns, ignore = "needs root and ip netns (KUBE_EPMD_TEST_SKIP)")]
async fn s5_node_restart() {
    run("s5 node restarted", async {
        let mut mesh = Mesh::boot("s5", 3, Naming::Short, |_| true).await?;
        mesh.full_mesh(MESH_LIMIT).await?;
        let before = mesh.node(1)?.creation;
        let t0 = Instant::now();
        mesh.node(1)?.kill().await;
        mesh.cluster
            .wait(
                "pod 1's kube-epmd dropped the dead node",
                Duration::from_secs(10),
                |c| c.registered(1, "ejabberd").is_ok_and(|p| p.is_none()),
            )
            .await?;
        report!(
            "s5: node SIGKILLed; name dropped by kube-epmd {:?} after the kill",
            t0.elapsed()
        );
        mesh.nodes[1] = None;
        let t1 = Instant::now();
        let after = mesh.start_node(1).await?.creation;
        report!(
            "s5: node restarted and registered in {:?}; creation {before} -> {after}",
            t1.elapsed()
        );
        check(after != before, || {
            format!("restarted node kept creation {before}")
        })?;
        let d = mesh.full_mesh(MESH_LIMIT).await?;
        report!("s5: mesh back in {d:?}");
        Ok(())
    })
    .await;
}

/// Scenario 6: a pod re-created with a new IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_netns, ignore = "needs root and ip netns (KUBE_EPMD_TEST_SKIP)")]
async fn s6_pod_ip_change() {
    run("s6 pod IP change", async {
        let mut mesh = Mesh::boot("s6", 3, Naming::Long, |_| true).await?;
        mesh.full_mesh(MESH_LIMIT).await?;
        let host = format!("{}.{SUBDOMAIN}", pod_name(2));
        let old_ip = pod_ip(2);
        // The pod goes away: node and sidecar die, the API deletes it.
        mesh.node(2)?.kill().await;
        mesh.nodes[2] = None;
        mesh.cluster.kill_sidecar(2).await;
        let t_del = Instant::now();
        mesh.cluster.api.delete_pod(K8S_NS, &pod_name(2));
        mesh.cluster
            .wait(
                "deleted chat-2 gone from pods 0 and 1",
                Duration::from_secs(20),
                |c| !c.resolves(0, &host, &old_ip) && !c.resolves(1, &host, &old_ip),
            )
            .await?;
        report!(
            "s6: API DELETED -> removed from peers' hosts files in {:?}",
            t_del.elapsed()
        );
        // Re-created with a new address.
        let new_ip = format!("{SUBNET}.{}", 40);
        mesh.cluster.readdress(2, &new_ip)?;
        let t_ev = Instant::now();
        mesh.cluster.publish(2, false);
        mesh.cluster
            .wait(
                "new chat-2 address in pods 0 and 1's hosts files",
                Duration::from_secs(20),
                |c| c.resolves(0, &host, &new_ip) && c.resolves(1, &host, &new_ip),
            )
            .await?;
        let to_file = t_ev.elapsed();
        // The VM sees it on its own (inet_db re-reads a changed file).
        let limit = Duration::from_secs(30);
        loop {
            let got = mesh.getaddr(0, &host).await?;
            if got == erl_ip(&new_ip) {
                break;
            }
            if t_ev.elapsed() > limit {
                return Err(format!("node 0 still resolves {host} to {got}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let to_vm = t_ev.elapsed();
        report!(
            "s6: API ADDED (new IP) -> hosts files rewritten in {to_file:?}; -> resolvable by \
             node 0's VM in {to_vm:?} (inet_db re-checks the file at most every 5 s)"
        );
        mesh.cluster.start_sidecar(2).await?;
        mesh.start_node(2).await?;
        let t = Instant::now();
        let peer = mesh.name(2);
        mesh.node(0)?.ping_until(&peer, limit).await?;
        mesh.node(1)?.ping_until(&peer, limit).await?;
        let d = mesh.full_mesh(MESH_LIMIT).await?;
        report!(
            "s6: re-created chat-2 reached at {new_ip} in {:?}; full mesh back in {d:?}",
            t.elapsed()
        );
        Ok(())
    })
    .await;
}

/// Scenario 7: the API server goes away for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_netns, ignore = "needs root and ip netns (KUBE_EPMD_TEST_SKIP)")]
async fn s7_api_outage() {
    run("s7 API server outage", async {
        let mut mesh = Mesh::boot("s7", 3, Naming::Short, |_| true).await?;
        mesh.full_mesh(MESH_LIMIT).await?;
        let hosts_before: Vec<String> = mesh.cluster.pods.iter().map(|p| p.hosts()).collect();
        let t_down = Instant::now();
        mesh.cluster.api.set_unavailable(true);
        // Long enough for watches to notice and retry a few times.
        tokio::time::sleep(Duration::from_secs(4)).await;
        for (k, before) in hosts_before.iter().enumerate() {
            check(mesh.cluster.sidecar_alive(k), || {
                format!("kube-epmd in pod {k} died with the API down:\n{}", mesh.cluster.sidecar_log(k))
            })?;
            check(mesh.cluster.pods[k].hosts() == *before, || {
                format!("pod {k}'s hosts file changed with the API down:\n{}", mesh.cluster.pods[k].hosts())
            })?;
            let ready = mesh.cluster.admin_get(k, "/readyz")?;
            let health = mesh.cluster.admin_get(k, "/healthz")?;
            report!("s7: API down: pod {k} /readyz {} {:?}, /healthz {} {:?}", ready.0, ready.1.trim(), health.0, health.1.trim());
        }
        // Registrations and resolution keep working: restart node 1 and
        // re-form the mesh from the last known table.
        mesh.node(1)?.stop().await;
        mesh.nodes[1] = None;
        mesh.cluster
            .wait("node 1 unregistered", Duration::from_secs(10), |c| {
                c.registered(1, "ejabberd").is_ok_and(|p| p.is_none())
            })
            .await?;
        mesh.start_node(1).await?;
        let d = mesh.full_mesh(MESH_LIMIT).await?;
        report!("s7: with the API down, node 1 restarted, registered and re-meshed in {d:?}");
        let outage = t_down.elapsed();
        // Back: the watches recover on their own and see new changes.
        let api = mesh.cluster.api.clone();
        tokio::task::block_in_place(|| mesh.cluster.hub.ns.enter(|| api.set_unavailable(false)));
        let extra_ip = format!("{SUBNET}.{}", 50);
        mesh.cluster.api.upsert_pod(crate::support::apiserver::pod(
            K8S_NS,
            "chat-9",
            &[&extra_ip],
            false,
            &[("app", "xmpp")],
        ));
        let d = mesh
            .cluster
            .wait(
                "every pod sees chat-9 after the API came back",
                Duration::from_secs(90),
                |c| (0..3).all(|k| c.resolves(k, "chat-9", &extra_ip)),
            )
            .await?;
        report!("s7: API was down {outage:?}; back -> change published to every hosts file in {d:?} (watch backoff included)");
        // A pod can show chat-9 from its re-list before its new watch
        // request reaches the server (or before the server has dropped the
        // cut one): wait for exactly one watch per pod, no leak, no gap.
        let d = mesh
            .cluster
            .wait(
                "exactly one watch open per pod (3) after recovery",
                Duration::from_secs(30),
                |c| c.api.open_watches() == 3,
            )
            .await
            .map_err(|e| format!("{e}: {} open", mesh.cluster.api.open_watches()))?;
        report!("s7: one watch per pod again {d:?} after every pod saw chat-9");
        let (_, metrics) = mesh.cluster.admin_get(0, "/metrics")?;
        let lines: Vec<&str> = metrics
            .lines()
            .filter(|l| !l.starts_with('#') && (l.contains("watch") || l.contains("sync")))
            .collect();
        report!("s7: pod 0 metrics after recovery: {}", lines.join(" | "));
        for k in 0..3 {
            let ready = mesh.cluster.admin_get(k, "/readyz")?;
            check(ready.0 == 200, || format!("pod {k} not ready after recovery: {ready:?}"))?;
        }
        mesh.full_mesh(MESH_LIMIT).await?;
        Ok(())
    })
    .await;
}

/// Scenario 8: scale-up to a fourth pod while the others run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_netns, ignore = "needs root and ip netns (KUBE_EPMD_TEST_SKIP)")]
async fn s8_scale_up() {
    run("s8 scale-up to 4 pods", async {
        let mut mesh = Mesh::boot("s8", 3, Naming::Short, |_| true).await?;
        mesh.full_mesh(MESH_LIMIT).await?;
        let k = mesh.cluster.add_pod_ns()?;
        let t0 = Instant::now();
        mesh.cluster.publish(k, false);
        let name = pod_name(k);
        let ip = pod_ip(k);
        mesh.cluster
            .wait(
                "the new pod in every running pod's hosts file",
                Duration::from_secs(20),
                |c| (0..3).all(|j| c.resolves(j, &name, &ip)),
            )
            .await?;
        report!(
            "s8: not-Ready {name} published -> in all hosts files in {:?}",
            t0.elapsed()
        );
        for j in 0..3 {
            let limit = Duration::from_secs(30);
            loop {
                let got = mesh.getaddr(j, &name).await?;
                if got == erl_ip(&ip) {
                    break;
                }
                if t0.elapsed() > limit {
                    return Err(format!("{} resolves {name} to {got}", mesh.name(j)));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        report!(
            "s8: resolvable by every running VM (not Ready yet) {:?} after publishing",
            t0.elapsed()
        );
        mesh.cluster.start_sidecar(k).await?;
        mesh.start_node(k).await?;
        let d = mesh.full_mesh(MESH_LIMIT).await?;
        report!(
            "s8: {name} joined: full mesh of 4 in {d:?}, {:?} after publishing",
            t0.elapsed()
        );
        mesh.cluster.publish(k, true);
        Ok(())
    })
    .await;
}
