//! What every suite shares: the engines, running one graph on one engine,
//! the one output comparison, and a small parallel map over cases.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use m4c_compiler::backend::{CodeGenerator, CompileRequest};
use m4c_ir::Graph;
use m4c_ops::Value;

use crate::qemu;

/// What one case did on one engine.
#[derive(Clone, Debug)]
pub enum Outcome {
    Pass,
    /// The engine ran the case (or refused or failed to compile it) and got
    /// it wrong: its expected-failure list must name it.
    Fail(String),
    /// Not the engine's doing: the frontend cannot lower the case, or the
    /// engine cannot run on this host.
    Skip(String),
}

/// What one case did on every engine.
pub struct CaseResult {
    /// `suite/case`, the key the expected-failure lists use.
    pub name: String,
    /// One outcome per engine, in [`engines`] order.
    pub outcomes: Vec<Outcome>,
}

/// One registered backend, the target it compiles for, and whether this
/// host can execute it.
pub struct Engine {
    /// Its code generator, from the registry.
    pub backend: &'static dyn CodeGenerator,
    /// `Some(target)`: a cross target whose code runs under user-mode
    /// emulation ([`qemu`]); `None`: the host, in this process.
    pub cross: Option<&'static str>,
    /// `Err(reason)` when this host cannot execute the backend's code.
    pub runnable: Result<(), String>,
}

impl Engine {
    /// The registry name (`cpu-aarch64` for the emulated cross target),
    /// used in reports and for its xfail list.
    pub fn name(&self) -> String {
        match self.cross {
            Some(target) => format!("{}-{target}", self.backend.name()),
            None => self.backend.name().to_string(),
        }
    }
}

/// Every registered backend, plus the CPU backend's aarch64 code under
/// emulation: a new backend joins the suite by being registered in
/// `m4c_backends::all()`. `M4C_CONFORMANCE_ENGINES=a,b` restricts the run
/// (for local work; CI runs all).
pub fn engines() -> Vec<Engine> {
    let only = std::env::var("M4C_CONFORMANCE_ENGINES").ok();
    let host = m4c_backends::all().iter().map(|&backend| Engine {
        backend,
        cross: None,
        runnable: m4c_backends::runnable(backend, None),
    });
    let emulated = m4c_backends::lookup("cpu").map(|backend| Engine {
        backend,
        cross: Some(qemu::TARGET),
        runnable: qemu::available(),
    });
    host.chain(emulated)
        .filter(|e| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|n| n.trim() == e.name()))
        })
        .collect()
}

/// Compiles `graph` on `engine` and runs it on `inputs` (signature order),
/// in this process. A panic anywhere is caught and becomes an error, so one
/// broken case cannot take the suite down.
pub fn execute(engine: &Engine, graph: Graph, inputs: &[Value]) -> Result<Vec<Value>, String> {
    let name = graph.name.clone();
    let request = CompileRequest {
        threads: 1,
        ..Default::default()
    };
    catch_unwind(AssertUnwindSafe(|| {
        if let Some(target) = engine.cross {
            let request = CompileRequest {
                target: Some(target.to_string()),
                ..request
            };
            let artifact = engine
                .backend
                .compile(&graph, &request)
                .map_err(|e| format!("compile: {e}"))?;
            return qemu::run(&graph, &artifact, inputs).map_err(|e| format!("run: {e}"));
        }
        let (exec, _) = m4c_backends::prepare(engine.backend, &name, graph, &request)
            .map_err(|e| format!("compile: {e}"))?;
        exec.run(inputs).map_err(|e| format!("run: {e}"))
    }))
    .unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(format!("panicked: {msg}"))
    })
}

/// A graph ready to run: its inputs (signature order) and the outputs it
/// must give (output order, with their names for messages).
pub struct Loaded {
    /// The lowered or parsed graph.
    pub graph: Graph,
    /// Its runtime inputs, in signature order.
    pub inputs: Vec<Value>,
    /// Expected outputs in output order, named for messages.
    pub want: Vec<(String, Value)>,
}

/// Runs a loaded case on every engine and compares its outputs (`rtol`,
/// `atol` as numpy's `allclose`). Engines this host cannot run are skipped
/// with their reason.
pub fn run_everywhere(engines: &[Engine], case: &Loaded, (rtol, atol): (f64, f64)) -> Vec<Outcome> {
    engines
        .iter()
        .map(|engine| {
            if let Err(why) = &engine.runnable {
                return Outcome::Skip(why.clone());
            }
            match execute(engine, case.graph.clone(), &case.inputs) {
                Ok(got) => check_outputs(&got, &case.want, rtol, atol),
                Err(e) => Outcome::Fail(e),
            }
        })
        .collect()
}

/// Compares every output with its expected value (names for messages).
pub fn check_outputs(got: &[Value], want: &[(String, Value)], rtol: f64, atol: f64) -> Outcome {
    if got.len() != want.len() {
        return Outcome::Fail(format!("{} outputs, expected {}", got.len(), want.len()));
    }
    for (k, (got, (name, want))) in got.iter().zip(want).enumerate() {
        if let Err(e) = compare(got, want, rtol, atol) {
            return Outcome::Fail(format!("output {k} `{name}`: {e}"));
        }
    }
    Outcome::Pass
}

/// `m4c_ops::compare` (numpy `allclose`, NaN equals NaN, equal
/// infinities are equal) after checking the element type, which the node
/// tests pin down.
pub fn compare(got: &Value, want: &Value, rtol: f64, atol: f64) -> Result<(), String> {
    if got.dtype() != want.dtype() {
        return Err(format!("{}, expected {}", got.dtype(), want.dtype()));
    }
    let c = m4c_ops::compare(got, want, rtol, atol);
    if c.passed() {
        Ok(())
    } else {
        Err(format!("{} (rtol {rtol:e}, atol {atol:e})", c.summary()))
    }
}

/// Threads the suite runs cases on: `M4C_CONFORMANCE_THREADS`, else the
/// host's cores.
pub fn threads() -> usize {
    std::env::var("M4C_CONFORMANCE_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// `f` over `items` on [`threads`] threads, results in `items` order. Each
/// case compiles in its own LLVM context, so cases are independent.
pub fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads().min(items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every item was run"))
        .collect()
}
