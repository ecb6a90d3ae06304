//! The simulator: dispatches a program to four in-order engines (DMA-in,
//! matrix, vector, DMA-out) that run concurrently, ordered only by
//! semaphores and barriers; executes every instruction bit-exactly and
//! accounts cycles, traffic and energy.
//!
//! Engines advance in global time order: the engine whose next instruction
//! can start earliest runs it. A `wait` can start once a matching `signal`
//! happened; the functional effect of an instruction is applied at its start,
//! which equals program order for every properly synchronised program.

mod exec;
mod hazard;
mod memory;
mod timing;
mod trace;

pub use exec::BinOp;
pub use hazard::Hazard;
pub use memory::Mem;
pub use timing::{work, TimingMode};
pub use trace::{chrome_trace, TraceEvent};

use crate::config::MachineConfig;
use crate::isa::{Engine, Instr};
use crate::program::{Program, ProgramError};
use crate::report::Stats;
use exec::MachineState;
use hazard::{Clock, HazardChecker};
use std::collections::VecDeque;

/// What to collect besides the functional result and statistics, and the
/// budgets that bound a run.
#[derive(Clone, Copy, Debug)]
pub struct SimOptions {
    /// The matrix-unit cycle model.
    pub timing: TimingMode,
    /// Record one trace event per instruction.
    pub trace: bool,
    /// Run the hazard checker.
    pub check_hazards: bool,
    /// No engine may run past this cycle: a program that would is stopped
    /// at the instruction that crosses it (checked before the instruction
    /// runs, from a lower bound of its cost, so one huge instruction never
    /// runs either).
    pub max_cycles: u64,
    /// At most this many instructions are executed.
    pub max_instructions: u64,
    /// At most this much host work (element operations, see
    /// [`work`]) is done: checked before each instruction runs, and
    /// independent of the machine config, so it bounds the simulator's
    /// own running time where the cycle budget cannot (a config may claim
    /// any number of lanes or DMA bytes per cycle).
    pub max_work: u64,
}

/// The default cycle budget: far beyond any layer the generators emit.
pub const DEFAULT_MAX_CYCLES: u64 = 10_000_000_000;

/// The default instruction budget.
pub const DEFAULT_MAX_INSTRUCTIONS: u64 = 100_000_000;

/// The default work budget: well above the largest model we simulate whole
/// (ViT-B/16's 1.75·10^10 multiply-accumulates are 2.7·10^8 units; it,
/// Whisper tiny and a 6-layer LLaMA prefill run under this budget), and
/// under a minute of the simulator's time on the slowest instruction kind
/// (`vbin` with three requantisations per element: measured 12.6 ns per
/// unit in a release build on a Zen 3 core).
pub const DEFAULT_MAX_WORK: u64 = 4_000_000_000;

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            timing: TimingMode::default(),
            trace: false,
            check_hazards: false,
            max_cycles: DEFAULT_MAX_CYCLES,
            max_instructions: DEFAULT_MAX_INSTRUCTIONS,
            max_work: DEFAULT_MAX_WORK,
        }
    }
}

/// Why a simulation stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The program is malformed.
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// An instruction trapped (bad address, bad shape, ...).
    #[error("trap at instruction #{index} `{mnemonic}`: {message}")]
    Trap {
        /// Instruction index.
        index: usize,
        /// Its mnemonic.
        mnemonic: &'static str,
        /// What went wrong.
        message: String,
    },
    /// Every unfinished engine waits on a semaphore nobody will signal.
    #[error("deadlock: {0}")]
    Deadlock(String),
    /// The run would exceed its cycle, instruction or work budget.
    #[error("budget exceeded at instruction #{index} `{mnemonic}`: {message}")]
    Budget {
        /// Instruction index.
        index: usize,
        /// Its mnemonic.
        mnemonic: &'static str,
        /// Which budget and by how much.
        message: String,
    },
}

/// The outcome of a simulation.
pub struct SimResult {
    /// Statistics.
    pub stats: Stats,
    /// The final DRAM image.
    pub dram: Vec<u8>,
    /// The final contents of the feature-map SRAM (`fmap_sram_bytes`
    /// bytes, zero at the start of every run): results a program left there.
    pub fmap: Vec<u8>,
    /// Per-instruction timeline (empty unless requested).
    pub trace: Vec<TraceEvent>,
    /// Unordered conflicting accesses (empty unless requested).
    pub hazards: Vec<Hazard>,
}

struct Semaphore {
    /// Pending signals: the cycle each happened and the signaller's clock.
    pending: VecDeque<(u64, Clock)>,
}

/// Runs `program` on the machine `config`.
pub fn simulate(
    program: &Program,
    config: &MachineConfig,
    options: SimOptions,
) -> Result<SimResult, SimError> {
    run(program, config, options, |_, _, _, _| {})
}

/// [`simulate`] that also accounts each of `spans` (ranges of instruction
/// indices, e.g. the layers of a linked part) on its own: per span, the
/// statistics of its instructions, with `cycles` from the first of them
/// starting to the last finishing. `spans` must be in order and disjoint.
pub fn simulate_spans(
    program: &Program,
    config: &MachineConfig,
    options: SimOptions,
    spans: &[std::ops::Range<usize>],
) -> Result<(SimResult, Vec<Stats>), SimError> {
    let mut per: Vec<(Stats, Option<(u64, u64)>)> = vec![Default::default(); spans.len()];
    let result = run(program, config, options, |index, fx, start, cycles| {
        // Spans are in order and disjoint.
        let k = spans.partition_point(|s| s.end <= index);
        if !spans.get(k).is_some_and(|s| s.contains(&index)) {
            return;
        }
        let (stats, window) = &mut per[k];
        account(stats, fx);
        stats.instructions += 1;
        if fx.matmul.is_some() {
            stats.compute_cycles += cycles;
        }
        let (lo, hi) = window.get_or_insert((start, start + cycles));
        *lo = (*lo).min(start);
        *hi = (*hi).max(start + cycles);
    })?;
    let stats = per
        .into_iter()
        .map(|(mut s, window)| {
            s.cycles = window.map_or(0, |(lo, hi)| hi - lo);
            s.finish(config);
            s
        })
        .collect();
    Ok((result, stats))
}

/// The simulation loop; `visit` sees every executed instruction (index,
/// effect, start cycle, cycles).
fn run(
    program: &Program,
    config: &MachineConfig,
    options: SimOptions,
    mut visit: impl FnMut(usize, &exec::Effect, u64, u64),
) -> Result<SimResult, SimError> {
    program.validate()?;
    let mut state = MachineState::new(config, program.dram_image());
    let mut stats = Stats::default();
    let mut trace = Vec::new();
    let mut hazards = HazardChecker::default();
    let mut sems: Vec<Semaphore> = (0..16)
        .map(|_| Semaphore {
            pending: VecDeque::new(),
        })
        .collect();
    let mut time = [0u64; 4];
    let mut busy = [0u64; 4];
    let mut clocks = [[0u64; 4]; 4];
    let mut history = timing::History::default();
    let mut executed = 0u64;
    let mut worked = 0u64;

    for phase in program.instrs.split(|i| matches!(i, Instr::Barrier {})) {
        let base = phase.as_ptr() as usize - program.instrs.as_ptr() as usize;
        let base = base / std::mem::size_of::<Instr>();
        let mut queues: [Vec<usize>; 4] = Default::default();
        for (offset, instr) in phase.iter().enumerate() {
            if let Some(engine) = instr.engine() {
                queues[engine.index()].push(base + offset);
            }
        }
        let mut pos = [0usize; 4];
        loop {
            let mut next: Option<(u64, usize)> = None;
            for e in 0..4 {
                let Some(&index) = queues[e].get(pos[e]) else {
                    continue;
                };
                let start = match &program.instrs[index] {
                    Instr::Wait { sem, .. } => match sems[*sem as usize].pending.front() {
                        Some(&(t, _)) => time[e].max(t),
                        None => continue,
                    },
                    _ => time[e],
                };
                if next.is_none_or(|(best, _)| start < best) {
                    next = Some((start, e));
                }
            }
            let Some((start, e)) = next else {
                if (0..4).all(|e| pos[e] == queues[e].len()) {
                    break;
                }
                return Err(SimError::Deadlock(describe_blocked(program, &queues, &pos)));
            };
            let index = queues[e][pos[e]];
            pos[e] += 1;
            let instr = &program.instrs[index];
            executed += 1;
            worked = worked.saturating_add(timing::work(instr));
            let least = start.saturating_add(timing::lower_bound(instr, config));
            let over = if executed > options.max_instructions {
                Some(format!(
                    "more than {} instructions (max_instructions)",
                    options.max_instructions
                ))
            } else if least > options.max_cycles {
                Some(format!(
                    "it would run until at least cycle {least}, past the budget of {} cycles (max_cycles)",
                    options.max_cycles
                ))
            } else if worked > options.max_work {
                Some(format!(
                    "it would bring the run's work to {worked} element operations, past the budget of {} (max_work)",
                    options.max_work
                ))
            } else {
                None
            };
            if let Some(message) = over {
                return Err(SimError::Budget {
                    index,
                    mnemonic: instr.spec().mnemonic,
                    message,
                });
            }
            time[e] = start;
            clocks[e][e] += 1;
            match instr {
                Instr::Wait { sem, .. } => {
                    #[allow(
                        clippy::expect_used,
                        reason = "a Wait is picked only when its semaphore has a signal pending"
                    )]
                    let (_, clock) = sems[*sem as usize]
                        .pending
                        .pop_front()
                        .expect("checked non-empty");
                    for i in 0..4 {
                        clocks[e][i] = clocks[e][i].max(clock[i]);
                    }
                }
                Instr::Signal { sem, .. } => {
                    sems[*sem as usize].pending.push_back((start, clocks[e]))
                }
                _ => {
                    let fx = state
                        .execute(instr, config)
                        .map_err(|message| SimError::Trap {
                            index,
                            mnemonic: instr.spec().mnemonic,
                            message,
                        })?;
                    let cycles =
                        timing::cost(instr, &fx, config, options.timing, start, &mut history);
                    account(&mut stats, &fx);
                    visit(index, &fx, start, cycles);
                    if options.check_hazards {
                        for (regions, write) in [(&fx.reads, false), (&fx.writes, true)] {
                            for region in regions {
                                hazards.access(region, write, e, &clocks[e], index);
                            }
                        }
                    }
                    if options.trace {
                        trace.push(TraceEvent {
                            engine: Engine::ALL[e],
                            index,
                            name: instr.spec().mnemonic,
                            start,
                            cycles,
                        });
                    }
                    time[e] += cycles;
                    busy[e] += cycles;
                    if time[e] > options.max_cycles {
                        return Err(SimError::Budget {
                            index,
                            mnemonic: instr.spec().mnemonic,
                            message: format!(
                                "it ends at cycle {}, past the budget of {} cycles (max_cycles)",
                                time[e], options.max_cycles
                            ),
                        });
                    }
                    if fx.matmul.is_some() {
                        stats.compute_cycles += cycles;
                    }
                    stats.instructions += 1;
                }
            }
        }
        // A barrier: everybody continues from the latest finish time, knowing
        // everything every engine did.
        let end = *time.iter().max().unwrap_or(&0);
        time = [end; 4];
        let mut joined = [0u64; 4];
        for c in &clocks {
            for i in 0..4 {
                joined[i] = joined[i].max(c[i]);
            }
        }
        clocks = [joined; 4];
    }

    stats.cycles = *time.iter().max().unwrap_or(&0);
    stats.engine_busy_cycles = crate::report::EngineCycles {
        ld: busy[0],
        mx: busy[1],
        vx: busy[2],
        st: busy[3],
    };
    if options.timing == TimingMode::ScaleSimCompat {
        stats.scalesim_compute_cycles = Some(stats.compute_cycles.saturating_sub(1));
    }
    stats.finish(config);
    Ok(SimResult {
        stats,
        dram: state.dram,
        fmap: state.fmap,
        trace,
        hazards: hazards.hazards,
    })
}

fn account(stats: &mut Stats, fx: &exec::Effect) {
    for (regions, write) in [(&fx.reads, false), (&fx.writes, true)] {
        for r in regions {
            let (counter, scale) = match (r.mem, write) {
                (Mem::Weight | Mem::Act, false) => (&mut stats.sram_read_bytes, 1),
                (Mem::Weight | Mem::Act, true) => (&mut stats.sram_write_bytes, 1),
                (Mem::Acc, false) => (&mut stats.acc_read_bytes, 4),
                (Mem::Acc, true) => (&mut stats.acc_write_bytes, 4),
                (Mem::Dram, false) => (&mut stats.dram_read_bytes, 1),
                (Mem::Dram, true) => (&mut stats.dram_write_bytes, 1),
                (Mem::Fmap, false) => (&mut stats.fmap_read_bytes, 1),
                (Mem::Fmap, true) => (&mut stats.fmap_write_bytes, 1),
            };
            *counter += r.units() * scale;
        }
    }
    stats.macs += fx.macs;
    stats.vector_ops += fx.vector_ops;
    stats.sfu_ops += fx.sfu_ops;
    stats.vector_macs += fx.vector_macs;
}

fn describe_blocked(program: &Program, queues: &[Vec<usize>; 4], pos: &[usize; 4]) -> String {
    let mut parts = Vec::new();
    for e in 0..4 {
        if let Some(&index) = queues[e].get(pos[e]) {
            if let Instr::Wait { sem, .. } = program.instrs[index] {
                parts.push(format!(
                    "{} waits on s{sem} at instruction #{index}",
                    Engine::ALL[e].name()
                ));
            }
        }
    }
    parts.join(", ")
}
