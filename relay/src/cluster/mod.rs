//! Many relay nodes as one cluster: who is in it ([`Roster`]), which node serves which
//! mailbox ([`ClusterView`], from the placement in `levee-sharding`), and the embedded
//! multi-node deployment ([`LocalCluster`], `levee up --nodes N`). Separate processes share
//! a [`CqlRoster`] in the database that holds their mailboxes.

mod cql_roster;
mod local;
mod roster;
mod view;

pub use cql_roster::CqlRoster;
pub use local::{ClusterError, LocalCluster, NodeSummary};
pub use roster::{LocalRoster, NodeInfo, NodeState, Roster, RosterError, RosterSnapshot};
pub use view::{ClusterView, Route};
