//! Sharing the code of identical kernels: a transformer's layers lower to
//! the same softmax, norm, elementwise and copy kernels over and over, and
//! LLVM would otherwise optimise and emit every copy.

use std::collections::HashMap;

use inkwell::module::Module;
use inkwell::values::{AnyValue, BasicValue};

use super::lower::PlanStep;

/// Points every kernel step whose function is textually identical (apart
/// from its name) to an earlier step's function at that earlier function,
/// and deletes the duplicates. Returns how many were removed.
pub(crate) fn share_identical_kernels(module: &Module<'_>, steps: &mut [PlanStep]) -> usize {
    let mut first_by_body: HashMap<String, String> = HashMap::new();
    let mut removed = 0;
    for step in steps {
        let PlanStep::Kernel { symbol, .. } = step else {
            continue;
        };
        let Some(function) = module.get_function(symbol) else {
            continue;
        };
        let text = function.print_to_string().to_string();
        let body = text.replacen(&format!("@{symbol}("), "@(", 1);
        match first_by_body.get(&body) {
            // A kernel shared by several steps already (`shared_kernel`).
            Some(first) if first == symbol => {}
            Some(first) => {
                if function
                    .as_global_value()
                    .as_pointer_value()
                    .get_first_use()
                    .is_none()
                {
                    // SAFETY: the function has no uses in the module (checked
                    // just above) and the plan now calls `first` instead, so
                    // nothing refers to it any more.
                    unsafe { function.delete() };
                    *symbol = first.clone();
                    removed += 1;
                }
            }
            None => {
                first_by_body.insert(body, symbol.clone());
            }
        }
    }
    removed
}
