//! `berth run --userns-remap USER[:GROUP]`: a user namespace whose root is
//! the first subordinate id range of USER in /etc/subuid and of GROUP
//! (default: USER) in /etc/subgid, as nerdctl and docker read them. The
//! files name a user or group by name or by number; either matches.

use std::path::Path;

use anyhow::{bail, Context, Result};
use berth_oci::{LinuxIdMappingBuilder, UserNamespace};

pub const SUBUID: &str = "/etc/subuid";
pub const SUBGID: &str = "/etc/subgid";

/// The user namespace `--userns-remap VALUE` asks for, from the given
/// subordinate id files.
pub fn remap(value: &str, subuid: &Path, subgid: &Path) -> Result<UserNamespace> {
    let (user, group) = value.split_once(':').unwrap_or((value, value));
    if user.is_empty() || group.is_empty() {
        bail!("--userns-remap {value:?}: USER[:GROUP]");
    }
    let user_keys = names_of(
        user,
        |uid| {
            nix::unistd::User::from_uid(uid.into())
                .ok()
                .flatten()
                .map(|u| u.name)
        },
        |name| {
            nix::unistd::User::from_name(name)
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw())
        },
    );
    let group_keys = names_of(
        group,
        |gid| {
            nix::unistd::Group::from_gid(gid.into())
                .ok()
                .flatten()
                .map(|g| g.name)
        },
        |name| {
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
        },
    );
    let mapping = |file: &Path, keys: &[String], what: &str| -> Result<berth_oci::LinuxIdMapping> {
        let (start, count) = first_range(file, keys)?.with_context(|| {
            format!(
                "--userns-remap: {what} {:?} has no range in {}",
                keys[0],
                file.display()
            )
        })?;
        Ok(LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(start)
            .size(count)
            .build()?)
    };
    Ok(UserNamespace {
        path: None,
        uid_mappings: vec![mapping(subuid, &user_keys, "user")?],
        gid_mappings: vec![mapping(subgid, &group_keys, "group")?],
    })
}

/// The forms a user or group goes by in the files: as given, and its
/// number or name from the host's databases.
fn names_of(
    given: &str,
    name_of: impl Fn(u32) -> Option<String>,
    number_of: impl Fn(&str) -> Option<u32>,
) -> Vec<String> {
    let mut keys = vec![given.to_string()];
    let other = match given.parse::<u32>() {
        Ok(number) if given.bytes().all(|b| b.is_ascii_digit()) => name_of(number),
        _ => number_of(given).map(|n| n.to_string()),
    };
    keys.extend(other);
    keys
}

/// The first `KEY:START:COUNT` line of `file` whose key is one of `keys`;
/// None if there is none or no file. A malformed line that would match is
/// an error, not skipped.
fn first_range(file: &Path, keys: &[String]) -> Result<Option<(u32, u32)>> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split(':');
        let key = fields.next().unwrap_or("");
        if !keys.iter().any(|k| k == key) {
            continue;
        }
        let number = |field: Option<&str>| -> Option<u32> {
            let field = field?;
            field
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| field.parse().ok())
                .flatten()
        };
        match (number(fields.next()), number(fields.next()), fields.next()) {
            (Some(start), Some(count), None) if count > 0 => return Ok(Some((start, count))),
            _ => bail!(
                "{} line {}: not NAME:START:COUNT: {line:?}",
                file.display(),
                n + 1
            ),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn files(
        subuid: &str,
        subgid: &str,
    ) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (u, g) = (dir.path().join("subuid"), dir.path().join("subgid"));
        std::fs::write(&u, subuid).unwrap();
        std::fs::write(&g, subgid).unwrap();
        (dir, u, g)
    }

    #[test]
    fn the_first_range_of_the_user_and_group_is_root_inside() {
        let (_dir, u, g) = files(
            "# comment\nother:1000:10\nberthtest:200000:65536\nberthtest:900000:65536\n",
            "berthtest:300000:1000\nstaff:400000:65536\n",
        );
        let ns = remap("berthtest", &u, &g).unwrap();
        assert!(ns.path.is_none());
        let (uid, gid) = (&ns.uid_mappings[0], &ns.gid_mappings[0]);
        assert_eq!(
            (uid.container_id(), uid.host_id(), uid.size()),
            (0, 200000, 65536)
        );
        assert_eq!(
            (gid.container_id(), gid.host_id(), gid.size()),
            (0, 300000, 1000)
        );
        let ns = remap("berthtest:staff", &u, &g).unwrap();
        assert_eq!(ns.gid_mappings[0].host_id(), 400000);
    }

    #[test]
    fn a_user_is_found_by_name_or_number() {
        // root is uid 0 and group 0 on every host.
        let (_dir, u, g) = files("0:500000:65536\n", "root:600000:65536\n");
        let ns = remap("root", &u, &g).unwrap();
        assert_eq!(ns.uid_mappings[0].host_id(), 500000);
        let ns = remap("0", &u, &g).unwrap();
        assert_eq!(ns.gid_mappings[0].host_id(), 600000);
    }

    #[test]
    fn missing_or_malformed_ranges_are_refused() {
        let (_dir, u, g) = files(
            "berthtest:200000:65536\nbad:x:1\nzero:1:0\n",
            "berthtest:1:1\n",
        );
        for value in [
            "nobody-here",
            "",
            ":x",
            "bad",
            "zero",
            "berthtest:nobody-here",
        ] {
            assert!(remap(value, &u, &g).is_err(), "{value:?}");
        }
        let missing = Path::new("/nonexistent/subuid");
        assert!(remap("berthtest", missing, &g).is_err());
    }
}
