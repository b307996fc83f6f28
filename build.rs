//! Generates the gRPC code, its proto3 JSON mapping (pbjson), the table of
//! methods the Connect protocol routes, and the file descriptor set served
//! by reflection. protoc comes from `protoc-bin-vendored` unless `PROTOC`
//! is set.

use std::fmt::Write as _;
use std::{env, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the
        // environment concurrently.
        unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let well_known = protoc_bin_vendored::include_path()?;
    let descriptor_path = out.join("leadscore_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        // Well-known types with their JSON mapping (Timestamp as RFC 3339,
        // Duration as "1.5s").
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_protos(
            &[PathBuf::from("proto/leadscore/v1/leadscore.proto")],
            &[PathBuf::from("proto"), well_known],
        )?;
    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new().register_descriptors(&descriptors)?.build(&[".leadscore.v1"])?;
    std::fs::write(out.join("leadscore.v1.methods.rs"), methods(&descriptors)?)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

/// Every method of `leadscore.v1` as a `connect::Method`, typed by its
/// request and response messages.
fn methods(descriptors: &[u8]) -> Result<String, Box<dyn std::error::Error>> {
    let set = prost_types::FileDescriptorSet::decode(descriptors)?;
    let mut out = String::from(
        "/// Every method of `leadscore.v1`, generated from the proto.\npub const METHODS: &[crate::connect::Method] = &[\n",
    );
    let message = |name: &str| name.trim_start_matches(".leadscore.v1.").to_owned();
    for file in set.file.iter().filter(|f| f.package() == "leadscore.v1") {
        for service in &file.service {
            for method in &service.method {
                let (request, response) = (message(method.input_type()), message(method.output_type()));
                writeln!(
                    out,
                    "    crate::connect::Method {{ path: \"/leadscore.v1.{}/{}\", server_streaming: {}, request: \
                     crate::connect::json_to_proto::<{request}>, response: crate::connect::proto_to_json::<{response}> \
                     }},",
                    service.name(),
                    method.name(),
                    method.server_streaming(),
                )?;
            }
        }
    }
    out.push_str("];\n");
    Ok(out)
}
