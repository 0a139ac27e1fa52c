//! Compiles `proto/kv.proto` with protox (a protobuf compiler in Rust, so no `protoc` is
//! needed) and generates the prost types.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/kv.proto");
    let descriptors = protox::compile(["proto/kv.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
