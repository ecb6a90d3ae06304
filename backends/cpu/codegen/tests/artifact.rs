//! Artifacts: compiled to an object, linked into a shared library, loaded
//! by the device crate and called; cross targets produce an object only.

mod common;

use common::{assert_close, random, reference};
use m4c_cpu_codegen::gemm::GemmSpec;
use m4c_cpu_codegen::{ArtifactBuilder, Target};
use m4c_cpu_device::{KernelLibrary, ThreadPool};

#[test]
fn shared_library_kernels_match_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let shapes = [("proj", 9, 70, 45), ("tiny", 1, 2, 3)];
    let mut builder = ArtifactBuilder::new(&Target::parse(None, None).unwrap());
    for (i, &(name, _, k, n)) in shapes.iter().enumerate() {
        builder
            .add_gemm(
                GemmSpec::new(name, shapes[i].1, k, n),
                &random(k * n, i as u64),
            )
            .unwrap();
    }
    let manifest = builder.write(dir.path()).unwrap();
    assert!(manifest.library.is_some());
    assert_eq!(manifest.gemms[1].weights_offset % 16, 0);

    let library = KernelLibrary::open(dir.path()).unwrap();
    let pool = ThreadPool::new(2).unwrap();
    for (i, &(name, m, k, n)) in shapes.iter().enumerate() {
        let kernel = library.gemm(name).unwrap();
        let mut scratch = kernel.scratch_for(&pool);
        let a = random(m * k, 100 + i as u64);
        let mut c = vec![0.0; m * n];
        kernel.run(&a, &mut c, &pool, &mut scratch).unwrap();
        let (exact, magnitude) =
            reference(&a, &random(k * n, i as u64), &vec![0.0; m * n], m, k, n);
        assert_close(&c, &exact, &magnitude, k);
    }
    let err = library.gemm("missing").err().unwrap().to_string();
    assert_eq!(err, "no kernel named `missing` in the artifact");
}

#[test]
fn aarch64_artifact_is_an_object_without_library() {
    let dir = tempfile::tempdir().unwrap();
    let mut builder = ArtifactBuilder::new(&Target::parse(Some("aarch64"), None).unwrap());
    builder
        .add_gemm(GemmSpec::new("g", 5, 6, 7), &random(42, 1))
        .unwrap();
    let manifest = builder.write(dir.path()).unwrap();
    assert_eq!(manifest.library, None);
    let object = std::fs::read(dir.path().join(&manifest.object)).unwrap();
    // ELF, 64-bit, little-endian, machine EM_AARCH64 (183).
    assert_eq!(&object[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([object[18], object[19]]), 183);
    let err = KernelLibrary::open(dir.path()).err().unwrap().to_string();
    assert!(
        err.ends_with("no shared library (cross-compiled artifact)"),
        "{err}"
    );
}

#[test]
fn duplicate_symbols_are_rejected() {
    let mut builder = ArtifactBuilder::new(&Target::parse(None, None).unwrap());
    builder
        .add_gemm(GemmSpec::new("g", 1, 1, 1), &[1.0])
        .unwrap();
    let err = builder
        .add_gemm(GemmSpec::new("g", 1, 1, 1), &[1.0])
        .unwrap_err();
    assert_eq!(err.to_string(), "two kernels are named `g`");
}
