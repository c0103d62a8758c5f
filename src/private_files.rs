//! Files and directories only the relay's own user may read: spool batches and capture files
//! hold message bodies and envelopes, `failed/*.json` names recipients, and `.redaction-key`
//! turns the address hashes in logs back into addresses (by dictionary). Under the usual umask
//! (022) plain `File::create` and `create_dir_all` would make them world-readable (0644 in 0755
//! directories).
//!
//! So the mode is given when a file or directory is created (0600 / 0700; a umask can only
//! remove bits, never add them), and at start the relay tightens the directories it owns that
//! are more open than that. A directory it does not own (a volume's mount point owned by root,
//! for example) is left alone: the files and subdirectories inside are private anyway.

use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file the relay creates in its spool and capture directories.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the directories it creates there.
pub const DIR_MODE: u32 = 0o700;

/// Options that create a file only its owner can read or write (`create_new` is up to the
/// caller). Only the mode of a *new* file is set; see [`tighten_file`] for existing ones.
pub fn create_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE);
    options
}

/// Creates `dir` (and missing parents) with mode 0700 when it does not exist. Cheap when it
/// does (one `stat`), so writers call it before every write. A file in its place is an error
/// (`NotADirectory`, saying so).
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        // Never made private as if it were one (and then failed on as "Not a directory").
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is a file, not a directory", dir.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
        }
        Err(e) => Err(e),
    }
}

/// [`ensure_dir`], then, for a directory this process's user owns that group or others may
/// enter or read, sets 0700 (logged). Called at start for the spool and capture directories.
///
/// Left alone: a directory owned by someone else (a volume's mount point owned by root: it
/// cannot be changed, and what the relay creates inside is private anyway), and a sticky one
/// (a shared directory such as `/tmp` given by mistake: making it private would break everyone
/// else). Either is warned about when other users may write to it, since they could then
/// replace what the relay keeps there (its subdirectories, `.redaction-key`).
pub fn tighten_dir(dir: &Path) -> io::Result<()> {
    ensure_dir(dir)?;
    let meta = fs::metadata(dir)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let sticky = mode & 0o1000 != 0;
    if !sticky && Some(meta.uid()) == process_uid() {
        fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))?;
        tracing::info!(dir = %dir.display(), was = format!("{mode:04o}"), "directory made private (0700)");
    } else if mode & 0o002 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{mode:04o}"), owner = meta.uid(),
            "every user may create and rename entries in this directory, which is not the relay's own to change; give the relay a directory of its own (a subdirectory is enough, docs/operations.md)");
    }
    Ok(())
}

/// Sets 0600 on an existing file this process's user owns that group or others may read or
/// write (a file created by an earlier relay under a loose umask).
pub fn tighten_file(path: &Path) -> io::Result<()> {
    let meta = fs::metadata(path)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 && Some(meta.uid()) == process_uid() {
        fs::set_permissions(path, Permissions::from_mode(FILE_MODE))?;
        tracing::info!(file = %path.display(), was = format!("{mode:04o}"), "file made private (0600)");
    }
    Ok(())
}

/// The user this process runs as: the owner of `/proc/self` (Linux), read without `unsafe`.
/// `None` where there is no `/proc`; then nothing is changed.
pub fn process_uid() -> Option<u32> {
    fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// The groups this process belongs to (`Gid` and `Groups` of `/proc/self/status`); empty
/// where there is no `/proc`.
pub fn process_groups() -> Vec<u32> {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return Vec::new();
    };
    status
        .lines()
        .filter_map(|l| l.strip_prefix("Gid:").or_else(|| l.strip_prefix("Groups:")))
        .flat_map(|ids| ids.split_whitespace().filter_map(|g| g.parse().ok()))
        .collect()
}

/// Why a secret file may be read or replaced by someone other than the relay's user, or
/// `None` when it is private enough: readable by others, writable by group or others, or
/// readable by a group the relay does not belong to. Group-readable by one of the relay's own
/// groups is fine: that is how a root-owned file is shared with the relay alone (a Kubernetes
/// Secret volume with the pod's `fsGroup` and `defaultMode: 0440`).
pub fn secret_exposure(path: &Path) -> Option<String> {
    let meta = fs::metadata(path).ok()?;
    let mode = meta.mode() & 0o777;
    let exposure = if mode & 0o004 != 0 {
        "is readable by every user"
    } else if mode & 0o022 != 0 {
        "can be replaced by other users"
    } else if mode & 0o040 != 0 && !process_groups().contains(&meta.gid()) {
        "is readable by a group the relay is not in"
    } else {
        return None;
    };
    Some(format!(
        "{} {exposure} (mode {mode:04o}, owner {}, group {}); make it 0600 (`chmod 600 {}`) or \
         0640 in one of the relay's groups",
        path.display(),
        meta.uid(),
        meta.gid(),
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_files_and_directories_are_private_whatever_the_umask_allows() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        ensure_dir(&dir).unwrap();
        for d in [tmp.path().join("a"), dir.clone()] {
            assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        }
        let file = dir.join("f");
        create_options().open(&file).unwrap();
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn own_open_directories_and_files_are_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("key");
        fs::write(&file, b"k").unwrap();
        fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        tighten_dir(&dir).unwrap();
        tighten_file(&file).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_sticky_shared_directory_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shared");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, Permissions::from_mode(0o1777)).unwrap();
        tighten_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o1777);
    }

    #[test]
    fn secret_files_open_to_others_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("password");
        fs::write(&file, b"s").unwrap();
        for (mode, exposed) in [(0o644, true), (0o604, true), (0o620, true), (0o600, false)] {
            fs::set_permissions(&file, Permissions::from_mode(mode)).unwrap();
            let why = secret_exposure(&file);
            assert_eq!(why.is_some(), exposed, "{mode:o}: {why:?}");
            if let Some(why) = why {
                assert!(why.contains(&file.display().to_string()), "{why}");
            }
        }
        // Group-readable in the relay's own group: how a Secret volume shares a file.
        fs::set_permissions(&file, Permissions::from_mode(0o640)).unwrap();
        assert_eq!(secret_exposure(&file), None);
    }
}
