//! placeholder
#[derive(Debug)]
pub struct Snapshot;
#[derive(Debug)]
pub struct SnapshotError;
