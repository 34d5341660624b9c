//! Compiles `proto/*.proto` with protox (pure Rust), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/replication.proto", "proto/forward.proto", "proto/quorum.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Forwarded frames and replies pass through without a copy.
        .bytes(".msglog.forward.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
