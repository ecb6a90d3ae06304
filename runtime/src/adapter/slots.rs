//! LoRA slots: a firmware module compiled for adapters (`m4c firmware
//! build --lora-slots q_proj,v_proj:16`) computes `y = x·W + (x·A)·B` at
//! each slotted MatMul, `A [in, R]` and `B [R, out]` being two extra module
//! inputs named `lora_slot.{site}.A|B` (`site`: the MatMul's module path).
//! Its compiled code is the same for every adapter: at load an adapter's
//! factors are bound to the slots ([`SlotBinding`]: `A = Aᵀ`, `B = s·Bᵀ`,
//! zero-padded from the adapter's rank `r` to `R`, several adapters of one
//! module packed side by side), no adapter binds zeros, and switching
//! adapters is binding other tensors to the one loaded module
//! ([`SlottedModule::rebind`]).

use std::sync::Arc;

use m4c_ir::DType;
use m4c_ops::Value;
use ndarray::{ArrayD, IxDyn};

use super::lora::scope_ends_with;
use super::{AdapterBundle, AdapterError, LoraFactors};
use crate::exec::{ArenaPlan, CompiledModule, ExecError, ModuleExecutor, Signature};

/// Prefix of slot inputs' names.
pub const PREFIX: &str = "lora_slot.";

/// The names of the two inputs of the slot at module path `site`.
pub fn input_names(site: &str) -> (String, String) {
    (format!("{PREFIX}{site}.A"), format!("{PREFIX}{site}.B"))
}

/// One slot of a module: its site and where its inputs are.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    /// Module path of the slotted MatMul (`model.layers.0.self_attn.q_proj`).
    pub site: String,
    /// Input position of `A [in, R]`.
    pub a: usize,
    /// Input position of `B [R, out]`.
    pub b: usize,
    /// The MatMul's input features.
    pub in_features: usize,
    /// The slot's rank `R`.
    pub rank: usize,
    /// The MatMul's output features.
    pub out_features: usize,
}

/// The slots of a module with signature `sig` (none: not built for slots).
pub fn slots_of(sig: &Signature) -> Vec<Slot> {
    sig.inputs
        .iter()
        .enumerate()
        .filter_map(|(a, (name, ty))| {
            let site = name.strip_prefix(PREFIX)?.strip_suffix(".A")?;
            let b = sig.input(&input_names(site).1)?;
            let (sa, sb) = (ty.static_shape()?, sig.inputs[b].1.static_shape()?);
            let (&[k, r], &[r2, n]) = (&sa[..], &sb[..]) else {
                return None;
            };
            (r == r2).then(|| Slot {
                site: site.to_string(),
                a,
                b,
                in_features: k,
                rank: r,
                out_features: n,
            })
        })
        .collect()
}

/// Tensors bound to a module's slots: one `A` and one `B` per slot, in
/// slot order.
#[derive(Clone, Debug)]
pub struct SlotBinding {
    values: Vec<(usize, Value)>,
    /// Adapter rank used per slot (for reports).
    pub used_rank: Vec<usize>,
}

impl SlotBinding {
    /// Binds `adapters`' factors to `slots` (zeros where none applies).
    /// Every problem is listed: a site without a slot, ranks that together
    /// exceed the slot's, factors that do not fit the weight.
    pub fn new(slots: &[Slot], adapters: &[&[LoraFactors]]) -> Result<SlotBinding, Vec<String>> {
        let mut a: Vec<ArrayD<f32>> = slots
            .iter()
            .map(|s| ArrayD::zeros(IxDyn(&[s.in_features, s.rank])))
            .collect();
        let mut b: Vec<ArrayD<f32>> = slots
            .iter()
            .map(|s| ArrayD::zeros(IxDyn(&[s.rank, s.out_features])))
            .collect();
        let mut used = vec![0usize; slots.len()];
        let mut problems = vec![];
        for f in adapters.iter().flat_map(|fs| fs.iter()) {
            let found: Vec<usize> = (0..slots.len())
                .filter(|&i| scope_ends_with(&slots[i].site, &f.target))
                .collect();
            let i = match found[..] {
                [i] => i,
                [] => {
                    problems.push(format!(
                        "{}: the firmware module has no LoRA slot for this site \
                         (slots: {})",
                        f.target,
                        slots
                            .iter()
                            .map(|s| s.site.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    continue;
                }
                _ => {
                    problems.push(format!(
                        "{}: {} slots match this site",
                        f.target,
                        found.len()
                    ));
                    continue;
                }
            };
            let s = &slots[i];
            let (&[r, k], &[n, r2]) = (&f.a.shape[..], &f.b.shape[..]) else {
                problems.push(format!("{}: factors are not 2-D", f.target));
                continue;
            };
            if r != r2 || k != s.in_features || n != s.out_features {
                problems.push(format!(
                    "{}: lora_A {:?} / lora_B {:?} do not fit the slot [in={}, out={}]",
                    f.target, f.a.shape, f.b.shape, s.in_features, s.out_features
                ));
                continue;
            }
            if used[i] + r > s.rank {
                problems.push(format!(
                    "{}: adapter rank {r} exceeds the slot's rank {} (free: {}); rebuild the \
                     firmware with a larger --lora-slots rank",
                    f.target,
                    s.rank,
                    s.rank - used[i]
                ));
                continue;
            }
            if f.a.dtype != DType::F32 || f.b.dtype != DType::F32 {
                problems.push(format!(
                    "{}: slots take f32 factors, these are {}/{}",
                    f.target, f.a.dtype, f.b.dtype
                ));
                continue;
            }
            let (fa, fb) = match (f.a.to_f32_vec(), f.b.to_f32_vec()) {
                (Ok(x), Ok(y)) => (x, y),
                (Err(e), _) | (_, Err(e)) => {
                    problems.push(format!("{}: {e}", f.target));
                    continue;
                }
            };
            let scale = f.scale as f32;
            for q in 0..r {
                for j in 0..k {
                    a[i][[j, used[i] + q]] = fa[q * k + j];
                }
                for j in 0..n {
                    b[i][[used[i] + q, j]] = scale * fb[j * r + q];
                }
            }
            used[i] += r;
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let values = slots
            .iter()
            .zip(a.into_iter().zip(b))
            .flat_map(|(s, (a, b))| [(s.a, Value::F32(a)), (s.b, Value::F32(b))])
            .collect();
        Ok(SlotBinding {
            values,
            used_rank: used,
        })
    }

    /// Bytes of the bound tensors (what one resident adapter costs).
    pub fn bytes(&self) -> usize {
        self.values.iter().map(|(_, v)| v.len() * 4).sum()
    }
}

/// A module built with LoRA slots, with tensors bound to them: callers see
/// the module's own inputs; the slot inputs are supplied at each run.
/// Clones share the loaded module (compiled code or interpreter).
#[derive(Clone)]
pub struct SlottedModule {
    inner: Arc<dyn ModuleExecutor>,
    slots: Arc<Vec<Slot>>,
    binding: Arc<SlotBinding>,
    /// The module's signature without the slot inputs.
    signature: Signature,
    /// Position in the inner signature of each public input.
    public: Vec<usize>,
}

impl SlottedModule {
    /// `inner` (whose signature has the slots `slots`) with `adapters`
    /// bound; each adapter's firmware binding is the caller's to check.
    pub fn new(
        inner: Arc<dyn ModuleExecutor>,
        slots: Vec<Slot>,
        adapters: &[&AdapterBundle],
    ) -> Result<SlottedModule, AdapterError> {
        let sig = inner.signature();
        let slot_inputs: Vec<usize> = slots.iter().flat_map(|s| [s.a, s.b]).collect();
        let public: Vec<usize> = (0..sig.inputs.len())
            .filter(|i| !slot_inputs.contains(i))
            .collect();
        let signature = Signature {
            inputs: public.iter().map(|&i| sig.inputs[i].clone()).collect(),
            outputs: sig.outputs.clone(),
        };
        let binding = bind(inner.name(), &slots, adapters)?;
        Ok(SlottedModule {
            inner,
            slots: Arc::new(slots),
            binding: Arc::new(binding),
            signature,
            public,
        })
    }

    /// The same loaded module with `adapters` bound instead: no reload,
    /// only the slot tensors are rebuilt.
    pub fn rebind(&self, adapters: &[&AdapterBundle]) -> Result<SlottedModule, AdapterError> {
        Ok(SlottedModule {
            binding: Arc::new(bind(self.inner.name(), &self.slots, adapters)?),
            ..self.clone()
        })
    }

    /// What is bound.
    pub fn binding(&self) -> &SlotBinding {
        &self.binding
    }
}

fn bind(
    module: &str,
    slots: &[Slot],
    adapters: &[&AdapterBundle],
) -> Result<SlotBinding, AdapterError> {
    let factors: Vec<&[LoraFactors]> = adapters.iter().map(|a| a.factors()).collect();
    SlotBinding::new(slots, &factors).map_err(|problems| AdapterError::Mismatch {
        path: adapters
            .iter()
            .map(|a| a.path.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        module: module.to_string(),
        problems,
    })
}

impl ModuleExecutor for SlottedModule {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn arena(&self) -> Option<&ArenaPlan> {
        self.inner.arena()
    }

    fn arena_bytes(&self) -> Option<usize> {
        self.inner.arena_bytes()
    }

    fn backend(&self) -> &str {
        self.inner.backend()
    }

    fn as_compiled(&self) -> Option<&CompiledModule> {
        self.inner.as_compiled()
    }

    fn as_slotted(&self) -> Option<&SlottedModule> {
        Some(self)
    }

    fn run(&self, inputs: &[Value]) -> Result<Vec<Value>, ExecError> {
        crate::exec::check_inputs(self.name(), &self.signature, inputs)?;
        let n = self.inner.signature().inputs.len();
        let mut all: Vec<Option<Value>> = vec![None; n];
        for (&i, v) in self.public.iter().zip(inputs) {
            all[i] = Some(v.clone());
        }
        for (i, v) in &self.binding.values {
            all[*i] = Some(v.clone());
        }
        #[allow(
            clippy::expect_used,
            reason = "public ∪ bound slots is every input (SlottedModule::new)"
        )]
        let all: Vec<Value> = all
            .into_iter()
            .map(|v| v.expect("every input bound"))
            .collect();
        self.inner.run(&all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::{Tensor, TensorType};

    fn sig() -> Signature {
        let (a, b) = input_names("model.layers.0.q_proj");
        Signature {
            inputs: vec![
                ("x".into(), TensorType::fixed(DType::F32, &[2, 3])),
                (a, TensorType::fixed(DType::F32, &[3, 4])),
                (b, TensorType::fixed(DType::F32, &[4, 5])),
            ],
            outputs: vec![],
        }
    }

    fn factors(rank: usize, target: &str) -> LoraFactors {
        LoraFactors {
            target: target.into(),
            a: Tensor::from_f32(&[rank, 3], &vec![1.0; rank * 3]),
            b: Tensor::from_f32(&[5, rank], &vec![2.0; rank * 5]),
            scale: 0.5,
        }
    }

    #[test]
    fn factors_are_transposed_scaled_and_zero_padded() {
        let slots = slots_of(&sig());
        assert_eq!(slots.len(), 1);
        assert_eq!(
            (slots[0].in_features, slots[0].rank, slots[0].out_features),
            (3, 4, 5)
        );
        let f = [factors(2, "layers.0.q_proj")];
        let bound = SlotBinding::new(&slots, &[&f]).unwrap();
        let Value::F32(a) = &bound.values[0].1 else {
            panic!()
        };
        let Value::F32(b) = &bound.values[1].1 else {
            panic!()
        };
        assert_eq!(a.shape(), [3, 4]);
        assert_eq!((a[[1, 1]], a[[1, 2]]), (1.0, 0.0));
        assert_eq!((b[[1, 4]], b[[2, 4]]), (1.0, 0.0));
        assert_eq!(bound.used_rank, [2]);
    }

    #[test]
    fn a_rank_above_the_slot_and_a_site_without_one_are_refused() {
        let slots = slots_of(&sig());
        let f = [factors(5, "layers.0.q_proj"), factors(2, "layers.0.v_proj")];
        let e = SlotBinding::new(&slots, &[&f]).unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].contains("rank 5 exceeds the slot's rank 4"),
            "{}",
            e[0]
        );
        assert!(
            e[1].contains("v_proj: the firmware module has no LoRA slot"),
            "{}",
            e[1]
        );
        // Two adapters of rank 2 share a rank-4 slot; a third does not fit.
        let two = [factors(2, "layers.0.q_proj")];
        assert!(SlotBinding::new(&slots, &[&two, &two]).is_ok());
        assert!(SlotBinding::new(&slots, &[&two, &two, &two]).is_err());
    }
}
