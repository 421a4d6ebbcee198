//! Plain Erlang nodes, one per pod, beside kube-epmd: the shape most
//! scenarios start from.

use std::time::{Duration, Instant};

use crate::cluster::{Cluster, SUBDOMAIN, pod_name};
use crate::erlang::{ErlNode, Naming, compile_ctl};
use crate::report;

/// The node name the seed uses for pod `k`.
pub fn node_name(k: usize, naming: Naming) -> String {
    match naming {
        Naming::Long => format!("ejabberd@{}.{SUBDOMAIN}", pod_name(k)),
        Naming::Short => format!("ejabberd@{}", pod_name(k)),
    }
}

pub struct Mesh {
    // Nodes go before the cluster so they are stopped before their pods.
    pub nodes: Vec<Option<ErlNode>>,
    pub cluster: Cluster,
    pub naming: Naming,
    pub ebin: std::path::PathBuf,
}

impl Mesh {
    /// `n` pods, each published (Ready as `ready(k)` says), with kube-epmd
    /// started and then an Erlang node using the inetrc it wrote.
    pub async fn boot(
        tag: &str,
        n: usize,
        naming: Naming,
        ready: impl Fn(usize) -> bool,
    ) -> Result<Mesh, String> {
        let t0 = Instant::now();
        let cluster = Cluster::new(tag, n).await?;
        let ebin = cluster.path("ebin");
        std::fs::create_dir_all(&ebin).map_err(|e| format!("{e}"))?;
        compile_ctl(&ebin)?;
        let mut mesh = Mesh {
            nodes: Vec::new(),
            cluster,
            naming,
            ebin,
        };
        for k in 0..n {
            mesh.cluster.publish(k, ready(k));
        }
        for k in 0..n {
            let d = mesh.cluster.start_sidecar(k).await?;
            report!("{tag}: kube-epmd in pod {k} ready in {d:?}");
        }
        for k in 0..n {
            mesh.nodes.push(None);
            mesh.start_node(k).await?;
        }
        report!("{tag}: {n} pods booted in {:?}", t0.elapsed());
        Ok(mesh)
    }

    pub fn name(&self, k: usize) -> String {
        node_name(k, self.naming)
    }

    /// Start (or restart) the node of pod `k`; it must register with the
    /// pod's kube-epmd.
    pub async fn start_node(&mut self, k: usize) -> Result<&mut ErlNode, String> {
        let name = self.name(k);
        let p = &self.cluster.pods[k];
        let node = ErlNode::start(&p.ns, &name, self.naming, &p.inetrc(), &self.ebin).await?;
        if self.nodes.len() <= k {
            self.nodes.resize_with(k + 1, || None);
        }
        let port = self.cluster.registered(k, "ejabberd")?;
        match port {
            Some(p) if (4200..=4210).contains(&p) => {}
            other => {
                return Err(format!(
                    "{name} is up but pod {k}'s EPMD lists it at {other:?} (want 4200-4210); \
                     NAMES:\n{}\nnode output:\n{}",
                    self.cluster.names(k).unwrap_or_default(),
                    node.output()
                ));
            }
        }
        self.nodes[k] = Some(node);
        Ok(self.nodes[k].as_mut().unwrap())
    }

    pub fn node(&mut self, k: usize) -> Result<&mut ErlNode, String> {
        self.nodes
            .get_mut(k)
            .and_then(|n| n.as_mut())
            .ok_or_else(|| format!("pod {k} has no running node"))
    }

    /// Every node pings every other and `rpc:call`s it; returns the time
    /// the whole mesh took to form.
    pub async fn full_mesh(&mut self, limit: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        let ks: Vec<usize> = (0..self.nodes.len())
            .filter(|k| self.nodes[*k].is_some())
            .collect();
        for &a in &ks {
            for &b in &ks {
                if a == b {
                    continue;
                }
                let peer = self.name(b);
                let left = limit.saturating_sub(t0.elapsed());
                let node = self.node(a)?;
                node.ping_until(&peer, left).await?;
                node.rpc_node(&peer).await?;
            }
        }
        for &a in &ks {
            let want: Vec<String> = ks
                .iter()
                .filter(|b| **b != a)
                .map(|b| format!("'{}'", self.name(*b)))
                .collect();
            let got = self.node(a)?.nodes().await?;
            for w in &want {
                if !got.contains(w.as_str()) {
                    return Err(format!("{}: nodes() = {got}, missing {w}", self.name(a)));
                }
            }
        }
        Ok(t0.elapsed())
    }

    /// How node `k` resolves `host` right now (`inet:getaddr/2`), as text:
    /// `{ok,{10,233,0,12}}` or `{error,nxdomain}`.
    pub async fn getaddr(&mut self, k: usize, host: &str) -> Result<String, String> {
        self.node(k)?
            .eval(
                &format!("inet:getaddr(\"{host}\", inet)"),
                Duration::from_secs(10),
            )
            .await
    }
}

/// An IPv4 address as Erlang prints the tuple.
pub fn erl_ip(ip: &str) -> String {
    format!("{{ok,{{{}}}}}", ip.replace('.', ","))
}
