//! Compiles the node's internal schema (the delivery log's record) with protox, so building
//! Levee needs no `protoc` on the machine. The public protocol is built by `levee-protocol`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "levee/internal/v1/log.proto";
    println!("cargo:rerun-if-changed=proto/{proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
