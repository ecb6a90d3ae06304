//! Quantised firmware: a LoRA adapter (keep mode) attaches to a backbone
//! quantised by `m4c quantize` (its MatMul weights dequantised from
//! constants), and `m4c scale-report --variant` measures such firmware next
//! to the fp32 one (the paper's Fig. 11 is for quantised M4).

mod common;
use common::{fixture, m4c, text};
use std::path::{Path, PathBuf};
use std::process::Output;

fn ok(o: Output) -> Output {
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    o
}

/// `llama_prefill` quantised with `scheme` into a one-module firmware
/// (`backbone`) in `dir`, and the fixture LoRA adapted to it in `lora`
/// mode: (firmware, adapter output).
fn quantised_firmware(dir: &Path, scheme: &str, lora: &str) -> (PathBuf, Output) {
    let p = Path::new;
    let q = dir.join(format!("backbone.{scheme}.onnx"));
    ok(m4c(&[
        p("quantize"),
        &fixture("llama_prefill.onnx"),
        p("--calibrate"),
        &fixture("llama_prefill.inputs.npz"),
        p("--scheme"),
        p(scheme),
        p("-o"),
        &q,
    ]));
    let fw = dir.join(format!("M4.{scheme}.fw"));
    let module = format!("backbone={}", q.display());
    ok(m4c(&[
        p("firmware"),
        p("build"),
        p("--module"),
        p(&module),
        p("-o"),
        &fw,
    ]));
    let app = dir.join(format!("app.{scheme}.{lora}.m4a"));
    let o = m4c(&[
        p("adapt"),
        &fw,
        p("--module"),
        p("backbone"),
        p("--adapter"),
        &fixture("llama_lora_adapter"),
        p("--lora"),
        p(lora),
        p("-o"),
        &app,
    ]);
    (fw, o)
}

/// `m4c run FW --module backbone [--adapter APP]` on the LoRA fixture's
/// input against its fp32 (LoRA-merged) outputs at cosine 0.97.
fn run_lora(fw: &Path, adapter: Option<&Path>) -> Output {
    let p = Path::new;
    let mut args = vec![p("run"), fw, p("--module"), p("backbone"), p("--inputs")];
    let (inputs, expect) = (
        fixture("llama_lora.inputs.npz"),
        fixture("llama_lora.expected.npz"),
    );
    args.extend([inputs.as_path(), p("--expect"), &expect]);
    args.extend([p("--min-cosine"), p("0.97")]);
    if let Some(a) = adapter {
        args.extend([p("--adapter"), a]);
    }
    m4c(&args)
}

#[test]
fn lora_keeps_its_factors_on_a_w4_backbone_and_fold_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (fw, o) = quantised_firmware(dir.path(), "w4", "keep");
    ok(o);
    let app = dir.path().join("app.w4.keep.m4a");
    // With the adapter the w4 backbone computes the LoRA model (the
    // fixture's LoRA moves the logits far: without it the cosine is ~0.3).
    ok(run_lora(&fw, Some(&app)));
    assert_eq!(run_lora(&fw, None).status.code(), Some(1));
    // Folding needs a constant weight; a dequantised one is named.
    let (_, o) = quantised_firmware(dir.path(), "w4", "fold");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("q_proj") && err.contains("dequantised"),
        "{err}"
    );
}

#[test]
fn scale_report_measures_quantised_firmware_variants() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (fp32, app32) = (d.join("M4.fw"), d.join("app.m4a"));
    let p = Path::new;
    let module = format!("backbone={}", fixture("llama_prefill.onnx").display());
    ok(m4c(&[
        p("firmware"),
        p("build"),
        p("--module"),
        p(&module),
        p("-o"),
        &fp32,
    ]));
    ok(m4c(&[
        p("adapt"),
        &fp32,
        p("--module"),
        p("backbone"),
        p("--adapter"),
        &fixture("llama_lora_adapter"),
        p("-o"),
        &app32,
    ]));
    let mut variants = vec![];
    for scheme in ["int8", "w4"] {
        let (fw, o) = quantised_firmware(d, scheme, "keep");
        ok(o);
        variants.push((scheme, fw, d.join(format!("app.{scheme}.keep.m4a"))));
    }
    let specs: Vec<String> = variants
        .iter()
        .map(|(s, fw, app)| format!("{s}:{}:{}", fw.display(), app.display()))
        .collect();
    let out = d.join("report");
    let mut args = vec![
        p("scale-report"),
        p("--firmware"),
        &fp32,
        p("--adapter"),
        &app32,
        p("--ts"),
    ];
    let ts = fixture("imu_encoder.onnx");
    args.extend([ts.as_path(), p("--max-n"), p("2"), p("--out"), &out]);
    for s in &specs {
        args.extend([p("--variant"), p(s)]);
    }
    ok(m4c(&args));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("scale.json")).unwrap()).unwrap();
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    let baseline = json["baseline_rss_bytes"].as_u64().unwrap();
    for (i, r) in json["rows"].as_array().unwrap().iter().enumerate() {
        let n = i as u64 + 1;
        let vs = r["variants"].as_array().unwrap();
        assert_eq!(vs.len(), 2);
        for (v, (scheme, fw, app)) in vs.iter().zip(&variants) {
            assert_eq!(v["label"], *scheme);
            assert_eq!(v["storage_bytes"], len(fw) + n * len(app));
            assert!(v["peak_rss_bytes"].as_u64().unwrap() > baseline);
        }
        // Quantised weights are smaller than fp32: int8, then int4.
        let s = |j: usize| vs[j]["storage_bytes"].as_u64().unwrap();
        assert!(s(1) < s(0) && s(0) < r["m4_storage_bytes"].as_u64().unwrap());
    }
    let md = std::fs::read_to_string(out.join("scale.md")).unwrap();
    assert!(md.contains("| N | M4 | int8 | w4 |"), "{md}");
    let svg = std::fs::read_to_string(out.join("scale.svg")).unwrap();
    assert!(svg.contains("M4 w4 + N adapters"), "{svg}");
    // A malformed --variant is a one-line error, exit 2.
    for bad in ["int8", "in t8:a.fw:b.m4a"] {
        let o = m4c(&[
            p("scale-report"),
            p("--firmware"),
            &fp32,
            p("--adapter"),
            &app32,
            p("--ts"),
            &ts,
            p("--variant"),
            p(bad),
            p("--out"),
            &out,
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains("--variant"));
    }
}
