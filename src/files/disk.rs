//! The files on disk, replaced atomically (temp file + rename in the same
//! directory, so a reader never sees half a file), each remembering what
//! it last wrote so an unchanged value never touches the disk.
//!
//! The VM's inet_db notices a changed `hosts_file` only on a lookup, at
//! most every 5 s, by comparing the file's info (size, inode, mtime in whole
//! seconds). So the hosts file is always replaced by rename (new inode),
//! and each version gets an mtime second later than the previous one: two
//! versions written within one second, of equal size, on a recycled inode
//! would otherwise look identical to inet_db and the newer one would be
//! missed.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An output directory or file that could not be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot create the output directory {0}: {1}")]
    OutputDir(PathBuf, #[source] io::Error),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, #[source] io::Error),
}

/// Create the output directory `dir` and return it absolute but not
/// canonical: the path other containers see through the shared volume is
/// the one given, not where its symlinks lead.
pub fn output_dir(dir: &Path) -> Result<PathBuf, SetupError> {
    fs::create_dir_all(dir).map_err(|e| SetupError::OutputDir(dir.to_path_buf(), e))?;
    std::path::absolute(dir).map_err(|e| SetupError::OutputDir(dir.to_path_buf(), e))
}

/// Write `content` to `path` atomically: a temp file in the same directory,
/// then renamed over `path`. `mtime`, when given, is set on the temp file
/// first. No fsync: readers see the rename atomically either way, and the
/// files live in a pod's emptyDir, which does not outlive a node crash; the
/// daemon rewrites them from the API on every start.
pub fn replace_file(path: &Path, content: &[u8], mtime: Option<SystemTime>) -> io::Result<()> {
    replace(path, content, mtime, None)
}

/// As [`replace_file`], for a file holding a private key: created with
/// mode `mode` (e.g. 0o640: the VM's container reads it through the pod's
/// fsGroup, nobody else), so it is never readable by others, not even
/// between creation and rename.
pub fn replace_private_file(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    replace(path, content, None, Some(mode))
}

fn replace(
    path: &Path,
    content: &[u8],
    mtime: Option<SystemTime>,
    mode: Option<u32>,
) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut open = fs::OpenOptions::new();
        open.write(true);
        match mode {
            // A temp file left by a crash keeps its old mode: start afresh.
            Some(m) => {
                let _ = fs::remove_file(&tmp);
                open.create_new(true).mode(m);
            }
            None => {
                open.create(true).truncate(true);
            }
        }
        let mut f = open.open(&tmp)?;
        f.write_all(content)?;
        if let Some(t) = mtime {
            f.set_modified(t)?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The hosts file this daemon owns: remembers what it last wrote so an
/// unchanged table never touches the file.
#[derive(Debug)]
pub struct HostsFile {
    path: PathBuf,
    last: Option<String>,
    last_mtime_secs: u64,
}

impl HostsFile {
    /// Adopt the file at `path`. An existing file (left by a previous run
    /// of this sidecar) is kept as it is until the first complete list: it
    /// is the last good view, better than none.
    pub fn open(path: PathBuf) -> HostsFile {
        let last = fs::read_to_string(&path).ok();
        let last_mtime_secs = fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        HostsFile {
            path,
            last,
            last_mtime_secs,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a file is in place (written now or left by a previous run).
    pub fn exists(&self) -> bool {
        self.last.is_some()
    }

    /// Replace the file if `content` differs from what is there. Returns
    /// whether it was written.
    pub fn update(&mut self, content: String) -> io::Result<bool> {
        if self.last.as_deref() == Some(content.as_str()) {
            return Ok(false);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Strictly increasing whole seconds (see the module docs). A burst
        // of writes runs ahead of the clock by at most its length.
        let secs = now.max(self.last_mtime_secs + 1);
        replace_file(
            &self.path,
            content.as_bytes(),
            Some(UNIX_EPOCH + Duration::from_secs(secs)),
        )?;
        self.last = Some(content);
        self.last_mtime_secs = secs;
        Ok(true)
    }
}

/// `<output-dir>/replicas`: a StatefulSet's desired replica count in
/// decimal and a newline, or no file while the count is unknown.
#[derive(Debug)]
pub struct ReplicasFile {
    path: PathBuf,
    /// What is on disk now (None: no file).
    on_disk: Option<u32>,
}

impl ReplicasFile {
    /// Take charge of `path`, removing what a previous run left there:
    /// only this run's own complete list may say how many replicas there
    /// are (the count may have changed while the daemon was down).
    pub fn open(path: PathBuf) -> io::Result<ReplicasFile> {
        remove_if_present(&path)?;
        Ok(ReplicasFile {
            path,
            on_disk: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Make the file say `value` (None: remove it). Returns whether the
    /// disk changed.
    pub fn set(&mut self, value: Option<u32>) -> io::Result<bool> {
        if self.on_disk == value {
            return Ok(false);
        }
        match value {
            Some(n) => replace_file(&self.path, format!("{n}\n").as_bytes(), None)?,
            None => remove_if_present(&self.path)?,
        }
        self.on_disk = value;
        Ok(true)
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn update_renames_only_on_change_with_increasing_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let mut h = HostsFile::open(path.clone());
        assert!(!h.exists());
        assert!(h.update("one\n".into()).unwrap());
        let m1 = fs::metadata(&path).unwrap();
        assert!(
            !h.update("one\n".into()).unwrap(),
            "same content: untouched"
        );
        assert_eq!(fs::metadata(&path).unwrap().ino(), m1.ino());
        assert!(h.update("two\n".into()).unwrap());
        let m2 = fs::metadata(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        assert_ne!(m1.ino(), m2.ino(), "replaced by rename");
        assert!(m2.mtime() > m1.mtime(), "a later whole second");
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // A restarted writer adopts the file and skips an identical write.
        let mut again = HostsFile::open(path.clone());
        assert!(again.exists());
        assert!(!again.update("two\n".into()).unwrap());
    }

    #[test]
    fn a_private_file_is_replaced_by_rename_with_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        replace_private_file(&path, b"one", 0o640).unwrap();
        let m1 = fs::metadata(&path).unwrap();
        assert_eq!(m1.permissions().mode() & 0o777, 0o640);
        replace_private_file(&path, b"two", 0o640).unwrap();
        let m2 = fs::metadata(&path).unwrap();
        assert_ne!(m1.ino(), m2.ino(), "replaced by rename");
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn replicas_file_is_replaced_only_on_change_and_removed_when_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replicas");
        fs::write(&path, "7\n").unwrap();
        let mut f = ReplicasFile::open(path.clone()).unwrap();
        assert!(!path.exists(), "a previous run's value is not trusted");
        assert!(!f.set(None).unwrap());
        assert!(f.set(Some(3)).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "3\n");
        let ino = fs::metadata(&path).unwrap().ino();
        assert!(!f.set(Some(3)).unwrap());
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino, "untouched");
        assert!(f.set(Some(2)).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "2\n");
        assert!(f.set(None).unwrap());
        assert!(!path.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
