//! Putting pipelined writes back in order.
//!
//! ttrpc-rust hands every incoming stream frame to a task of its own, so two
//! frames a client sent back to back can reach the handler in either order
//! (seen in the ingest benchmark: a 1 MiB write overtaking the one before
//! it). Each write carries the offset it belongs at; writes that arrive
//! ahead of the ingest's offset wait here until the gap before them fills.

use std::collections::BTreeMap;

use berth_errdefs::{Error, Result};

/// Writes held until the ingest reaches their offset.
#[derive(Debug)]
pub struct InOrder<T> {
    ahead: BTreeMap<u64, (T, usize)>,
    limit: usize,
    byte_limit: usize,
    bytes: usize,
}

impl<T> InOrder<T> {
    /// Holds at most `limit` writes of at most `byte_limit` bytes in all: a
    /// client keeps only a few in flight.
    pub fn new(limit: usize, byte_limit: usize) -> InOrder<T> {
        InOrder {
            ahead: BTreeMap::new(),
            limit,
            byte_limit,
            bytes: 0,
        }
    }

    /// Keeps a write of `len` bytes that belongs at `at`, past the current
    /// offset.
    pub fn hold(&mut self, at: u64, item: T, len: usize) -> Result<()> {
        if self.ahead.len() >= self.limit || self.bytes + len > self.byte_limit {
            return Err(Error::resource_exhausted(format!(
                "more than {} writes or {} bytes ahead of the ingest's offset",
                self.limit, self.byte_limit
            )));
        }
        if self.ahead.contains_key(&at) {
            return Err(Error::invalid_argument(format!(
                "two writes at offset {at}"
            )));
        }
        self.ahead.insert(at, (item, len));
        self.bytes += len;
        Ok(())
    }

    /// The held write that belongs at `offset`, if it has arrived.
    pub fn take(&mut self, offset: u64) -> Option<T> {
        let (item, len) = self.ahead.remove(&offset)?;
        self.bytes -= len;
        Some(item)
    }

    pub fn is_empty(&self) -> bool {
        self.ahead.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_come_out_in_offset_order() {
        // Arrival order 2, 0 (processed at once), 3, 1.
        let mut order = InOrder::new(4, 100);
        let mut offset = 0;
        let mut done = Vec::new();
        for (at, name) in [(20, "c"), (0, "a"), (30, "d"), (10, "b")] {
            if at > offset {
                order.hold(at, name, 10).unwrap();
                continue;
            }
            done.push(name);
            offset += 10;
            while let Some(next) = order.take(offset) {
                done.push(next);
                offset += 10;
            }
        }
        assert_eq!(done, ["a", "b", "c", "d"]);
        assert!(order.is_empty());
    }

    #[test]
    fn holding_is_bounded_and_offsets_are_unique() {
        let mut order = InOrder::new(2, 100);
        order.hold(10, (), 10).unwrap();
        assert_eq!(
            order.hold(10, (), 10).unwrap_err().kind(),
            berth_errdefs::ErrorKind::InvalidArgument
        );
        order.hold(20, (), 10).unwrap();
        assert_eq!(
            order.hold(30, (), 10).unwrap_err().kind(),
            berth_errdefs::ErrorKind::ResourceExhausted
        );
        // Bytes are bounded too, and freed by take.
        let mut order = InOrder::new(10, 100);
        order.hold(10, (), 60).unwrap();
        assert_eq!(
            order.hold(20, (), 50).unwrap_err().kind(),
            berth_errdefs::ErrorKind::ResourceExhausted
        );
        assert_eq!(order.take(10), Some(()));
        order.hold(20, (), 50).unwrap();
    }
}
