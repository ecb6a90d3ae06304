//! Lean CPU bundles: the IR weights the compiled code already stores (in
//! place, or as packed GEMM panels) are read from its `code-weights`
//! section instead of being stored a second time, and the interpreter
//! still runs the module with exactly the same weights.

use m4c_runtime::bundle::format::{CodeWeightLayout, Manifest};

use super::*;

/// Bytes of the sections of `kind`.
fn section_bytes(m: &Manifest, kind: SectionKind) -> u64 {
    m.sections
        .iter()
        .filter(|s| s.kind == kind)
        .map(|s| s.len)
        .sum()
}

/// The same modules as [`firmware`] for the reference backend: every
/// weight in the weights section (the layout before lean bundles, and
/// still that of interpreter-only firmware), built once.
fn reference_firmware() -> &'static Path {
    static FW: OnceLock<PathBuf> = OnceLock::new();
    FW.get_or_init(|| {
        let out = scratch("reference.fw");
        let mut args = vec!["firmware".to_string(), "build".into()];
        for (m, f) in MODULES {
            args.push("--module".into());
            args.push(format!("{m}={}", fixture(&format!("{f}.onnx")).display()));
        }
        args.extend(["-o".to_string(), out.display().to_string()]);
        let o = m4c(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        out
    })
}

/// The weights of a CPU bundle (weights section and packed code weights
/// together) take at most 1.1× the modules' weights: the packed weights
/// replace the IR's copy (before: 2×). The 10% allow for the panels'
/// zero padding to the micro-kernel's width.
#[test]
fn a_cpu_bundle_stores_each_weight_once() {
    if !can_run_code() {
        return;
    }
    let model_weights = section_bytes(
        Bundle::open(reference_firmware()).unwrap().manifest(),
        SectionKind::Weights,
    );
    let fw = Bundle::open(firmware()).unwrap();
    let m = fw.manifest();
    let stored =
        section_bytes(m, SectionKind::Weights) + section_bytes(m, SectionKind::CodeWeights);
    assert!(
        stored * 10 <= model_weights * 11,
        "{stored} bytes of weights for {model_weights} bytes of model weights"
    );
    for e in &m.modules {
        let layouts: Vec<_> = e.code_weights.values().map(|w| w.layout).collect();
        assert!(
            layouts.iter().any(|l| matches!(l, CodeWeightLayout::Bytes))
                && layouts
                    .iter()
                    .any(|l| matches!(l, CodeWeightLayout::Panels { .. })),
            "{}: {layouts:?}",
            e.name
        );
    }
}

/// Runs `module` of `fw` with `engine` and returns its outputs' bytes.
fn outputs(fw: &Path, module: &str, fixture_name: &str, engine: &str) -> Vec<u8> {
    let stem = fw.file_stem().unwrap().to_str().unwrap();
    let out = scratch(&format!("{stem}-{module}-{engine}.npz"));
    let o = run(
        fw,
        module,
        fixture_name,
        engine,
        &["-o", out.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(out).unwrap();
    bytes
}

/// The interpreter runs a lean bundle's module on exactly the weights of
/// the previous layout (its outputs are byte-identical to the reference
/// firmware's), weights unpacked from the GEMM panels included; the
/// compiled code reproduces onnxruntime (`--expect`, checked by `run`).
#[test]
fn a_lean_bundle_interprets_as_the_previous_layout() {
    if !can_run_code() {
        return;
    }
    for (module, fixture_name) in MODULES {
        let want = outputs(reference_firmware(), module, fixture_name, "reference");
        let got = outputs(firmware(), module, fixture_name, "reference");
        assert!(want == got, "{module}: the outputs differ");
        outputs(firmware(), module, fixture_name, "compiled");
    }
}

/// Re-seals an unsigned firmware image with its manifest edited by `edit`
/// (every offset, checksum and the content hash recomputed).
fn reseal_with_manifest(image: &[u8], edit: impl Fn(&mut Manifest)) -> Vec<u8> {
    let decoded = container::decode(image).unwrap();
    let mut manifest = decoded.manifest;
    edit(&mut manifest);
    let sections: Vec<container::SectionData> = manifest
        .sections
        .iter()
        .map(|s| container::SectionData {
            kind: s.kind,
            name: s.name.clone(),
            bytes: &image[s.offset as usize..(s.offset + s.len) as usize],
        })
        .collect();
    manifest.sections.clear();
    container::encode(manifest, &sections)
}

/// The first code weight of `img_enc` with a packed (`true`) or in-place
/// layout.
fn code_weight(m: &mut Manifest, packed: bool) -> &mut m4c_runtime::bundle::format::CodeWeight {
    let e = m.modules.iter_mut().find(|e| e.name == "img_enc").unwrap();
    e.code_weights
        .values_mut()
        .find(|w| matches!(w.layout, CodeWeightLayout::Panels { .. }) == packed)
        .unwrap()
}

#[test]
fn a_tampered_code_weight_is_one_error_naming_the_bundle() {
    if !can_run_code() {
        return;
    }
    type Edit = fn(&mut Manifest);
    let cases: [(&str, Edit, &str); 8] = [
        (
            "unaligned",
            |m| code_weight(m, false).offset += 4,
            "is not a multiple of 64",
        ),
        (
            "past-end",
            |m| code_weight(m, true).offset = 1 << 40,
            "extend past its section",
        ),
        (
            "panels-shape",
            |m| {
                if let CodeWeightLayout::Panels { packed, .. } = &mut code_weight(m, true).layout {
                    packed.k += 1;
                }
            },
            "is not that of panels",
        ),
        (
            "panels-overflow",
            |m| {
                let w = code_weight(m, true);
                if let CodeWeightLayout::Panels { packed, .. } = &mut w.layout {
                    packed.panel_width = usize::MAX / 2;
                }
            },
            "extend past its section",
        ),
        (
            "panels-dtype",
            |m| code_weight(m, true).dtype = "f16".into(),
            "packed panels hold f32, not f16",
        ),
        (
            "other-section",
            |m| code_weight(m, true).section = "backbone.x86_64-avx512".into(),
            "is no code-weights section of the module",
        ),
        (
            "declared-shape",
            |m| {
                let w = code_weight(m, true);
                w.shape.insert(0, 1);
            },
            "the IR declares",
        ),
        (
            "both-tables",
            |m| {
                let e = m.modules.iter_mut().find(|e| e.name == "img_enc").unwrap();
                let (name, w) = e.code_weights.iter().next().unwrap();
                let entry = m4c_runtime::bundle::format::WeightEntry {
                    blob: 0,
                    dtype: w.dtype.clone(),
                    shape: w.shape.clone(),
                };
                e.weights.insert(name.clone(), entry);
            },
            "also in the weight table",
        ),
    ];
    let image = unsigned_bytes();
    for (name, edit, want) in cases {
        let fw = scratch_file(
            &format!("lean-{name}.fw"),
            &reseal_with_manifest(&image, edit),
        );
        let o = m4c(&["firmware", "info", fw.to_str().unwrap()]);
        assert_one_error(&o, &fw, want);
        let o = run(&fw, "img_enc", "clip_vision", "reference", &[]);
        assert_one_error(&o, &fw, want);
        std::fs::remove_file(fw).unwrap();
    }
}
