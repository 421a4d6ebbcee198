//! A pod's container run from another distribution's root directory (one
//! made by scripts/forky-root.sh): the container's commands run inside
//! the pod's network namespace, chrooted into the root, while the sidecar
//! stays on the host in the same namespace, as two containers of one pod.
//!
//! Each command gets its own private mount namespace (`unshare -m
//! --propagation private`, inside `ip netns exec`), in which it binds the
//! test's scratch directory (read-write) and the repository (read-only) at
//! the same absolute paths inside the root, so every path kube-epmd
//! writes (hosts file, inetrc) and every path the test hands the
//! container is the same inside and out; plus /proc, /dev and /sys. The
//! mounts exist only in that namespace: they never reach the host's, and
//! they go when the command's last process does (the test kills every
//! process of its namespaces when it ends, passing or not). The only trace
//! in the root is the empty directories the binds need as mount points;
//! the scratch directory's is removed when the [`Root`] drops.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::netns::Netns;

/// What the command runs before it execs `chroot`: mounts in its own
/// namespace. Arguments: ROOT SCRATCH REPO, then chroot's command.
const ENTER: &str = r#"set -e
root=$1 scratch=$2 repo=$3
shift 3
mount --bind "$scratch" "$root$scratch"
mount --bind -o ro "$repo" "$root$repo"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
mount --bind /sys "$root/sys"
exec chroot "$root" "$@""#;

/// One test's use of a root directory.
pub struct Root {
    pub dir: PathBuf,
    scratch: PathBuf,
    repo: PathBuf,
}

impl Root {
    /// Use `dir` (a complete root) with `scratch` (the test's temporary
    /// directory) and the repository bound in: makes their mount points.
    pub fn new(dir: &Path, scratch: &Path) -> Result<Root, String> {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        for p in [scratch, &repo] {
            if !p.is_absolute() {
                return Err(format!("{} is not an absolute path", p.display()));
            }
            let at = inside(dir, p);
            std::fs::create_dir_all(&at)
                .map_err(|e| format!("mount point {} in the root: {e}", at.display()))?;
        }
        Ok(Root {
            dir: dir.to_path_buf(),
            scratch: scratch.to_path_buf(),
            repo,
        })
    }

    /// The uid and gid of `user` in the root's own /etc/passwd (the
    /// packages there made their users with their own numbers).
    pub fn ids(&self, user: &str) -> Result<(u32, u32), String> {
        let path = self.dir.join("etc/passwd");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        passwd_ids(&text, user).ok_or_else(|| format!("no user {user:?} in {}", path.display()))
    }

    /// A command that runs `argv` in `ns`, chrooted into the root with the
    /// binds above; arguments added to it go to `argv`'s program. It execs
    /// all the way (ip, unshare, sh, chroot, then `argv`): the child's pid
    /// is the program's, so signals to it reach the program.
    pub fn command(&self, ns: &Netns, argv: &[OsString]) -> tokio::process::Command {
        let mut cmd = ns.command("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", ENTER, "sh"])
            .arg(&self.dir)
            .arg(&self.scratch)
            .arg(&self.repo)
            .args(argv);
        cmd
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        // Empty unless a command of this test still runs (then the rmdir
        // fails, harmlessly). The repository's mount point stays: another
        // test may be using it right now.
        let _ = std::fs::remove_dir(inside(&self.dir, &self.scratch));
    }
}

/// `p` (absolute) as a path inside `root`.
fn inside(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// uid and gid of `user` in passwd(5) text.
fn passwd_ids(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4 && f[0] == user {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

#[test]
fn passwd_ids_reads_the_named_user() {
    let text = "root:x:0:0:root:/root:/bin/bash\nejabberd:x:997:996::/var/lib/ejabberd:/bin/sh\n";
    assert_eq!(passwd_ids(text, "ejabberd"), Some((997, 996)));
    assert_eq!(passwd_ids(text, "nobody"), None);
    assert_eq!(passwd_ids("ejabberd:x:no:1::/:/bin/sh", "ejabberd"), None);
}
