//! Generates prost messages and tonic client/server stubs from the .proto files.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/xdpgate/control/v1/control.proto",
        "proto/xdpgate/front/v1/front.proto",
        "proto/xdpgate/cluster/v1/cluster.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure().compile_protos(&protos, &["proto"])?;
    Ok(())
}
