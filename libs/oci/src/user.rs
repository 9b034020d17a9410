//! The process's user: `uid`, `uid:gid`, `name`, `name:group`, `uid:group`
//! or `name:gid`, resolved against the image's `/etc/passwd` and
//! `/etc/group`.
//!
//! A string that does not parse is an error, never root: ids are digits
//! only (no sign, space or exponent) and must fit in 32 bits without being
//! `4294967295` (`(uid_t)-1`, "no change" to the kernel).

use oci_spec::runtime::User;

use crate::error::{OciError, Result};
use crate::rootfs_files::RootfsFiles;

/// The most of `/etc/passwd` or `/etc/group` read.
const MAX_DATABASE_BYTES: u64 = 4 << 20;

/// A name longer than this is not a user or group name.
const MAX_NAME_BYTES: usize = 256;

/// One side of `user[:group]`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Id {
    Number(u32),
    Name(String),
}

/// An entry of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

/// An entry of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves `user` (`""` is root) against the image's files: the uid, the
/// gid (the passwd entry's when no group is given; 0 for a uid without an
/// entry) and the additional gids: the primary gid, then the groups of
/// `/etc/group` that list the user by name (containerd's
/// `WithAdditionalGIDs`), without duplicates.
pub fn resolve_user(user: &str, files: &dyn RootfsFiles) -> Result<User> {
    let (user_part, group_part) = split_user(user)?;
    let passwd = read_passwd(files)?;

    // The uid, the user's name (for group membership) and the gid the
    // passwd entry gives.
    let (uid, name, entry_gid) = match user_part {
        Id::Name(name) => {
            let entry = passwd.into_iter().find(|e| e.name == name).ok_or_else(|| {
                OciError::NotFound(format!("user {name:?} in the image's /etc/passwd"))
            })?;
            (entry.uid, Some(entry.name), entry.gid)
        }
        Id::Number(uid) => match passwd.into_iter().find(|e| e.uid == uid) {
            Some(entry) => (uid, Some(entry.name), entry.gid),
            None => (uid, None, 0),
        },
    };

    let groups = read_group(files)?;
    let gid = match group_part {
        None => entry_gid,
        Some(Id::Number(gid)) => gid,
        Some(Id::Name(group)) => groups
            .iter()
            .find(|g| g.name == group)
            .map(|g| g.gid)
            .ok_or_else(|| {
                OciError::NotFound(format!("group {group:?} in the image's /etc/group"))
            })?,
    };

    let mut additional = vec![gid];
    if let Some(name) = &name {
        for group in &groups {
            // A group named like the user is its own (primary) group, as
            // containerd counts it.
            if group.name != *name
                && group.members.iter().any(|m| m == name)
                && !additional.contains(&group.gid)
            {
                additional.push(group.gid);
            }
        }
    }

    let mut u = User::default();
    u.set_uid(uid);
    u.set_gid(gid);
    u.set_umask(None);
    u.set_additional_gids(Some(additional));
    u.set_username(None);
    Ok(u)
}

/// Splits and parses `user[:group]`; `""` is `0`.
fn split_user(user: &str) -> Result<(Id, Option<Id>)> {
    if user.is_empty() {
        return Ok((Id::Number(0), None));
    }
    let mut parts = user.split(':');
    let user_part = parts.next().unwrap_or_default();
    let group_part = parts.next();
    if parts.next().is_some() {
        return Err(OciError::invalid(format!(
            "user {user:?} is not of the form user[:group]"
        )));
    }
    let u = parse_id(user_part, user, "uid")?;
    let g = group_part.map(|g| parse_id(g, user, "gid")).transpose()?;
    Ok((u, g))
}

/// A number when all digits, else a name; anything else is refused.
fn parse_id(part: &str, whole: &str, what: &str) -> Result<Id> {
    if part.is_empty() {
        return Err(OciError::invalid(format!(
            "user {whole:?} has an empty {what}"
        )));
    }
    if part.bytes().all(|b| b.is_ascii_digit()) {
        return parse_number(part)
            .map(Id::Number)
            .ok_or_else(|| OciError::invalid(format!("user {whole:?}: {what} out of range")));
    }
    // Something number-like that is not a plain decimal ("0x0", "1e3")
    // never becomes a name: an image's /etc/passwd could map it to root
    // (CVE-2026-46680).
    if part.as_bytes()[0].is_ascii_digit() {
        return Err(OciError::invalid(format!(
            "user {whole:?}: {what} {part:?} is not a decimal number"
        )));
    }
    if !valid_name(part) {
        return Err(OciError::invalid(format!(
            "user {whole:?}: {part:?} is neither a number nor a valid name"
        )));
    }
    Ok(Id::Name(part.to_string()))
}

/// A strict id: ASCII digits only, at most `i32::MAX` as runc's own
/// parser allows (larger ids overflowed to 0 in containerd:
/// CVE-2024-40635).
fn parse_number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match s.parse::<u32>() {
        Ok(n) if n <= i32::MAX as u32 => Some(n),
        _ => None,
    }
}

/// Names as shadow-utils and busybox make them, loosely: letters, digits,
/// `_`, `.`, `-` (not first) and a trailing `$` (machine accounts).
fn valid_name(name: &str) -> bool {
    let body = name.strip_suffix('$').unwrap_or(name);
    !body.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && !body.starts_with('-')
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn read_passwd(files: &dyn RootfsFiles) -> Result<Vec<PasswdEntry>> {
    Ok(files
        .read("/etc/passwd", MAX_DATABASE_BYTES)?
        .map(|content| parse_passwd(&String::from_utf8_lossy(&content)))
        .unwrap_or_default())
}

fn read_group(files: &dyn RootfsFiles) -> Result<Vec<GroupEntry>> {
    Ok(files
        .read("/etc/group", MAX_DATABASE_BYTES)?
        .map(|content| parse_group(&String::from_utf8_lossy(&content)))
        .unwrap_or_default())
}

/// `name:password:uid:gid:gecos:home:shell` lines; malformed ones, comments
/// and NIS `+`/`-` lines are skipped.
fn parse_passwd(content: &str) -> Vec<PasswdEntry> {
    content
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() != 7 || !valid_name(fields[0]) {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_string(),
                uid: parse_number(fields[2])?,
                gid: parse_number(fields[3])?,
            })
        })
        .collect()
}

/// `name:password:gid:member,member` lines; malformed ones are skipped.
fn parse_group(content: &str) -> Vec<GroupEntry> {
    content
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() != 4 || !valid_name(fields[0]) {
                return None;
            }
            Some(GroupEntry {
                name: fields[0].to_string(),
                gid: parse_number(fields[2])?,
                members: fields[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::rootfs_files::{HostRootfs, NoRootfsFiles};
    use std::os::unix::fs::symlink;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
www:x:33:33:www-data:/var/www:/usr/sbin/nologin
broken:x:notanumber:5:::
short:x:7
alice:x:1000:1000:Alice:/home/alice:/bin/bash
minus:x:-1:0:::/bin/sh
";

    const GROUP: &str = "\
root:x:0:
daemon:x:1:
www:x:33:alice
staff:x:50:alice,bob
alice:x:1000:alice
audio:x:29:bob
video:x:44: alice
bad:x:abc:alice
";

    fn rootfs(passwd: Option<&str>, group: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        if let Some(p) = passwd {
            std::fs::write(dir.path().join("etc/passwd"), p).unwrap();
        }
        if let Some(g) = group {
            std::fs::write(dir.path().join("etc/group"), g).unwrap();
        }
        dir
    }

    fn ids(u: &User) -> (u32, u32, Vec<u32>) {
        (u.uid(), u.gid(), u.additional_gids().clone().unwrap())
    }

    #[test]
    fn numeric_pair_needs_no_files() {
        let u = resolve_user("1234:1234", &NoRootfsFiles).unwrap();
        assert_eq!(ids(&u), (1234, 1234, vec![1234]));
        assert!(u.umask().is_none());
    }

    #[test]
    fn empty_is_root() {
        let u = resolve_user("", &NoRootfsFiles).unwrap();
        assert_eq!(ids(&u), (0, 0, vec![0]));
    }

    #[test]
    fn numeric_uid_without_entry_gets_gid_0() {
        let u = resolve_user("4242", &NoRootfsFiles).unwrap();
        assert_eq!(ids(&u), (4242, 0, vec![0]));
    }

    /// CVE-2024-40635: ids past `i32::MAX` overflowed to root in
    /// containerd; here they are refused.
    #[test]
    fn out_of_range_and_malformed_ids_are_refused() {
        for bad in [
            "2147483648",
            "1:2147483648",
            "4294967294",
            "4294967295",
            "4294967296",
            "99999999999999999999",
            "-1",
            "+1",
            " 12",
            "12 ",
            "1:-1",
            "0:4294967295",
            ":",
            "1:",
            ":1",
            "1:2:3",
            "a b",
            "root\0",
        ] {
            let err = resolve_user(bad, &NoRootfsFiles).unwrap_err();
            assert!(
                matches!(err, OciError::InvalidArgument(_)),
                "{bad:?}: {err}"
            );
        }
        // i32::MAX is the largest valid id.
        assert_eq!(
            resolve_user("2147483647", &NoRootfsFiles).unwrap().uid(),
            i32::MAX as u32
        );
    }

    /// CVE-2026-46680: a number-like USER that is not a plain decimal
    /// ("0x0") fell back to a name lookup, which an image's /etc/passwd
    /// could map to root. Here it is refused, whatever the passwd says.
    #[test]
    fn number_like_users_are_refused_never_looked_up() {
        let dir = rootfs(
            Some("root:x:0:0::/root:/bin/sh\n0x0:x:0:0::/:/bin/sh\n1e3:x:0:0::/:/bin/sh\n"),
            Some("root:x:0:\n0x0:x:0:\n"),
        );
        let files = HostRootfs::new(dir.path());
        for bad in ["0x0", "1e3", "0x0:0x0", "1000:0x0", "007bond"] {
            let err = resolve_user(bad, &files).unwrap_err();
            assert!(
                matches!(err, OciError::InvalidArgument(_)),
                "{bad:?}: {err}"
            );
        }
        // A real name is still a name, and absent ones are not found.
        let err = resolve_user("nobody", &NoRootfsFiles).unwrap_err();
        assert!(matches!(err, OciError::NotFound(_)), "{err}");
    }

    #[test]
    fn names_from_the_rootfs() {
        let dir = rootfs(Some(PASSWD), Some(GROUP));
        let files = HostRootfs::new(dir.path());
        assert_eq!(ids(&resolve_user("root", &files).unwrap()), (0, 0, vec![0]));
        // alice: primary 1000, plus www, staff and video (" alice" is
        // trimmed), not "bad" (malformed), and her own group only once.
        assert_eq!(
            ids(&resolve_user("alice", &files).unwrap()),
            (1000, 1000, vec![1000, 33, 50, 44])
        );
        assert_eq!(
            ids(&resolve_user("alice:audio", &files).unwrap()),
            (1000, 29, vec![29, 33, 50, 44])
        );
        assert_eq!(
            ids(&resolve_user("www:staff", &files).unwrap()),
            (33, 50, vec![50])
        );
        assert_eq!(
            ids(&resolve_user("1000:7", &files).unwrap()),
            (1000, 7, vec![7, 33, 50, 44])
        );
        assert_eq!(
            ids(&resolve_user("www:100", &files).unwrap()),
            (33, 100, vec![100])
        );
        assert_eq!(
            ids(&resolve_user("5000:staff", &files).unwrap()),
            (5000, 50, vec![50])
        );
    }

    #[test]
    fn numeric_uid_with_entry_takes_its_gid_and_groups() {
        let dir = rootfs(Some(PASSWD), Some(GROUP));
        let files = HostRootfs::new(dir.path());
        assert_eq!(
            ids(&resolve_user("1000", &files).unwrap()),
            (1000, 1000, vec![1000, 33, 50, 44])
        );
        assert_eq!(
            ids(&resolve_user("33", &files).unwrap()),
            (33, 33, vec![33])
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let dir = rootfs(Some(PASSWD), Some(GROUP));
        let files = HostRootfs::new(dir.path());
        for name in ["broken", "short", "minus"] {
            let err = resolve_user(name, &files).unwrap_err();
            assert!(matches!(err, OciError::NotFound(_)), "{name}: {err}");
        }
        let err = resolve_user("alice:bad", &files).unwrap_err();
        assert!(matches!(err, OciError::NotFound(_)));
    }

    #[test]
    fn unknown_names_are_not_found() {
        let dir = rootfs(Some(PASSWD), Some(GROUP));
        let files = HostRootfs::new(dir.path());
        assert!(matches!(
            resolve_user("nobody", &files),
            Err(OciError::NotFound(_))
        ));
        assert!(matches!(
            resolve_user("alice:nogroup", &files),
            Err(OciError::NotFound(_))
        ));
        let no_files = rootfs(None, None);
        assert!(matches!(
            resolve_user("root", &HostRootfs::new(no_files.path())),
            Err(OciError::NotFound(_))
        ));
    }

    #[test]
    fn passwd_symlink_to_a_host_path_is_resolved_in_the_root() {
        // A host file with an entry the image does not have.
        let host = tempfile::tempdir().unwrap();
        let host_passwd = host.path().join("passwd");
        std::fs::write(&host_passwd, "hostuser:x:0:0::/root:/bin/sh\n").unwrap();
        let dir = rootfs(None, Some(GROUP));
        symlink(&host_passwd, dir.path().join("etc/passwd")).unwrap();
        let files = HostRootfs::new(dir.path());
        assert!(matches!(
            resolve_user("hostuser", &files),
            Err(OciError::NotFound(_))
        ));
        // The same path inside the root is what counts.
        let inside = dir.path().join(host.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::write(inside.join("passwd"), "imageuser:x:77:77:::\n").unwrap();
        assert!(matches!(
            resolve_user("hostuser", &files),
            Err(OciError::NotFound(_))
        ));
        assert_eq!(resolve_user("imageuser", &files).unwrap().uid(), 77);
    }

    #[test]
    fn an_oversized_passwd_is_an_error() {
        let big = "x".repeat((MAX_DATABASE_BYTES + 1) as usize);
        let dir = rootfs(Some(&big), None);
        let err = resolve_user("root", &HostRootfs::new(dir.path())).unwrap_err();
        assert!(matches!(err, OciError::InvalidArgument(_)));
    }

    #[test]
    fn parsers_are_strict() {
        let p = parse_passwd("a:x:1:2:::\nb:x:01:2:::\nc:x:1 :2:::\nd:x:1:2::\n:x:1:2:::\n");
        assert_eq!(
            p,
            vec![
                PasswdEntry {
                    name: "a".into(),
                    uid: 1,
                    gid: 2
                },
                PasswdEntry {
                    name: "b".into(),
                    uid: 1,
                    gid: 2
                },
            ]
        );
        let g = parse_group("g:x:5:a,,b\nh:x:6\n");
        assert_eq!(
            g,
            vec![GroupEntry {
                name: "g".into(),
                gid: 5,
                members: vec!["a".into(), "b".into()]
            }]
        );
    }
}
