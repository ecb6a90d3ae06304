//! GPU code in firmware: `m4c firmware build --backend gpu` stores the
//! WGSL, plan and weights as the module's code sections, and a signed
//! bundle runs them through the runtime's `gpu` device (`--engine
//! compiled`), matching onnxruntime's outputs. Without a Vulkan adapter it
//! says why and passes, unless `M4C_REQUIRE_GPU` is set.

use std::process::{Command, Output};

fn m4c(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_m4c"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_signed_gpu_bundle_runs_on_the_gpu_device() {
    let gpu = m4c_backends::lookup("gpu").unwrap();
    if let Err(why) = m4c_backends::runnable(gpu, None) {
        assert!(
            std::env::var_os("M4C_REQUIRE_GPU").is_none(),
            "M4C_REQUIRE_GPU is set but {why}"
        );
        println!("skipped: the gpu backend cannot run here: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let fixture = |ext: &str| {
        format!(
            "{}/tests/fixtures/resnet_small.{ext}",
            env!("CARGO_MANIFEST_DIR")
        )
    };
    let o = m4c(&["keygen", "-o", &path("k")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let module = format!("net={}", fixture("onnx"));
    let build = ["firmware", "build", "--module", &module, "--backend", "gpu"];
    let o = m4c(&[&build[..], &["--sign-key", &path("k"), "-o", &path("g.fw")]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("code net.wgpu"), "{}", text(&o));
    let (inputs, expect) = (fixture("inputs.npz"), fixture("expected.npz"));
    let run = [
        "run",
        &path("g.fw"),
        "--module",
        "net",
        "--engine",
        "compiled",
    ];
    let feeds = ["--inputs", &inputs, "--expect", &expect];
    let o = m4c(&[&run[..], &["--trust-key", &path("k.pub")], &feeds[..]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("compiled code (gpu)"), "{}", text(&o));
    // Unsigned, the code is refused with one line, as for the CPU backend.
    let o = m4c(&[&build[..], &["-o", &path("u.fw")]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = m4c(&[
        &[
            "run",
            &path("u.fw"),
            "--module",
            "net",
            "--engine",
            "compiled",
        ][..],
        &feeds[..],
    ]
    .concat());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not signed"), "{}", text(&o));
}
