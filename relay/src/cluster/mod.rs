//! Many relay nodes as one cluster: who is in it ([`Roster`]) and which node serves which
//! mailbox ([`ClusterView`], from the placement in `levee-sharding`). Nodes in one process
//! share a [`LocalRoster`]; separate processes share a `CqlRoster` in the database that holds
//! their mailboxes. Which node delivers a shard right now is its lease ([`ShardLeases`]:
//! [`LocalLeases`] in one process, `CqlLeases` in the shared database). The CQL pair is
//! built with the `cql` feature.

#[cfg(feature = "cql")]
mod cql;
#[cfg(feature = "cql")]
mod cql_leases;
#[cfg(feature = "cql")]
mod cql_roster;
mod lease;
mod roster;
mod view;

#[cfg(feature = "cql")]
pub use cql_leases::CqlLeases;
#[cfg(feature = "cql")]
pub use cql_roster::CqlRoster;
pub use lease::{Claim, Lease, LeaseError, LeaseRow, LocalLeases, ShardLeases, Taking, claim};
pub use roster::{
    LINE_REPORT_LIFE, LocalRoster, NodeInfo, NodeState, Roster, RosterError, RosterSnapshot,
};
pub use view::{ClusterView, Route};
