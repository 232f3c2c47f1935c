//! The proof-of-work check a node makes on a registration: any nonce, key, difficulty and
//! solution. Checked beyond "no panic": zero bits always pass; a proof of b bits proves
//! every lower difficulty; what the client's solver finds verifies.
#![no_main]

use levee_protocol::work::{solve_work, verify_work};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 73 {
        return;
    }
    let (nonce, key) = (&data[..32], &data[32..64]);
    let bits = u32::from(data[64] % 64);
    let solution = u64::from_be_bytes(data[65..73].try_into().expect("8 bytes"));
    // The node also gets nonces and keys of other lengths from broken clients.
    let _ = verify_work(&data[73..], nonce, bits, solution);
    assert!(verify_work(nonce, key, 0, solution));
    if bits > 0 && verify_work(nonce, key, bits, solution) {
        assert!(verify_work(nonce, key, bits - 1, solution));
    }
    // A few hundred hashes at most, so the fuzzer keeps its pace.
    let small = bits % 8;
    assert!(verify_work(
        nonce,
        key,
        small,
        solve_work(nonce, key, small)
    ));
});
