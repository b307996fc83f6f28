//! Generates the gRPC code and the file descriptor set served by reflection.
//! protoc comes from `protoc-bin-vendored` unless `PROTOC` is set.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the
        // environment concurrently.
        unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let well_known = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure().file_descriptor_set_path(out.join("leadscore_descriptor.bin")).compile_protos(
        &[PathBuf::from("proto/leadscore/v1/leadscore.proto")],
        &[PathBuf::from("proto"), well_known],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
