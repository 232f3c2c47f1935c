//! Many relay nodes as one cluster: who is in it ([`Roster`]), which node serves which
//! mailbox ([`ClusterView`], from the placement in `levee-sharding`), and the embedded
//! multi-node deployment ([`LocalCluster`], `levee up --nodes N`).

mod local;
mod roster;
mod view;

pub use local::{ClusterError, LocalCluster, NodeSummary};
pub use roster::{LocalRoster, NodeInfo, NodeState, Roster, RosterError, RosterSnapshot};
pub use view::{ClusterView, Route};
