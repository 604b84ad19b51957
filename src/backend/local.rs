//! The local-directory object store, the embedded default backend (`file:///path`).
//! Puts are atomic and create-only: data goes to a temporary file, is fsynced, then
//! hard-linked into place (the link fails if the key exists).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::{ObjectInfo, ObjectStore};
use crate::error::{Error, IoContext, Result};

pub struct LocalStore {
    root: PathBuf,
    tmp_seq: AtomicU64,
}

impl LocalStore {
    /// Open (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> Result<LocalStore> {
        fs::create_dir_all(root.join(".tmp")).ctx(|| format!("cannot create object store {}", root.display()))?;
        Ok(LocalStore { root: root.to_path_buf(), tmp_seq: AtomicU64::new(0) })
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if key.is_empty() || key.split('/').any(|c| c.is_empty() || c == "." || c == ".." || c.starts_with(".tmp")) {
            return Err(Error::InvalidArgument(format!("bad object key {key:?}")));
        }
        Ok(self.root.join(key))
    }

    fn open_existing(&self, key: &str) -> Result<File> {
        let p = self.path(key)?;
        File::open(&p).map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::ObjectNotFound(key.to_string()),
            _ => Error::io(format!("cannot open {}", p.display()), e),
        })
    }

    fn walk(&self, dir: &Path, rel: &str, prefix: &str, out: &mut Vec<ObjectInfo>) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("cannot list {}", dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.ctx(|| format!("cannot list {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if rel.is_empty() && name == ".tmp" {
                continue;
            }
            let key = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            // Prune subtrees that cannot match the prefix.
            if !(key.starts_with(prefix) || prefix.starts_with(&key)) {
                continue;
            }
            let ft = entry.file_type().ctx(|| format!("cannot stat {key}"))?;
            if ft.is_dir() {
                self.walk(&entry.path(), &key, prefix, out)?;
            } else if key.starts_with(prefix) {
                // An object deleted while we list is simply not listed.
                match entry.metadata() {
                    Ok(md) => out.push(ObjectInfo { key, size: md.len() }),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(format!("cannot stat {key}"), e)),
                }
            }
        }
        Ok(())
    }
}

/// Bytes at the start of `data` worth writing with O_DIRECT: a multiple of 4 KiB, when
/// the buffer is page-aligned and large.
fn direct_prefix(data: &[u8]) -> usize {
    const MIN: usize = 1 << 20;
    if data.len() < MIN || !(data.as_ptr() as usize).is_multiple_of(4096) {
        return 0;
    }
    data.len() & !4095
}

fn set_direct(f: &File, on: bool) -> std::io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on an fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let want = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, want) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).ctx(|| format!("cannot sync {}", dir.display()))
}

impl ObjectStore for LocalStore {
    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let dest = self.path(key)?;
        let parent = dest.parent().expect("key has a parent");
        fs::create_dir_all(parent).ctx(|| format!("cannot create {}", parent.display()))?;
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join(".tmp").join(format!("{}.{}", std::process::id(), seq));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            let direct = direct_prefix(data);
            if direct > 0 {
                // Large page-aligned data (an SCO upload): DMA from the buffer, no copy
                // into the page cache. Filesystems without O_DIRECT take the plain path.
                if set_direct(&f, true).is_ok() {
                    f.write_all_at(&data[..direct], 0)?;
                    set_direct(&f, false)?;
                    f.write_all_at(&data[direct..], direct as u64)?;
                    return f.sync_all();
                }
            }
            f.write_all(data)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(format!("cannot write object {key}"), e));
        }
        let linked = fs::hard_link(&tmp, &dest);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => fsync_dir(parent),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(Error::ObjectExists(key.to_string())),
            Err(e) => Err(Error::io(format!("cannot create object {key}"), e)),
        }
    }

    fn adopts_files(&self) -> bool {
        true
    }

    fn adopt_file(&self, key: &str, path: &Path) -> Result<bool> {
        let dest = self.path(key)?;
        let parent = dest.parent().expect("key has a parent");
        fs::create_dir_all(parent).ctx(|| format!("cannot create {}", parent.display()))?;
        match fs::hard_link(path, &dest) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(Error::ObjectExists(key.to_string())),
            // Another filesystem (EXDEV), or no hard links here: copy instead.
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) || e.raw_os_error() == Some(libc::EPERM) => Ok(false),
            Err(e) => Err(Error::io(format!("cannot link object {key}"), e)),
        }
    }

    /// One sync per directory the keys' names are in.
    fn sync_adopted(&self, keys: &[String]) -> Result<()> {
        let mut dirs = std::collections::BTreeSet::new();
        for k in keys {
            dirs.insert(self.path(k)?.parent().expect("key has a parent").to_path_buf());
        }
        dirs.iter().try_for_each(|d| fsync_dir(d))
    }

    fn local_file(&self, key: &str) -> Option<PathBuf> {
        self.path(key).ok().filter(|p| p.is_file())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let mut f = self.open_existing(key)?;
        let mut v = Vec::new();
        f.read_to_end(&mut v).ctx(|| format!("cannot read object {key}"))?;
        Ok(v)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut f = self.open_existing(key)?;
        f.seek(SeekFrom::Start(offset)).ctx(|| format!("cannot seek object {key}"))?;
        let mut v = Vec::with_capacity(len.min(64 << 20) as usize);
        f.take(len).read_to_end(&mut v).ctx(|| format!("cannot read object {key}"))?;
        Ok(v)
    }

    fn get_tail(&self, key: &str, len: u64) -> Result<(Vec<u8>, u64)> {
        let f = self.open_existing(key)?;
        let size = f.metadata().ctx(|| format!("cannot stat object {key}"))?.len();
        let start = size.saturating_sub(len);
        Ok((self.get_range(key, start, size - start)?, size))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        self.walk(&self.root, "", prefix, &mut out)?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn list_children(&self, prefix: &str) -> Result<Vec<String>> {
        let dir = if prefix.is_empty() { self.root.clone() } else { self.path(prefix.trim_end_matches('/'))? };
        let mut out = Vec::new();
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for e in entries {
                    let e = e.ctx(|| format!("cannot list {}", dir.display()))?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !name.starts_with(".tmp") {
                        out.push(name);
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("cannot list {}", dir.display()), e)),
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key)?;
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("cannot delete object {key}"), e)),
        }
        // Remove now-empty directories up to the root (best effort).
        let mut dir = p.parent();
        while let Some(d) = dir {
            if d == self.root || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_delete() {
        let t = tempfile::tempdir().unwrap();
        let s = LocalStore::open(t.path()).unwrap();
        s.put("v/a/1", b"hello").unwrap();
        s.put("v/a/2", b"world!").unwrap();
        s.put("w/x", b"").unwrap();
        assert!(matches!(s.put("v/a/1", b"x"), Err(Error::ObjectExists(_))));
        assert_eq!(s.get("v/a/1").unwrap(), b"hello");
        assert_eq!(s.get_range("v/a/2", 1, 3).unwrap(), b"orl");
        assert_eq!(s.get_range("v/a/2", 4, 30).unwrap(), b"d!");
        assert_eq!(s.get_tail("v/a/2", 2).unwrap(), (b"d!".to_vec(), 6));
        let keys: Vec<_> = s.list("v/").unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, vec!["v/a/1", "v/a/2"]);
        assert_eq!(s.list_children("").unwrap(), vec!["v", "w"]);
        assert_eq!(s.list_children("v/").unwrap(), vec!["a"]);
        assert!(matches!(s.get("v/zz"), Err(Error::ObjectNotFound(_))));
        assert!(s.get("../etc/passwd").is_err());
        s.delete("v/a/1").unwrap();
        s.delete("v/a/1").unwrap();
        s.delete("v/a/2").unwrap();
        assert_eq!(s.list_children("").unwrap(), vec!["w"]);
    }
}
