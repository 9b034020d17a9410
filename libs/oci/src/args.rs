//! The process's arguments, environment and working directory.

use crate::error::{OciError, Result};
use crate::image::ImageDefaults;
use crate::options::SpecOptions;

/// The `PATH` a process gets when neither the image nor the caller set one.
pub(crate) const DEFAULT_PATH: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The entrypoint followed by the command, after the caller's overrides:
/// `args` replace the image's `Cmd`; an `entrypoint` replaces the image's
/// `Entrypoint` and drops its `Cmd` (as docker does).
pub(crate) fn process_args(image: &ImageDefaults, options: &SpecOptions) -> Result<Vec<String>> {
    let (entrypoint, image_cmd): (&[String], &[String]) = match &options.entrypoint {
        Some(entrypoint) => (entrypoint, &[]),
        None => (&image.entrypoint, &image.cmd),
    };
    let cmd = if options.args.is_empty() {
        image_cmd
    } else {
        &options.args
    };
    let args: Vec<String> = entrypoint.iter().chain(cmd).cloned().collect();
    if args.is_empty() {
        return Err(OciError::invalid(
            "no command: the image has no Entrypoint or Cmd and none was given",
        ));
    }
    if let Some(bad) = args.iter().find(|a| a.contains('\0')) {
        return Err(OciError::invalid(format!(
            "argument {bad:?} contains a NUL byte"
        )));
    }
    Ok(args)
}

/// The image's environment with the caller's entries replacing those of
/// the same key (or appended), then `PATH` and, with a terminal, `TERM`
/// when absent.
pub(crate) fn process_env(image: &ImageDefaults, options: &SpecOptions) -> Result<Vec<String>> {
    let mut env: Vec<String> = Vec::with_capacity(image.env.len() + options.env.len() + 2);
    for entry in &image.env {
        // An entry without `=` means nothing to execve's callers; a NUL
        // would make the whole environment unusable.
        if entry.contains('\0') {
            return Err(OciError::invalid(format!(
                "the image's environment entry {entry:?} contains a NUL byte"
            )));
        }
        if env_key(entry).is_some() {
            set_env(&mut env, entry);
        }
    }
    for entry in &options.env {
        if env_key(entry).is_none() || entry.contains('\0') {
            return Err(OciError::invalid(format!(
                "environment entry {entry:?} is not KEY=VALUE"
            )));
        }
        set_env(&mut env, entry);
    }
    if !has_key(&env, "PATH") {
        env.push(DEFAULT_PATH.to_string());
    }
    if options.terminal && !has_key(&env, "TERM") {
        env.push("TERM=xterm".to_string());
    }
    Ok(env)
}

/// The working directory: the caller's (absolute), else the image's, else
/// `/`.
pub(crate) fn process_cwd(image: &ImageDefaults, options: &SpecOptions) -> Result<String> {
    if let Some(cwd) = &options.cwd {
        if !cwd.starts_with('/') || cwd.contains('\0') {
            return Err(OciError::invalid(format!(
                "working directory {cwd:?} is not an absolute path"
            )));
        }
        return Ok(cwd.clone());
    }
    let wd = &image.working_dir;
    if wd.contains('\0') {
        return Err(OciError::invalid(format!(
            "the image's working directory {wd:?} contains a NUL byte"
        )));
    }
    Ok(if wd.is_empty() {
        "/".to_string()
    } else if wd.starts_with('/') {
        wd.clone()
    } else {
        // runc needs an absolute cwd; docker resolves a relative WorkingDir
        // against the root.
        format!("/{wd}")
    })
}

/// The key of a `KEY=VALUE` entry; `None` when there is no `=` or no key.
fn env_key(entry: &str) -> Option<&str> {
    match entry.split_once('=') {
        Some((key, _)) if !key.is_empty() => Some(key),
        _ => None,
    }
}

fn has_key(env: &[String], key: &str) -> bool {
    env.iter().any(|e| env_key(e) == Some(key))
}

/// Replaces the entry of the same key in place, or appends.
fn set_env(env: &mut Vec<String>, entry: &str) {
    let key = env_key(entry);
    match env.iter_mut().find(|e| env_key(e) == key) {
        Some(existing) => *existing = entry.to_string(),
        None => env.push(entry.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn image() -> ImageDefaults {
        ImageDefaults {
            entrypoint: strings(&["/entry", "-v"]),
            cmd: strings(&["serve"]),
            ..ImageDefaults::default()
        }
    }

    #[test]
    fn entrypoint_then_cmd() {
        let o = SpecOptions::new("default", "c1");
        assert_eq!(
            process_args(&image(), &o).unwrap(),
            ["/entry", "-v", "serve"]
        );
    }

    #[test]
    fn args_replace_cmd_and_keep_entrypoint() {
        let mut o = SpecOptions::new("default", "c1");
        o.args = strings(&["run", "fast"]);
        assert_eq!(
            process_args(&image(), &o).unwrap(),
            ["/entry", "-v", "run", "fast"]
        );
    }

    #[test]
    fn entrypoint_override_drops_the_image_cmd() {
        let mut o = SpecOptions::new("default", "c1");
        o.entrypoint = Some(strings(&["/bin/sh"]));
        assert_eq!(process_args(&image(), &o).unwrap(), ["/bin/sh"]);
        o.args = strings(&["-c", "true"]);
        assert_eq!(
            process_args(&image(), &o).unwrap(),
            ["/bin/sh", "-c", "true"]
        );
    }

    #[test]
    fn cmd_alone_is_the_command() {
        let img = ImageDefaults {
            cmd: strings(&["/bin/sh"]),
            ..ImageDefaults::default()
        };
        let o = SpecOptions::new("default", "c1");
        assert_eq!(process_args(&img, &o).unwrap(), ["/bin/sh"]);
    }

    #[test]
    fn no_command_is_an_error() {
        let o = SpecOptions::new("default", "c1");
        let err = process_args(&ImageDefaults::default(), &o).unwrap_err();
        assert!(matches!(err, OciError::InvalidArgument(m) if m.contains("no command")));
        // An empty entrypoint override with an image that only has an
        // entrypoint leaves nothing to run either.
        let img = ImageDefaults {
            entrypoint: strings(&["/entry"]),
            ..ImageDefaults::default()
        };
        let mut o = SpecOptions::new("default", "c1");
        o.entrypoint = Some(Vec::new());
        assert!(process_args(&img, &o).is_err());
    }

    #[test]
    fn nul_in_args_is_refused() {
        let mut o = SpecOptions::new("default", "c1");
        o.args = strings(&["a\0b"]);
        assert!(process_args(&image(), &o).is_err());
    }

    #[test]
    fn env_merges_with_later_winning_and_adds_path() {
        let img = ImageDefaults {
            env: strings(&["A=1", "B=2", "NOEQUALS"]),
            ..ImageDefaults::default()
        };
        let mut o = SpecOptions::new("default", "c1");
        o.env = strings(&["B=3", "C=4=5", "A="]);
        let env = process_env(&img, &o).unwrap();
        assert_eq!(env, ["A=", "B=3", "C=4=5", DEFAULT_PATH]);
    }

    #[test]
    fn image_path_is_kept() {
        let img = ImageDefaults {
            env: strings(&["PATH=/opt/bin"]),
            ..ImageDefaults::default()
        };
        let o = SpecOptions::new("default", "c1");
        assert_eq!(process_env(&img, &o).unwrap(), ["PATH=/opt/bin"]);
    }

    #[test]
    fn term_only_with_a_terminal_and_when_absent() {
        let img = ImageDefaults::default();
        let mut o = SpecOptions::new("default", "c1");
        assert!(!process_env(&img, &o)
            .unwrap()
            .iter()
            .any(|e| e.starts_with("TERM=")));
        o.terminal = true;
        assert!(process_env(&img, &o)
            .unwrap()
            .contains(&"TERM=xterm".to_string()));
        o.env = strings(&["TERM=vt100"]);
        let env = process_env(&img, &o).unwrap();
        assert!(env.contains(&"TERM=vt100".to_string()));
        assert!(!env.contains(&"TERM=xterm".to_string()));
    }

    #[test]
    fn env_without_value_or_key_is_refused() {
        for bad in ["KEY", "=value", "K=\0"] {
            let mut o = SpecOptions::new("default", "c1");
            o.env = strings(&[bad]);
            let err = process_env(&ImageDefaults::default(), &o).unwrap_err();
            assert!(matches!(err, OciError::InvalidArgument(_)), "{bad:?}");
        }
    }

    #[test]
    fn cwd_order_and_validation() {
        let mut img = ImageDefaults::default();
        let mut o = SpecOptions::new("default", "c1");
        assert_eq!(process_cwd(&img, &o).unwrap(), "/");
        img.working_dir = "/srv".into();
        assert_eq!(process_cwd(&img, &o).unwrap(), "/srv");
        img.working_dir = "app".into();
        assert_eq!(process_cwd(&img, &o).unwrap(), "/app");
        o.cwd = Some("/work".into());
        assert_eq!(process_cwd(&img, &o).unwrap(), "/work");
        o.cwd = Some("work".into());
        assert!(process_cwd(&img, &o).is_err());
    }
}
