//! berth-metad. (Being written.)

fn main() {}
