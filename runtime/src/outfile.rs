//! Writing a command's output files without ever destroying anything: the
//! one helper every m4c command that writes a file goes through.
//!
//! An output is written to a temporary file created exclusively (`O_EXCL`,
//! an unpredictable name) in the destination's directory, flushed and
//! synced, then renamed over the destination, so readers see the old file
//! or the whole new one. Before anything is created the destination is
//! refused when it is one of the command's inputs (same device and inode,
//! or the same canonical path), when it exists and is not a regular file
//! (a directory, a device node, a FIFO), or when its last component is a
//! symbolic link. Temporaries are removed on error, on drop and, through a
//! small registry, when the process is interrupted (SIGINT, SIGTERM,
//! SIGHUP): a signal thread unlinks every registered path, then re-raises
//! the signal with its default action. A temporary's name is registered
//! before the file is created, so no moment of its life escapes.

use std::fs::{File, Metadata};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

/// Why an output could not be written; names the destination.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The destination is refused before anything is written.
    #[error("refusing to write {}: {reason}", path.display())]
    Refused { path: PathBuf, reason: String },
    /// Creating, writing, syncing or renaming failed (nothing was left).
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Paths of in-progress temporaries (files or directories), removed by the
/// signal thread when the process is interrupted.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static SIGNALS: Once = Once::new();

/// Starts (once) the thread that removes pending temporaries when the
/// process gets SIGINT, SIGTERM or SIGHUP and then dies of that signal as
/// it would have without us.
fn watch_signals() {
    SIGNALS.call_once(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
            return;
        };
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
                for p in pending.iter() {
                    remove(p);
                }
                // Ends the process with the signal's default action.
                let _ = signal_hook::low_level::emulate_default_handler(sig);
                std::process::exit(128 + sig);
            }
        });
    });
}

fn register(path: &Path) {
    watch_signals();
    PENDING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(path.to_path_buf());
}

fn unregister(path: &Path) {
    PENDING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| p != path);
}

fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        let _ = std::fs::remove_dir_all(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

/// The directory an output lands in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

#[cfg(unix)]
fn same_inode(a: &Metadata, b: &Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_inode(_: &Metadata, _: &Metadata) -> bool {
    false
}

/// `path` with its directory resolved (its last component kept as is).
fn resolved(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    Some(std::fs::canonicalize(parent_dir(path)).ok()?.join(name))
}

/// Refuses `path` as an output of a command reading `inputs`; `dir` says
/// whether the output is a directory (`compile -o DIR`, `coverage --out`).
pub fn check(path: &Path, inputs: &[&Path], dir: bool) -> Result<(), OutputError> {
    let refuse = |reason: String| OutputError::Refused {
        path: path.to_path_buf(),
        reason,
    };
    if path.file_name().is_none() {
        return Err(refuse("it names no file".into()));
    }
    let meta = std::fs::symlink_metadata(path).ok();
    if let Some(m) = &meta {
        if m.file_type().is_symlink() {
            return Err(refuse(
                "it is a symbolic link (give the link's target instead)".into(),
            ));
        }
        let kind_ok = if dir { m.is_dir() } else { m.is_file() };
        if !kind_ok {
            let want = if dir { "a directory" } else { "a regular file" };
            return Err(refuse(format!("it exists and is not {want}")));
        }
    }
    let out_resolved = resolved(path);
    for input in inputs {
        let same = match (&meta, std::fs::metadata(input)) {
            (Some(m), Ok(i)) => same_inode(m, &i),
            _ => false,
        } || (out_resolved.is_some()
            && out_resolved == std::fs::canonicalize(input).ok());
        if same {
            return Err(refuse(format!(
                "it is the input {} (choose another output)",
                input.display()
            )));
        }
    }
    Ok(())
}

/// An output file being written: a registered temporary in the
/// destination's directory, removed unless [`Pending::commit`] renames it
/// into place.
pub struct Pending {
    path: PathBuf,
    /// The temporary, until committed.
    tmp: Option<PathBuf>,
    writer: Option<BufWriter<File>>,
}

/// How a [`Pending`] output is created.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Permission bits before the umask (0o666 for ordinary files, 0o600
    /// for secrets).
    pub mode: u32,
    /// Refuse to replace an existing destination (keys).
    pub no_clobber: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mode: 0o666,
            no_clobber: false,
        }
    }
}

/// A fresh temporary name beside `path`: `.NAME.<24 random hex>.tmp`,
/// unpredictable so that no one can plant a file or link there first.
fn temp_name(path: &Path) -> std::io::Result<PathBuf> {
    let mut random = [0u8; 12];
    getrandom::fill(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    Ok(parent_dir(path).join(format!(".{name}.{hex}.tmp")))
}

/// Registers a fresh temporary name and creates it with `create` (which
/// must fail if it exists): registered first, so that an interruption at
/// any moment finds it.
fn create_temp<T>(
    path: &Path,
    create: impl Fn(&Path) -> std::io::Result<T>,
) -> Result<(PathBuf, T), OutputError> {
    let io = |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    };
    loop {
        let tmp = temp_name(path).map_err(io)?;
        register(&tmp);
        match create(&tmp) {
            Ok(made) => return Ok((tmp, made)),
            Err(e) => {
                unregister(&tmp);
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(io(e));
                }
            }
        }
    }
}

#[allow(
    clippy::expect_used,
    reason = "`tmp` (and `writer`) are Some from creation until commit, which consumes self, or drop"
)]
impl Pending {
    /// Checks `path` ([`check`]) and creates its temporary exclusively.
    pub fn create(path: &Path, inputs: &[&Path], opts: Options) -> Result<Pending, OutputError> {
        check(path, inputs, false)?;
        if opts.no_clobber && std::fs::symlink_metadata(path).is_ok() {
            return Err(OutputError::Refused {
                path: path.to_path_buf(),
                reason: "it exists (remove it first)".into(),
            });
        }
        let (tmp, file) = create_temp(path, |tmp| {
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, opts.mode);
            o.open(tmp)
        })?;
        Ok(Pending {
            path: path.to_path_buf(),
            tmp: Some(tmp),
            writer: Some(BufWriter::new(file)),
        })
    }

    /// Where the bytes go (buffered).
    pub fn writer(&mut self) -> &mut BufWriter<File> {
        self.writer.as_mut().expect("writer lives until commit")
    }

    /// The destination.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary the bytes are written to, for a writer that checks
    /// what it wrote (read it back after [`Self::finish`]) before
    /// [`Self::commit`] puts it in place.
    pub fn temp_path(&self) -> &Path {
        self.tmp.as_deref().expect("lives until commit")
    }

    fn io(&self, source: std::io::Error) -> OutputError {
        OutputError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Flushes and syncs the temporary (so that a later [`Self::commit`]
    /// cannot fail for lack of space).
    pub fn finish(&mut self) -> Result<(), OutputError> {
        if let Some(mut w) = self.writer.take() {
            w.flush().map_err(|e| self.io(e))?;
            w.get_ref().sync_all().map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// Finishes and renames the temporary over the destination.
    pub fn commit(mut self) -> Result<(), OutputError> {
        self.commit_with(false)
    }

    /// [`Self::commit`] that never replaces an existing destination (the
    /// temporary is linked there, which fails if it exists).
    pub fn commit_new(mut self) -> Result<(), OutputError> {
        self.commit_with(true)
    }

    fn commit_with(&mut self, no_clobber: bool) -> Result<(), OutputError> {
        self.finish()?;
        let tmp = self.tmp.as_deref().expect("committed once");
        let result = if no_clobber {
            std::fs::hard_link(tmp, &self.path)
        } else {
            std::fs::rename(tmp, &self.path)
        };
        result.map_err(|e| self.io(e))?;
        // Renamed (nothing left) or linked (the temporary goes on drop).
        if !no_clobber {
            let tmp = self.tmp.take().expect("committed once");
            unregister(&tmp);
        }
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        drop(self.writer.take());
        if let Some(tmp) = self.tmp.take() {
            remove(&tmp);
            unregister(&tmp);
        }
    }
}

/// Writes `bytes` to `path` (an output of a command reading `inputs`).
pub fn write(path: &Path, inputs: &[&Path], bytes: &[u8]) -> Result<(), OutputError> {
    write_with(path, inputs, |w| w.write_all(bytes))
}

/// Writes what `fill` produces to `path` (an output of a command reading
/// `inputs`); nothing is left behind when `fill` or the write fails.
pub fn write_with(
    path: &Path,
    inputs: &[&Path],
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), OutputError> {
    let mut out = Pending::create(path, inputs, Options::default())?;
    fill(out.writer()).map_err(|e| out.io(e))?;
    out.commit()
}

/// An output directory being filled: a registered temporary directory
/// beside the destination, renamed into place by [`PendingDir::commit`]
/// and removed otherwise.
pub struct PendingDir {
    path: PathBuf,
    tmp: Option<PathBuf>,
}

#[allow(
    clippy::expect_used,
    reason = "`tmp` (and `writer`) are Some from creation until commit, which consumes self, or drop"
)]
impl PendingDir {
    /// Checks `path` ([`check`], as a directory) and creates the temporary.
    pub fn create(path: &Path, inputs: &[&Path]) -> Result<PendingDir, OutputError> {
        check(path, inputs, true)?;
        let (tmp, ()) = create_temp(path, |p| std::fs::create_dir(p))?;
        Ok(PendingDir {
            path: path.to_path_buf(),
            tmp: Some(tmp),
        })
    }

    /// The temporary directory to fill.
    pub fn dir(&self) -> &Path {
        self.tmp.as_deref().expect("lives until commit")
    }

    /// Renames the filled directory into place (an existing destination
    /// must be an empty directory).
    pub fn commit(mut self) -> Result<(), OutputError> {
        let tmp = self.tmp.take().expect("committed once");
        let result = std::fs::rename(&tmp, &self.path);
        if result.is_err() {
            remove(&tmp);
        }
        unregister(&tmp);
        result.map_err(|source| OutputError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

impl Drop for PendingDir {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            remove(&tmp);
            unregister(&tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.fw");
        std::fs::write(&path, b"old").unwrap();
        write(&path, &[], b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        assert_eq!(entries(dir.path()), ["x.fw"]);
    }

    #[test]
    fn the_output_gets_an_ordinary_files_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, out) = (dir.path().join("plain"), dir.path().join("x.fw"));
        std::fs::write(&plain, b"x").unwrap();
        write(&out, &[], b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions();
        assert_eq!(mode(&out), mode(&plain));
    }

    #[test]
    fn an_input_a_symlink_or_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.npz");
        std::fs::write(&input, b"input").unwrap();
        let other_spelling = dir.path().join(".").join("in.npz");
        let e = write(&other_spelling, &[&input], b"x").unwrap_err();
        assert!(e.to_string().contains("is the input"), "{e}");
        let hard = dir.path().join("hard.npz");
        std::fs::hard_link(&input, &hard).unwrap();
        assert!(write(&hard, &[&input], b"x").is_err());
        #[cfg(unix)]
        {
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(&input, &link).unwrap();
            let e = write(&link, &[], b"x").unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
        }
        let e = write(dir.path(), &[], b"x").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert_eq!(std::fs::read(&input).unwrap(), b"input");
    }

    #[test]
    fn a_failed_fill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o.bin");
        let e = write_with(&out, &[], |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("boom"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("o.bin") && e.to_string().contains("boom"));
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn no_clobber_keeps_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("key");
        std::fs::write(&out, b"old").unwrap();
        let opts = Options {
            mode: 0o600,
            no_clobber: true,
        };
        assert!(Pending::create(&out, &[], opts).is_err());
        assert_eq!(std::fs::read(&out).unwrap(), b"old");
    }

    #[test]
    fn a_directory_output_appears_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("report");
        let pending = PendingDir::create(&out, &[]).unwrap();
        std::fs::write(pending.dir().join("a.txt"), b"a").unwrap();
        drop(pending);
        assert!(entries(dir.path()).is_empty());
        let pending = PendingDir::create(&out, &[]).unwrap();
        std::fs::write(pending.dir().join("a.txt"), b"a").unwrap();
        pending.commit().unwrap();
        assert_eq!(entries(&out), ["a.txt"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_path() {
        let e = write(Path::new("/nonexistent-dir/x.fw"), &[], b"x").unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir/x.fw"), "{e}");
    }
}
