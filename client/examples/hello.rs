//! Two people, one relay: Alice and Bob register, Alice sends Bob a message, Bob reads and
//! acknowledges it.
//!
//! Start a node (`cargo run --release -p levee -- up`), then, with the address and
//! fingerprint it printed:
//!
//!     cargo run -p levee-client --example hello -- 127.0.0.1:4433 <fingerprint>

use levee_client::{Client, ClientConfig, Fingerprint, Identity, Trust};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(server), Some(fingerprint)) = (args.next(), args.next()) else {
        return Err("usage: hello <node address> <certificate fingerprint>".into());
    };
    // Self-signed nodes are trusted by pinning the fingerprint they print.
    let fingerprint: Fingerprint = fingerprint.parse()?;
    let config = ClientConfig::new(server.parse()?, Trust::Fingerprint(fingerprint));

    // An account is a key pair; apps keep it with `Identity::write_new` / `Identity::read`.
    let alice = Client::connect(&config, Identity::generate()?).await?;
    let bob = Client::connect(&config, Identity::generate()?).await?;
    // Registering waits in the signup line if the node is busy (see `register_waiting`).
    alice.register().await?;
    bob.register().await?;

    // The relay stores opaque bytes: a real app encrypts end to end before sending.
    let id = alice.send(&bob.account(), b"hello, Bob".to_vec()).await?;
    println!("Alice sent envelope {id}: stored durably before this returned");

    let mut inbox = bob.subscribe().await?;
    let Some(delivery) = inbox.next().await else {
        return Err("the connection closed before the message came".into());
    };
    println!(
        "Bob received envelope {}: {}",
        delivery.envelope_id,
        String::from_utf8_lossy(&delivery.ciphertext)
    );
    // Until acknowledged, an envelope is delivered again on every new subscription.
    bob.ack(&[delivery.envelope_id]).await?;
    println!("Bob acknowledged it; the relay deleted it");

    alice.close().await;
    bob.close().await;
    Ok(())
}
