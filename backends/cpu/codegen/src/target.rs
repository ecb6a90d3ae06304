//! Code-generation targets: what `--target`/`--cpu` mean, which LLVM triple,
//! CPU and features they become, and the register-file facts the kernels'
//! tile sizes are derived from.

use m4c_plan::host::HostIsa;

use crate::CodegenError;

/// The vector instruction set the kernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// x86-64 with AVX-512 F/BW/DQ/VL: 32 × 512-bit registers.
    Avx512,
    /// x86-64 with AVX2 + FMA: 16 × 256-bit registers.
    Avx2,
    /// AArch64 Advanced SIMD: 32 × 128-bit registers.
    Neon,
}

impl Isa {
    /// f32 lanes in one vector register.
    pub fn f32_lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
            Isa::Neon => 4,
        }
    }

    /// Architectural vector registers.
    pub fn vector_registers(self) -> usize {
        match self {
            Isa::Avx512 | Isa::Neon => 32,
            Isa::Avx2 => 16,
        }
    }

    /// Architectural general-purpose registers (the stack pointer
    /// included): kernels that keep one address per tile row in them
    /// size their tiles by it as well as by the vector registers.
    pub fn general_registers(self) -> usize {
        match self {
            Isa::Avx512 | Isa::Avx2 => 16,
            Isa::Neon => 32,
        }
    }

    fn arch(self) -> Arch {
        match self {
            Isa::Avx512 | Isa::Avx2 => Arch::X86_64,
            Isa::Neon => Arch::Aarch64,
        }
    }

    fn features(self, vnni: bool) -> &'static str {
        match (self, vnni) {
            (Isa::Avx512, false) => "+avx512f,+avx512bw,+avx512dq,+avx512vl,+avx2,+fma,+f16c,+bmi2",
            (Isa::Avx512, true) => {
                "+avx512f,+avx512bw,+avx512dq,+avx512vl,+avx2,+fma,+f16c,+bmi2,+avx512vnni"
            }
            (Isa::Avx2, false) => "+avx2,+fma,+f16c,+bmi2",
            (Isa::Avx2, true) => "+avx2,+fma,+f16c,+bmi2,+avxvnni",
            (Isa::Neon, _) => "+neon,+fp-armv8",
        }
    }

    /// The per-core L2 a cross target is blocked for: the smallest of
    /// the cores that ISA usually means (AVX-512: Skylake-SP, Zen 4; AVX2:
    /// Zen 1–3; AArch64: phone cores and Neoverse N1 have 512 KiB–1 MiB).
    fn default_l2_bytes(self) -> usize {
        match self {
            Isa::Avx512 => 1 << 20,
            Isa::Avx2 | Isa::Neon => 512 << 10,
        }
    }

    fn default_cpu(self) -> &'static str {
        match self {
            Isa::Avx512 => "x86-64-v4",
            Isa::Avx2 => "x86-64-v3",
            Isa::Neon => "generic",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "x86_64-avx512",
            Isa::Avx2 => "x86_64-avx2",
            Isa::Neon => "aarch64",
        }
    }
}

/// The instruction-set architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// 64-bit x86.
    X86_64,
    /// 64-bit Arm.
    Aarch64,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    fn triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// CPU names handed to LLVM's `-mcpu`. LLVM aborts the process on a
    /// name it does not know, so only these (all known to LLVM 19) pass.
    fn known_cpus(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &[
                "x86-64",
                "x86-64-v2",
                "x86-64-v3",
                "x86-64-v4",
                "haswell",
                "broadwell",
                "skylake",
                "skylake-avx512",
                "cascadelake",
                "cooperlake",
                "icelake-client",
                "icelake-server",
                "tigerlake",
                "rocketlake",
                "sapphirerapids",
                "alderlake",
                "raptorlake",
                "meteorlake",
                "emeraldrapids",
                "graniterapids",
                "znver1",
                "znver2",
                "znver3",
                "znver4",
                "znver5",
            ],
            Arch::Aarch64 => &[
                "generic",
                "cortex-a53",
                "cortex-a55",
                "cortex-a72",
                "cortex-a76",
                "cortex-a78",
                "cortex-x1",
                "neoverse-n1",
                "neoverse-n2",
                "neoverse-v1",
                "neoverse-v2",
                "apple-m1",
                "apple-m2",
                "apple-m3",
            ],
        }
    }
}

/// A fully resolved code-generation target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The vector ISA kernels are written for.
    pub isa: Isa,
    /// The LLVM CPU name (scheduling model), validated.
    pub cpu: String,
    /// Per-core L2 cache bytes the GEMM blocking is sized for: the
    /// host's own for `host`, the ISA's usual smallest otherwise.
    pub l2_bytes: usize,
}

impl Target {
    /// Resolves `--target` (`host`, `x86_64`, `x86_64-avx512`, `x86_64-avx2`,
    /// `aarch64`; `None` means `host`) and an optional `--cpu`.
    ///
    /// `host` and plain `x86_64` on an x86-64 host pick the widest vector ISA
    /// the host supports and the host's CPU name when LLVM knows it.
    pub fn parse(target: Option<&str>, cpu: Option<&str>) -> Result<Self, CodegenError> {
        let name = target.unwrap_or("host");
        let host = name == "host" || (name == "x86_64" && cfg!(target_arch = "x86_64"));
        let (isa, detected_cpu) = match name {
            _ if host => host_isa_and_cpu()?,
            "x86_64" | "x86_64-avx2" => (Isa::Avx2, None),
            "x86_64-avx512" => (Isa::Avx512, None),
            "aarch64" => (Isa::Neon, None),
            other => return Err(CodegenError::UnknownTarget(other.to_string())),
        };
        let l2_bytes = match host {
            true => m4c_plan::host::l2_bytes(),
            false => None,
        }
        .unwrap_or_else(|| isa.default_l2_bytes());
        let cpu = match cpu {
            Some(cpu) => validate_cpu(isa.arch(), cpu)?,
            None => detected_cpu.unwrap_or_else(|| isa.default_cpu().to_string()),
        };
        Ok(Self { isa, cpu, l2_bytes })
    }

    /// The target's canonical name, as `--target` spells it.
    pub fn name(&self) -> &'static str {
        self.isa.name()
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.isa.arch()
    }

    /// The LLVM target triple.
    pub fn triple(&self) -> &'static str {
        self.arch().triple()
    }

    /// The LLVM feature string.
    pub fn features(&self) -> &'static str {
        self.isa.features(self.has_vnni())
    }

    /// Whether the CPU (`--cpu`, or the host's when LLVM knows its name)
    /// has the int8 dot-product instruction `vpdpbusd` at the ISA's vector
    /// width: AVX-512 VNNI for `x86_64-avx512`, AVX-VNNI for
    /// `x86_64-avx2`. Keyed by the CPU name, like every other instruction
    /// the CPU name lets LLVM use: the generic `x86-64-v4`/`x86-64-v3`
    /// CPUs do not have it, so their code runs on any AVX-512/AVX2 host.
    pub fn has_vnni(&self) -> bool {
        const AVX512_VNNI: &[&str] = &[
            "cascadelake",
            "cooperlake",
            "icelake-client",
            "icelake-server",
            "tigerlake",
            "rocketlake",
            "sapphirerapids",
            "emeraldrapids",
            "graniterapids",
            "znver4",
            "znver5",
        ];
        const AVX_VNNI: &[&str] = &[
            "alderlake",
            "raptorlake",
            "meteorlake",
            "sapphirerapids",
            "emeraldrapids",
            "graniterapids",
            "znver5",
        ];
        match self.isa {
            Isa::Avx512 => AVX512_VNNI.contains(&self.cpu.as_str()),
            Isa::Avx2 => AVX_VNNI.contains(&self.cpu.as_str()),
            Isa::Neon => false,
        }
    }

    /// Whether the CPU has AArch64's dot-product extension (Armv8.2
    /// `+dotprod`: `sdot`/`udot`), which the int8 GEMM then uses. Keyed by
    /// the CPU name like [`Target::has_vnni`]: the `generic` CPU lacks it,
    /// so its code runs on every Armv8 phone.
    pub fn has_dotprod(&self) -> bool {
        const DOTPROD: &[&str] = &[
            "cortex-a55",
            "cortex-a65",
            "cortex-a75",
            "cortex-a76",
            "cortex-a77",
            "cortex-a78",
            "cortex-a510",
            "cortex-a520",
            "cortex-a710",
            "cortex-a715",
            "cortex-a720",
            "cortex-x1",
            "cortex-x2",
            "cortex-x3",
            "cortex-x4",
            "neoverse-n1",
            "neoverse-n2",
            "neoverse-v1",
            "neoverse-v2",
            "apple-a13",
            "apple-a14",
            "apple-a15",
            "apple-a16",
            "apple-a17",
            "apple-m1",
            "apple-m2",
            "apple-m3",
        ];
        self.isa == Isa::Neon && DOTPROD.contains(&self.cpu.as_str())
    }

    /// Whether code for this target can run on this machine; an error says
    /// why not.
    /// (The shared host check, [`m4c_plan::host::host_runs`], which the
    /// runtime applies to a bundle's code too.)
    pub fn check_runs_on_host(&self) -> Result<(), CodegenError> {
        m4c_plan::host::host_runs(self.name())
            .and_then(|()| m4c_plan::host::host_has(&self.requires()))
            .map_err(|reason| CodegenError::NotRunnable {
                target: self.name().to_string(),
                reason,
            })
    }

    /// The CPU features beyond the ISA that code for this target uses
    /// (recorded in the artifact's plan, checked by the runtime at load).
    pub fn requires(&self) -> Vec<String> {
        match (self.has_vnni(), self.isa) {
            (true, Isa::Avx512) => vec!["avx512vnni".into()],
            (true, Isa::Avx2) => vec!["avxvnni".into()],
            _ => vec![],
        }
    }
}

fn validate_cpu(arch: Arch, cpu: &str) -> Result<String, CodegenError> {
    if arch.known_cpus().contains(&cpu) {
        Ok(cpu.to_string())
    } else {
        Err(CodegenError::UnknownCpu {
            cpu: cpu.to_string(),
            arch: arch.name(),
            known: arch.known_cpus().join(", "),
        })
    }
}

/// The host's best ISA and, when LLVM's name for the host CPU is one we
/// know, that name.
fn host_isa_and_cpu() -> Result<(Isa, Option<String>), CodegenError> {
    let isa = host_isa().ok_or_else(|| CodegenError::NotRunnable {
        target: "host".into(),
        reason: "the host has neither AVX-512, AVX2+FMA nor AArch64".into(),
    })?;
    let host_cpu = inkwell::targets::TargetMachine::get_host_cpu_name().to_string();
    let cpu = validate_cpu(isa.arch(), &host_cpu).ok();
    Ok((isa, cpu))
}

/// The host's best ISA ([`m4c_plan::host::best_isa`]).
fn host_isa() -> Option<Isa> {
    m4c_plan::host::best_isa().map(|isa| match isa {
        HostIsa::Avx512 => Isa::Avx512,
        HostIsa::Avx2 => Isa::Avx2,
        HostIsa::Aarch64 => Isa::Neon,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_targets_resolve_to_their_isa_and_default_cpu() {
        let t = Target::parse(Some("x86_64-avx512"), None).unwrap();
        assert_eq!((t.isa, t.cpu.as_str()), (Isa::Avx512, "x86-64-v4"));
        let t = Target::parse(Some("x86_64-avx2"), Some("znver3")).unwrap();
        assert_eq!((t.isa, t.cpu.as_str()), (Isa::Avx2, "znver3"));
        let t = Target::parse(Some("aarch64"), Some("neoverse-n1")).unwrap();
        assert_eq!(
            (t.isa, t.triple()),
            (Isa::Neon, "aarch64-unknown-linux-gnu")
        );
    }

    #[test]
    fn unknown_names_are_errors_not_aborts() {
        let err = Target::parse(Some("riscv64"), None)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("unknown target `riscv64`"), "{err}");
        let err = Target::parse(Some("x86_64-avx2"), Some("znver99"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("unknown CPU `znver99` for x86_64"), "{err}");
        let err = Target::parse(Some("aarch64"), Some("znver4"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("unknown CPU `znver4` for aarch64"), "{err}");
    }

    #[test]
    fn vnni_follows_the_cpu_name() {
        let vnni = |t: &str, cpu: Option<&str>| Target::parse(Some(t), cpu).unwrap().has_vnni();
        assert!(!vnni("x86_64-avx512", None));
        assert!(vnni("x86_64-avx512", Some("icelake-server")));
        assert!(!vnni("x86_64-avx2", None));
        assert!(vnni("x86_64-avx2", Some("alderlake")));
        assert!(!vnni("x86_64-avx512", Some("skylake-avx512")));
        assert!(!vnni("aarch64", Some("neoverse-n1")));
        let dotprod =
            |cpu: Option<&str>| Target::parse(Some("aarch64"), cpu).unwrap().has_dotprod();
        assert!(dotprod(Some("neoverse-n1")) && dotprod(Some("cortex-a55")));
        assert!(!dotprod(None) && !dotprod(Some("cortex-a53")));
    }

    #[test]
    fn cross_targets_do_not_run_here() {
        let t = Target::parse(Some("aarch64"), None).unwrap();
        assert!(t.check_runs_on_host().is_err());
    }

    #[test]
    fn host_target_runs_on_host() {
        let t = Target::parse(None, None).unwrap();
        t.check_runs_on_host().unwrap();
    }
}
