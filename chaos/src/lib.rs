//! Levee chaos drills.
//!
//! Placeholder crate: the drill runner (scenarios, fault injection, ledger verification and
//! reports) is built by the chaos-drill issue. The crate exists now so that the workspace has
//! the layout of the design card from the first commit.
