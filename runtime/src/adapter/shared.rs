//! A firmware module with adapters attached, as an executor holds it: the
//! base graph once, shared (`Arc`) by every executor of that module, and
//! per keep-mode adapter only its factors (slices of the adapter's map).
//! The adapted graph is built when the module runs and dropped after, so
//! N adapters loaded together cost N factor tables, not N graphs. Fold
//! mode changes weights, so a folded module is a private graph built once.

use std::borrow::Cow;
use std::sync::Arc;

use m4c_ir::Graph;

use super::{lora, AdapterBundle, AdapterError, LoraFactors};
use crate::bundle::format::LoraMode;

/// One keep-mode adapter attached to a shared base graph.
#[derive(Clone, Debug)]
struct KeepAdapter {
    /// The adapter file (for errors).
    path: String,
    factors: Vec<LoraFactors>,
    /// Names the added values (`lora{i}`), as [`super::adapted_module`] does.
    prefix: String,
}

/// A module's graph plus the adapters an executor applies to it when it
/// runs ([`AdaptedModule::graph`]).
#[derive(Clone, Debug)]
pub struct AdaptedModule {
    name: String,
    base: Arc<Graph>,
    keep: Vec<KeepAdapter>,
}

impl From<Arc<Graph>> for AdaptedModule {
    /// The module itself, no adapter.
    fn from(base: Arc<Graph>) -> AdaptedModule {
        AdaptedModule {
            name: base.name.clone(),
            base,
            keep: vec![],
        }
    }
}

impl AdaptedModule {
    /// Module `name` (graph `base`) with `adapters` attached in order. Every
    /// site is resolved and checked here, by building the adapted graph
    /// once; with only keep-mode adapters that graph is then dropped and
    /// `base` is shared, with any fold-mode adapter it is kept (its folded
    /// weights are private anyway). Bindings to the firmware are the
    /// caller's to check ([`AdapterBundle::check_binding`]).
    pub fn new(
        name: &str,
        base: Arc<Graph>,
        adapters: &[&AdapterBundle],
    ) -> Result<AdaptedModule, AdapterError> {
        let mut out = AdaptedModule::from(base);
        out.name = name.to_string();
        let mut graph = Cow::Borrowed(&*out.base);
        for (i, a) in adapters.iter().enumerate() {
            let prefix = format!("lora{i}");
            graph = Cow::Owned(attach(
                &graph,
                name,
                &a.path,
                a.factors(),
                a.mode(),
                &prefix,
            )?);
            out.keep.push(KeepAdapter {
                path: a.path.clone(),
                factors: a.factors().to_vec(),
                prefix,
            });
        }
        if adapters.iter().any(|a| a.mode() == LoraMode::Fold) {
            return Ok(AdaptedModule::from(Arc::new(graph.into_owned())));
        }
        Ok(out)
    }

    /// The shared base graph (the adapted one when folded).
    pub fn base(&self) -> &Arc<Graph> {
        &self.base
    }

    /// How many keep-mode adapters are applied at each run.
    pub fn keep_adapters(&self) -> usize {
        self.keep.len()
    }

    /// The graph to run: the base itself without keep-mode adapters, else
    /// a fresh adapted graph (whose weights are the base's and the
    /// adapters' mapped tensors) that the caller drops after the run.
    pub fn graph(&self) -> Result<Cow<'_, Graph>, AdapterError> {
        let mut graph = Cow::Borrowed(&*self.base);
        for k in &self.keep {
            graph = Cow::Owned(attach(
                &graph,
                &self.name,
                &k.path,
                &k.factors,
                LoraMode::Keep,
                &k.prefix,
            )?);
        }
        Ok(graph)
    }
}

/// [`lora::attach`] with its problems as an [`AdapterError`].
fn attach(
    g: &Graph,
    module: &str,
    path: &str,
    factors: &[LoraFactors],
    mode: LoraMode,
    prefix: &str,
) -> Result<Graph, AdapterError> {
    lora::attach(g, factors, mode, prefix).map_err(|problems| AdapterError::Mismatch {
        path: path.to_string(),
        module: module.to_string(),
        problems,
    })
}
