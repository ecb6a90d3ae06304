//! The backend registry: every code generator m4c has, by name, and the
//! few facts a caller asks of one before compiling (as cranelift's
//! `isa::lookup`). A new backend is one line in [`all`] plus its device in
//! `m4c_runtime::exec::device::all` (see `docs/BACKENDS.md`); the CLI, the
//! conformance suite and `m4c backends` pick it up from here.

use m4c_compiler::backend::{CodeGenerator, Reference};
use m4c_cpu_codegen::CpuBackend;
use m4c_runtime::exec::device;

/// Every registered code generator, the reference backend first.
pub fn all() -> &'static [&'static dyn CodeGenerator] {
    &[&Reference, &CpuBackend]
}

/// The backend called `name`, or an error listing the known names.
pub fn lookup(name: &str) -> Result<&'static dyn CodeGenerator, UnknownBackend> {
    all()
        .iter()
        .copied()
        .find(|b| b.name() == name)
        .ok_or_else(|| UnknownBackend(name.to_string()))
}

/// Whether this host can execute `backend`'s code for `target` (`None`:
/// its default): the code generator says the host fits the target, and
/// this runtime has a device to load it (the reference backend needs none:
/// the interpreter runs its IR).
pub fn runnable(backend: &dyn CodeGenerator, target: Option<&str>) -> Result<(), String> {
    backend.runnable(target)?;
    let needs_device = backend.name() != Reference.name();
    if needs_device && device::lookup(backend.name()).is_none() {
        return Err(format!(
            "this runtime has no device for backend `{}`",
            backend.name()
        ));
    }
    Ok(())
}

/// A `--backend` name no backend has.
#[derive(Debug, thiserror::Error)]
#[error("unknown backend `{name}` (known: {known})", name = .0, known = names().join(", "))]
pub struct UnknownBackend(pub String);

/// The registered names, in registry order.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|b| b.name()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_looked_up() {
        let mut names = names();
        assert_eq!(names[0], "reference");
        for n in &names {
            assert_eq!(lookup(n).unwrap().name(), *n);
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all().len());
        let err = lookup("tpu").err().unwrap().to_string();
        assert!(
            err.contains("unknown backend `tpu`") && err.contains("cpu"),
            "{err}"
        );
    }

    #[test]
    fn every_compiled_backend_has_a_device() {
        for b in all().iter().filter(|b| b.name() != "reference") {
            assert!(
                device::lookup(b.name()).is_some(),
                "{} has no device",
                b.name()
            );
        }
    }
}
