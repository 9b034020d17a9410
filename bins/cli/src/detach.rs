//! Detach keys: the key sequence that leaves an attached task running
//! (`ctrl-p,ctrl-q` by default, as docker and nerdctl have it).

use anyhow::{bail, Result};

/// The default sequence, as docker's.
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-p,ctrl-q";

/// Parses docker's notation: comma-separated keys, each a single
/// character or `ctrl-X` (X one of `a`-`z`, `@`, `[`, `\`, `]`, `^`, `_`).
/// An empty string means no sequence: detaching is off.
pub fn parse(keys: &str) -> Result<Vec<u8>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    keys.split(',')
        .map(|key| {
            let mut chars = key.chars();
            match (key.strip_prefix("ctrl-"), chars.next(), chars.next()) {
                (Some(rest), _, _) => {
                    let mut rest_chars = rest.chars();
                    match (rest_chars.next(), rest_chars.next()) {
                        (Some(c @ 'a'..='z'), None) => Ok(c as u8 - b'a' + 1),
                        (Some(c @ ('@' | '[' | '\\' | ']' | '^' | '_')), None) => {
                            Ok(c as u8 - b'@')
                        }
                        _ => bail!("detach keys: unknown key {key:?}"),
                    }
                }
                (None, Some(c), None) if c.is_ascii() && !c.is_ascii_control() => Ok(c as u8),
                _ => bail!("detach keys: unknown key {key:?} (a character or ctrl-X)"),
            }
        })
        .collect()
}

/// Watches a byte stream for the sequence. Bytes that might begin it are
/// held back until it is complete (then dropped: they are the user's
/// command to us, not input for the task) or broken (then passed on).
#[derive(Debug, Clone)]
pub struct DetachWatch {
    sequence: Vec<u8>,
    matched: usize,
}

/// What to do with a chunk of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Watched {
    /// Forward these bytes (possibly none, while a sequence may be starting).
    Forward(Vec<u8>),
    /// The sequence was typed: forward these bytes (those before it), then
    /// detach.
    Detach(Vec<u8>),
}

impl DetachWatch {
    pub fn new(sequence: Vec<u8>) -> DetachWatch {
        DetachWatch {
            sequence,
            matched: 0,
        }
    }

    pub fn feed(&mut self, input: &[u8]) -> Watched {
        if self.sequence.is_empty() {
            return Watched::Forward(input.to_vec());
        }
        let mut out = Vec::with_capacity(input.len());
        for &byte in input {
            if byte == self.sequence[self.matched] {
                self.matched += 1;
                if self.matched == self.sequence.len() {
                    self.matched = 0;
                    return Watched::Detach(out);
                }
                continue;
            }
            // Broken: what was held back was input after all; the byte may
            // itself begin the sequence again.
            out.extend_from_slice(&self.sequence[..self.matched]);
            if byte == self.sequence[0] {
                self.matched = 1;
            } else {
                self.matched = 0;
                out.push(byte);
            }
        }
        Watched::Forward(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_characters_or_ctrl_letters() {
        assert_eq!(parse(DEFAULT_DETACH_KEYS).unwrap(), vec![0x10, 0x11]);
        assert_eq!(parse("ctrl-a,x").unwrap(), vec![0x01, b'x']);
        assert_eq!(
            parse("ctrl-@,ctrl-[,ctrl-\\,ctrl-_").unwrap(),
            vec![0, 0x1b, 0x1c, 0x1f]
        );
        assert_eq!(parse("").unwrap(), Vec::<u8>::new());
        for bad in ["ctrl-", "ctrl-ab", "ctrl-A", "xy", "ctrl-1", ",", "a,,b"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_sequence_detaches_and_is_not_forwarded() {
        let mut watch = DetachWatch::new(vec![0x10, 0x11]);
        assert_eq!(watch.feed(b"ls\n"), Watched::Forward(b"ls\n".to_vec()));
        assert_eq!(watch.feed(b"ab\x10\x11cd"), Watched::Detach(b"ab".to_vec()));
        // Split across reads.
        let mut watch = DetachWatch::new(vec![0x10, 0x11]);
        assert_eq!(watch.feed(b"x\x10"), Watched::Forward(b"x".to_vec()));
        assert_eq!(watch.feed(b"\x11"), Watched::Detach(Vec::new()));
    }

    #[test]
    fn a_broken_sequence_is_passed_on_whole() {
        let mut watch = DetachWatch::new(vec![0x10, 0x11]);
        assert_eq!(watch.feed(b"\x10"), Watched::Forward(Vec::new()));
        assert_eq!(watch.feed(b"q"), Watched::Forward(b"\x10q".to_vec()));
        // A repeated first key: the first is input, the second may start it.
        assert_eq!(
            watch.feed(b"\x10\x10\x11"),
            Watched::Detach(b"\x10".to_vec())
        );
        // Off: everything is input.
        let mut off = DetachWatch::new(Vec::new());
        assert_eq!(
            off.feed(b"\x10\x11"),
            Watched::Forward(b"\x10\x11".to_vec())
        );
    }
}
