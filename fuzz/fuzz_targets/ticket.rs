//! Waiting-line tickets as a node opens them: any bytes a client presents, and tickets the
//! node sealed itself from fuzzed fields, then possibly altered by one bit.
#![no_main]

use levee_relay::admission::{Ticket, TicketError, TicketKey, key_hash};
use libfuzzer_sys::fuzz_target;

fn u64_at(data: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(data[at..at + 8].try_into().expect("8 bytes"))
}

fuzz_target!(|data: &[u8]| {
    let key = TicketKey::new(b"a cluster key for fuzzing");
    // Presented bytes: opened or refused, never a panic.
    let (registration_key, presented) = data.split_at(data.len().min(32));
    let _ = key.open(presented, registration_key, 0);
    if data.len() < 64 {
        return;
    }
    let registration_key = &data[..32];
    let ticket = Ticket {
        position: u64_at(data, 32),
        issued_at_ms: u64_at(data, 40),
        expires_at_ms: u64_at(data, 48),
        key_hash: key_hash(registration_key),
        node_id: u32::from_be_bytes(data[56..60].try_into().expect("4 bytes")),
    };
    let now = ticket.issued_at_ms;
    let mut sealed = key.seal(&ticket);
    let expected = if now < ticket.expires_at_ms {
        Ok(ticket.clone())
    } else {
        Err(TicketError::Expired)
    };
    assert_eq!(key.open(&sealed, registration_key, now), expected);
    // Someone else's key: refused whatever the rest.
    let mut other = registration_key.to_vec();
    other[0] ^= 1;
    assert!(key.open(&sealed, &other, now).is_err());
    // One flipped bit anywhere: refused.
    let bit = usize::from(data[60]) * 256 + usize::from(data[61]);
    let at = bit / 8 % sealed.len();
    sealed[at] ^= 1 << (bit % 8);
    assert!(key.open(&sealed, registration_key, now).is_err());
});
