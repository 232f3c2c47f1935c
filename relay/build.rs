//! Compiles the protobuf schemas with protox (a pure-Rust protobuf compiler), so building
//! Levee needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["levee/v1/levee.proto", "levee/internal/v1/log.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed=proto/{p}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
