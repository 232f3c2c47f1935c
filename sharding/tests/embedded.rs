//! The mailbox-store contract against the embedded (fjall) store.
#![allow(clippy::unwrap_used)]

mod contract;

use levee_sharding::{EmbeddedMailboxStore, EmbeddedStore};

#[tokio::test]
async fn the_embedded_store_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedMailboxStore::open(&EmbeddedStore::open(dir.path()).unwrap()).unwrap();
    contract::all(&store).await;
}
