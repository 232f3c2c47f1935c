//! Many relay nodes as one cluster: who is in it ([`Roster`]), which node serves which
//! mailbox ([`ClusterView`], from the placement in `levee-sharding`), and the embedded
//! multi-node deployment ([`LocalCluster`], `levee up --nodes N`). Separate processes share
//! a [`CqlRoster`] in the database that holds their mailboxes. Which node delivers a shard
//! right now is its lease ([`ShardLeases`]: [`LocalLeases`] in one process, [`CqlLeases`]
//! in the shared database).

mod cql;
mod cql_leases;
mod cql_roster;
mod lease;
mod local;
mod roster;
mod view;

pub use cql_leases::CqlLeases;
pub use cql_roster::CqlRoster;
pub use lease::{Claim, Lease, LeaseError, LeaseRow, LocalLeases, ShardLeases, Taking, claim};
pub use local::{ClusterError, LocalCluster, NodeSummary};
pub use roster::{LocalRoster, NodeInfo, NodeState, Roster, RosterError, RosterSnapshot};
pub use view::{ClusterView, Route};
