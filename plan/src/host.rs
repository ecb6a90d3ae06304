//! What this machine runs: the widest vector instruction set it has, and
//! whether code compiled for a target string (`x86_64-avx512`,
//! `x86_64-avx2`, `aarch64`) runs here. The code generator picks `host`
//! with it; the runtime checks a bundle's code with it before loading.

/// A CPU code target a host may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostIsa {
    /// x86-64 with AVX-512 F/BW/DQ/VL (and AVX2 + FMA).
    Avx512,
    /// x86-64 with AVX2 + FMA.
    Avx2,
    /// AArch64 (Advanced SIMD is architectural).
    Aarch64,
}

impl HostIsa {
    /// The target string code for this ISA is labelled with.
    pub fn target(self) -> &'static str {
        match self {
            HostIsa::Avx512 => "x86_64-avx512",
            HostIsa::Avx2 => "x86_64-avx2",
            HostIsa::Aarch64 => "aarch64",
        }
    }
}

/// The widest ISA this host runs; `None` for an x86-64 without AVX2 + FMA
/// or another architecture.
pub fn best_isa() -> Option<HostIsa> {
    if has_avx512() {
        Some(HostIsa::Avx512)
    } else if has_avx2() {
        Some(HostIsa::Avx2)
    } else if cfg!(target_arch = "aarch64") {
        Some(HostIsa::Aarch64)
    } else {
        None
    }
}

/// Whether code compiled for `target` runs on this host; the reason when
/// not.
pub fn host_runs(target: &str) -> Result<(), String> {
    let isa_ok = match target {
        "x86_64-avx512" => has_avx512(),
        "x86_64-avx2" => has_avx2(),
        "aarch64" => cfg!(target_arch = "aarch64"),
        other => return Err(format!("unknown code target `{other}`")),
    };
    if !cfg!(target_os = "linux") {
        return Err("compiled code is a Linux shared library".into());
    }
    if isa_ok {
        Ok(())
    } else {
        Err(format!("the host lacks the {target} instruction set"))
    }
}

/// Whether this host has every one of `features` — instructions beyond
/// the target's ISA that code tuned for a particular CPU uses (named as
/// `is_x86_feature_detected!` spells them; today `avx512vnni` and
/// `avxvnni`, the int8 dot products); the reason for the first missing.
pub fn host_has(features: &[String]) -> Result<(), String> {
    for f in features {
        let present = match f.as_str() {
            #[cfg(target_arch = "x86_64")]
            "avx512vnni" => std::arch::is_x86_feature_detected!("avx512vnni"),
            #[cfg(target_arch = "x86_64")]
            "avxvnni" => std::arch::is_x86_feature_detected!("avxvnni"),
            #[cfg(not(target_arch = "x86_64"))]
            "avx512vnni" | "avxvnni" => false,
            other => {
                return Err(format!(
                    "the code requires an unknown CPU feature `{other}`"
                ))
            }
        };
        if !present {
            return Err(format!("the code uses {f} instructions this host lacks"));
        }
    }
    Ok(())
}

/// This host's per-core L2 data cache in bytes, as Linux reports it
/// (`/sys/devices/system/cpu/cpu0/cache/index*/`); `None` where it does
/// not. GEMM blocking keeps its working set in half of it: Zen 1–3 have
/// 512 KiB, Zen 4 1 MiB, Zen 5 and Sapphire Rapids 1–2 MiB.
pub fn l2_bytes() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.flatten().find_map(|entry| {
        let read = |name: &str| std::fs::read_to_string(entry.path().join(name)).ok();
        let unified_l2 =
            read("level")?.trim() == "2" && matches!(read("type")?.trim(), "Unified" | "Data");
        unified_l2.then(|| parse_cache_size(read("size")?.trim()))?
    })
}

/// `512K`, `1024K`, `2M` (sysfs's spelling) in bytes.
fn parse_cache_size(s: &str) -> Option<usize> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let scale = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        _ => return None,
    };
    digits.parse::<usize>().ok()?.checked_mul(scale)
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && has_avx2()
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx2() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_checked_by_name() {
        assert_eq!(host_has(&[]), Ok(()));
        let e = host_has(&["avx9000".to_string()]).unwrap_err();
        assert_eq!(e, "the code requires an unknown CPU feature `avx9000`");
    }

    #[test]
    fn unknown_and_foreign_targets_do_not_run() {
        let err = host_runs("riscv64").unwrap_err();
        assert_eq!(err, "unknown code target `riscv64`");
        let foreign = if cfg!(target_arch = "aarch64") {
            "x86_64-avx2"
        } else {
            "aarch64"
        };
        assert!(host_runs(foreign).is_err());
    }

    /// The best ISA runs, and so does every narrower one on the same
    /// architecture.
    #[test]
    fn the_best_isa_runs_here() {
        let Some(best) = best_isa() else {
            return;
        };
        if cfg!(target_os = "linux") {
            host_runs(best.target()).unwrap();
            if best == HostIsa::Avx512 {
                host_runs("x86_64-avx2").unwrap();
            }
        }
    }

    #[test]
    fn cache_sizes_parse_as_sysfs_spells_them() {
        assert_eq!(parse_cache_size("512K"), Some(512 << 10));
        assert_eq!(parse_cache_size("2M"), Some(2 << 20));
        assert_eq!(parse_cache_size("65536"), Some(65536));
        for bad in ["", "K", "12Q", "-1K", "99999999999999999999K"] {
            assert_eq!(parse_cache_size(bad), None, "{bad}");
        }
    }
}
