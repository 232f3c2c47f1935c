//! Door passes as a node's door checks them, from the QUIC token of a connection's first
//! packet: any bytes, and passes the node sealed itself for one address, tried from another
//! or altered by one bit.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use levee_relay::admission::PassKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = PassKey::new(b"a cluster key for fuzzing");
    if data.len() < 27 {
        let _ = key.admits(data, IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        return;
    }
    let (head, token) = data.split_at(27);
    let v6: [u8; 16] = head[..16].try_into().expect("16 bytes");
    let ip = if head[16] & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(v6[0], v6[1], v6[2], v6[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(v6))
    };
    let now = u64::from_be_bytes(head[17..25].try_into().expect("8 bytes"));
    // Presented bytes: admitted or not, never a panic.
    let _ = key.admits(token, ip, now);
    // A pass the node sealed: admitted before it expires, from its address only.
    let expires = now.wrapping_add(u64::from(head[25]));
    let mut pass = key.seal(ip, expires);
    assert_eq!(key.admits(&pass, ip, now), now < expires);
    let elsewhere = match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) ^ 1)),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) ^ 1)),
    };
    assert!(!key.admits(&pass, elsewhere, now));
    let at = usize::from(head[26]) % (pass.len() * 8);
    pass[at / 8] ^= 1 << (at % 8);
    assert!(!key.admits(&pass, ip, now));
});
