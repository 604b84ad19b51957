//! Getting the data dir out of a replayed file-system image, per file system: ext4 with
//! userspace tools (`e2fsck -E journal_only` replays the journal as a mount would, `debugfs
//! rdump` copies), XFS (no userspace log replay exists) by a loop mount, which runs the
//! kernel's log recovery, `cp -a` and an unmount that happens on every path.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::point::{last_line, run};

/// The file system the data dir lived on in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fs {
    Ext4,
    Xfs,
}

/// Copies directories `dirs` (absolute, inside the file system) of image `img` into `out`
/// (as `out/<name>`), recovering the file system's journal/log first as a mount would. A
/// recovery that fails is a problem of this point, pushed to `problems`. Returns the copy
/// step's output (for the message when a directory is then missing).
pub fn extract(fs: Fs, img: &Path, dirs: &[&str], out: &Path, problems: &mut Vec<String>) -> Result<String> {
    match fs {
        Fs::Ext4 => {
            // What mounting does first: replay the ext4 journal (0/1: fine; more: damaged).
            let (rc, text) = run(Command::new("e2fsck").args(["-E", "journal_only", "-y"]).arg(img))?;
            if rc > 1 {
                problems.push(format!("ext4 journal replay failed (e2fsck {rc}): {}", last_line(&text)));
            }
            let mut all = String::new();
            for dir in dirs {
                let (_, text) =
                    run(Command::new("debugfs").arg("-R").arg(format!("rdump {dir} {}", out.display())).arg(img))?;
                all.push_str(&text);
            }
            Ok(all)
        }
        Fs::Xfs => {
            let mnt = out.with_extension("mnt");
            std::fs::create_dir_all(&mnt).with_context(|| format!("create {}", mnt.display()))?;
            // A mount left by a killed earlier run would hide this one.
            Mount::release(&mnt, None)?;
            // A loop device of our own for this copy. `mount -o loop` may reuse a loop device
            // still attached to the same file (its detach after the previous point's unmount
            // is asynchronous), whose cache holds the previous point's blocks: the image was
            // rewritten in place. That made 2 of ~30 XFS runs report acknowledged writes
            // reading zeroes and a file system xfs_repair calls corrupt, where a re-check of
            // the same log found nothing and the guest's own disk was clean.
            let (rc, text) = run(Command::new("losetup").args(["--find", "--show"]).arg(img))?;
            anyhow::ensure!(rc == 0, "losetup {}: {}", img.display(), last_line(&text));
            let dev = text.trim().to_string();
            let (rc, text) = run(Command::new("blockdev").args(["--flushbufs", &dev]))?;
            if rc != 0 {
                let _ = run(Command::new("losetup").args(["-d", &dev]));
                anyhow::bail!("blockdev --flushbufs {dev}: {}", last_line(&text));
            }
            // The mount replays XFS's log; nouuid: the image may share its UUID with
            // another copy still mounted somewhere.
            let (rc, text) = run(Command::new("mount").args(["-t", "xfs", "-o", "nouuid", &dev]).arg(&mnt))?;
            if rc != 0 {
                let _ = run(Command::new("losetup").args(["-d", &dev]));
                // mount(8) ends with "dmesg(1) may have more information": the line before.
                let why = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with("dmesg(1)"));
                problems.push(format!("xfs mount (log recovery) failed (mount {rc}): {}", why.unwrap_or("")));
                return Ok("not copied (no mount)".into());
            }
            let mounted = Mount { dir: mnt, dev: Some(dev), done: false };
            let mut all = String::new();
            for dir in dirs {
                let src = mounted.dir.join(dir.trim_start_matches('/'));
                let (rc, text) = if src.exists() {
                    run(Command::new("cp").arg("-a").arg(&src).arg(out))?
                } else {
                    (1, format!("{dir} not found in the file system"))
                };
                if rc != 0 {
                    all.push_str(&text);
                }
            }
            mounted.unmount()?;
            Ok(all)
        }
    }
}

/// A mounted directory (on loop device `dev`), unmounted and detached when dropped
/// (errors too).
struct Mount {
    dir: PathBuf,
    dev: Option<String>,
    done: bool,
}

impl Mount {
    /// Unmounts `dir` if something is mounted there, then detaches `dev`.
    fn release(dir: &Path, dev: Option<&str>) -> Result<()> {
        let (rc, _) = run(Command::new("mountpoint").arg("-q").arg(dir))?;
        if rc == 0 {
            let (rc, text) = run(Command::new("umount").arg(dir))?;
            anyhow::ensure!(rc == 0, "umount {}: {}", dir.display(), last_line(&text));
        }
        if let Some(dev) = dev {
            let (rc, text) = run(Command::new("losetup").args(["-d", dev]))?;
            anyhow::ensure!(rc == 0, "losetup -d {dev}: {}", last_line(&text));
        }
        Ok(())
    }

    /// Unmounts and detaches now, reporting a failure.
    fn unmount(mut self) -> Result<()> {
        self.done = true;
        Self::release(&self.dir, self.dev.as_deref())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Err(e) = Self::release(&self.dir, self.dev.as_deref()) {
            eprintln!("logwrites-replay: {e:#}");
        }
    }
}
