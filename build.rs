//! Compiles proto/ with protox (no system protoc needed), generates the tonic server and client, and writes the
//! encoded FileDescriptorSet that server reflection serves.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "cachecoord/v1/cache_service.proto",
    "cachecoord/v1/loader_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("cachecoord_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".cachecoord.v1")
        .compile_fds(fds)?;
    Ok(())
}
