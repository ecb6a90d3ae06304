//! Bad programs give errors naming the instruction, never panics.

use m4c_npu::asm::{assemble, AsmError};
use m4c_npu::config::MachineConfig;
use m4c_npu::program::ProgramError;
use m4c_npu::sim::{simulate, SimError, SimOptions};

fn sim(src: &str) -> Result<m4c_npu::sim::SimResult, SimError> {
    let program = assemble(src).unwrap();
    simulate(
        &program,
        &MachineConfig::edge_small(),
        SimOptions {
            check_hazards: true,
            ..SimOptions::default()
        },
    )
}

fn trap_index(r: Result<m4c_npu::sim::SimResult, SimError>) -> (usize, String) {
    match r {
        Err(SimError::Trap { index, message, .. }) => (index, message),
        Err(e) => panic!("expected a trap, got {e}"),
        Ok(_) => panic!("expected a trap, got success"),
    }
}

#[test]
fn sram_address_out_of_range_traps() {
    let (index, msg) = trap_index(sim(".dram 64\nld.cfg dram_stride=0 sram_stride=0 pad_top=0 pad_bottom=0 pad_left=0 pad_right=0\nld space=a sram=262140 dram=0 rows=1 row_bytes=8\nhalt"));
    assert_eq!(index, 1);
    assert!(msg.contains("activation SRAM"), "{msg}");
}

#[test]
fn dma_outside_dram_traps() {
    let (index, msg) = trap_index(sim(".dram 64\nld.cfg dram_stride=64 sram_stride=64 pad_top=0 pad_bottom=0 pad_left=0 pad_right=0\nld space=w sram=0 dram=0 rows=2 row_bytes=8\nhalt"));
    assert_eq!(index, 1);
    assert!(msg.contains("DRAM image"), "{msg}");
}

#[test]
fn dma_past_the_fmap_window_traps() {
    // edge-small's fmap SRAM is 512 KiB: window addresses 0xC0000000..0xC0080000.
    let (index, msg) = trap_index(sim(".dram 64\nst.cfg dram_stride=0 sram_stride=0\nst space=a sram=0 dram=0xC007FFFC rows=1 row_bytes=8\nhalt"));
    assert_eq!(index, 1);
    assert!(msg.contains("fmap SRAM access [524284, 524292)"), "{msg}");
}

#[test]
fn matmul_larger_than_the_array_traps() {
    let (index, msg) = trap_index(sim("mm.cfg a_stride=64 w_stride=64 acc_stride=64\nmatmul acc=0 a=0 w=0 m=4 k=33 n=4 accumulate=0\nhalt"));
    assert_eq!(index, 1);
    assert!(msg.contains("k=33"), "{msg}");
}

#[test]
fn bad_requant_shift_traps() {
    let (index, _) = trap_index(sim(
        "rq.cfg multiplier=1 shift=40 zero_point=0 clamp_min=-128 clamp_max=127\nhalt",
    ));
    assert_eq!(index, 0);
}

#[test]
fn deadlock_is_reported_with_the_waiting_instructions() {
    // mx waits on s0 before signalling s1; ld waits on s1 before signalling s0.
    let r = sim("wait engine=mx sem=0\nsignal engine=mx sem=1\nwait engine=ld sem=1\nsignal engine=ld sem=0\nhalt");
    match r {
        Err(SimError::Deadlock(msg)) => {
            assert!(msg.contains("ld waits on s1 at instruction #2"), "{msg}");
            assert!(msg.contains("mx waits on s0 at instruction #0"), "{msg}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("expected deadlock"),
    }
}

#[test]
fn unbalanced_semaphores_are_rejected() {
    match assemble("signal engine=ld sem=4\nhalt") {
        Err(AsmError::Program(ProgramError::UnbalancedSemaphore {
            sem: 4,
            signals: 1,
            waits: 0,
            ..
        })) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn unordered_sram_writes_are_hazards_and_ordering_fixes_them() {
    let body = ".dram 64\nld.cfg dram_stride=0 sram_stride=0 pad_top=0 pad_bottom=0 pad_left=0 pad_right=0\n\
                ld space=a sram=0 dram=0 rows=1 row_bytes=16\n{sync}\
                vec.cfg dst_stride=0 src_stride=0 src2_stride=0\n\
                vcopy dst_space=a dst=8 src_space=a src=100 rows=1 cols=4\nhalt";
    let racy = sim(&body.replace("{sync}", "")).unwrap();
    assert_eq!(racy.hazards.len(), 1, "{:?}", racy.hazards);
    assert_eq!((racy.hazards[0].first.0, racy.hazards[0].second.0), (1, 3));
    let ordered =
        sim(&body.replace("{sync}", "signal engine=ld sem=0\nwait engine=vx sem=0\n")).unwrap();
    assert!(ordered.hazards.is_empty(), "{:?}", ordered.hazards);
}

#[test]
fn garbage_binaries_never_panic() {
    let good =
        assemble(".dram 16\n.data 0 00ff\nwait engine=mx sem=0\nsignal engine=ld sem=0\nhalt")
            .unwrap()
            .to_bytes();
    for i in 0..good.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bytes = good.clone();
            bytes[i] ^= flip;
            if let Ok(p) = m4c_npu::program::Program::from_bytes(&bytes) {
                let _ = simulate(&p, &MachineConfig::edge_small(), SimOptions::default());
            }
        }
    }
}

const LD_CFG: &str =
    "ld.cfg dram_stride=0 sram_stride=0 pad_top=0 pad_bottom=0 pad_left=0 pad_right=0\n";

#[test]
fn zero_length_transfers_outside_memory_trap() {
    // Each used to skip the bounds check and panic slicing past the memory.
    let cases = [
        (format!(".dram 64\n{LD_CFG}ld space=a sram=0 dram=4000000 rows=2 row_bytes=0\nhalt"), "DRAM image"),
        (format!(".dram 64\n{LD_CFG}ld space=a sram=16000000 dram=0 rows=1 row_bytes=0\nhalt"), "activation SRAM"),
        (".dram 64\nst.cfg dram_stride=0 sram_stride=0\nst space=a sram=0 dram=4000000 rows=3 row_bytes=0\nhalt".to_string(), "DRAM image"),
        (".dram 64\nst.cfg dram_stride=0 sram_stride=0\nst space=w sram=16000000 dram=0 rows=1 row_bytes=0\nhalt".to_string(), "weight SRAM"),
        ("vec.cfg dst_stride=0 src_stride=0 src2_stride=0\nvcopy dst_space=a dst=16000000 src_space=a src=0 rows=1 cols=0\nhalt".to_string(), "activation SRAM"),
        ("vec.cfg dst_stride=0 src_stride=0 src2_stride=0\nvcopy dst_space=a dst=0 src_space=w src=16000000 rows=4 cols=0\nhalt".to_string(), "weight SRAM"),
    ];
    for (src, memory) in cases {
        let (index, msg) = trap_index(sim(&src));
        assert_eq!(
            index,
            src.lines().filter(|l| !l.starts_with('.')).count() - 2,
            "{src}"
        );
        assert!(msg.contains(memory), "{src}: {msg}");
    }
    // In bounds, an empty transfer is a no-op.
    let ok = sim(&format!(
        ".dram 64\n{LD_CFG}ld space=a sram=0 dram=64 rows=2 row_bytes=0\nhalt"
    ))
    .unwrap();
    assert_eq!(ok.stats.dram_read_bytes, 0);
}

fn budget(r: Result<m4c_npu::sim::SimResult, SimError>) -> (usize, &'static str, String) {
    match r {
        Err(SimError::Budget {
            index,
            mnemonic,
            message,
        }) => (index, mnemonic, message),
        Err(e) => panic!("expected a budget error, got {e}"),
        Ok(_) => panic!("expected a budget error, got success"),
    }
}

fn sim_with(
    src: &str,
    max_cycles: u64,
    max_instructions: u64,
) -> Result<m4c_npu::sim::SimResult, SimError> {
    simulate(
        &assemble(src).unwrap(),
        &MachineConfig::edge_small(),
        SimOptions {
            max_cycles,
            max_instructions,
            ..SimOptions::default()
        },
    )
}

#[test]
fn one_huge_instruction_is_refused_before_it_runs() {
    // 65535 rows x 65535 columns re-reading the same bytes (stride 0): about
    // 2^32 element operations, refused at once from its lower bound.
    let src = "vec.cfg dst_stride=0 src_stride=0 src2_stride=0\n\
               vbin op=add dst_mem=a dst=0 a_mem=a a=0 b_mem=a b=0 rows=65535 cols=65535 bcast=0\nhalt";
    let t = std::time::Instant::now();
    let (index, mnemonic, msg) = budget(sim_with(src, 1_000_000, u64::MAX));
    assert!(t.elapsed().as_secs() < 2);
    assert_eq!((index, mnemonic), (1, "vbin"));
    assert!(msg.contains("past the budget of 1000000 cycles"), "{msg}");
    // The default budget still refuses a long string of them.
    let many = format!(
        "vec.cfg dst_stride=0 src_stride=0 src2_stride=0\n{}halt",
        "vcopy dst_space=a dst=0 src_space=a src=0 rows=65535 cols=16000000\n".repeat(2)
    );
    let (index, mnemonic, _) = budget(sim_with(&many, m4c_npu::sim::DEFAULT_MAX_CYCLES, u64::MAX));
    assert_eq!((index, mnemonic), (1, "vcopy"));
}

#[test]
fn the_cycle_budget_names_the_crossing_instruction() {
    let src = format!(
        ".dram 4096\n{LD_CFG}{}halt",
        "ld space=a sram=0 dram=0 rows=1 row_bytes=4096\n".repeat(50)
    );
    let full = sim_with(&src, u64::MAX, u64::MAX).unwrap().stats.cycles;
    let (index, mnemonic, _) = budget(sim_with(&src, full / 2, u64::MAX));
    assert_eq!(mnemonic, "ld");
    assert!((20..=30).contains(&index), "{index}");
    assert!(sim_with(&src, full, u64::MAX).is_ok());
}

/// A machine config may claim any number of lanes: with a million vector
/// lanes a `vbin` of 10^9 elements takes a thousand cycles, far inside the
/// cycle budget, so only the work budget (counted from the instruction's
/// fields, whatever the config) stops a short program of them from running
/// for minutes per instruction.
#[test]
fn the_work_budget_holds_whatever_the_config_claims() {
    let mut config = MachineConfig::edge_small();
    config.vector_lanes = 1 << 20;
    config.validate().unwrap();
    let src = format!(
        "vec.cfg dst_stride=0 src_stride=0 src2_stride=0\n{}halt",
        "vbin op=add dst_mem=a dst=0 a_mem=a a=0 b_mem=a b=0 rows=65535 cols=16384 bcast=0\n"
            .repeat(3)
    );
    let program = assemble(&src).unwrap();
    let lean = SimOptions {
        max_work: 1_000_000,
        ..SimOptions::default()
    };
    let t = std::time::Instant::now();
    let (index, mnemonic, msg) = budget(simulate(&program, &config, lean));
    assert!(t.elapsed().as_secs() < 2, "{:?}", t.elapsed());
    assert_eq!((index, mnemonic), (1, "vbin"));
    assert!(msg.contains("1073725440 element operations"), "{msg}");
    assert!(
        msg.contains("past the budget of 1000000 (max_work)"),
        "{msg}"
    );
    // The default budget refuses one instruction of 65535 × 65535
    // elements (4.3·10^9 units) outright.
    let one = "vec.cfg dst_stride=0 src_stride=0 src2_stride=0\n\
               vbin op=add dst_mem=a dst=0 a_mem=a a=0 b_mem=a b=0 rows=65535 cols=65535 bcast=0\nhalt";
    let t = std::time::Instant::now();
    let (index, _, msg) = budget(simulate(
        &assemble(one).unwrap(),
        &config,
        SimOptions::default(),
    ));
    assert!(t.elapsed().as_secs() < 2, "{:?}", t.elapsed());
    assert_eq!(index, 1);
    assert!(msg.contains("(max_work)"), "{msg}");
}

#[test]
fn the_instruction_budget_counts_every_instruction() {
    let src = format!(
        "{}halt",
        "vec.cfg dst_stride=0 src_stride=0 src2_stride=0\n".repeat(10)
    );
    let (index, mnemonic, msg) = budget(sim_with(&src, u64::MAX, 4));
    assert_eq!((index, mnemonic), (4, "vec.cfg"));
    assert!(msg.contains("more than 4 instructions"), "{msg}");
    assert!(sim_with(&src, u64::MAX, 10).is_ok());
}

/// A program the fuzzer (`fuzz/fuzz_targets/npu_program.rs`) reported as a
/// timeout: 13 instructions, 35.6 M vector element operations. It ran out
/// of wall clock only because the fuzzer was starved of CPU; here it
/// finishes under the default budgets, and under the fuzz target's
/// budgets (1000× smaller) it is a budget error naming its instruction,
/// never a hang.
#[test]
fn the_fuzzers_slow_program_finishes_or_hits_the_budget() {
    let bytes = include_bytes!("data/fuzz_slow_program.npub");
    let program = m4c_npu::program::Program::from_bytes(bytes).unwrap();
    let config = MachineConfig::edge_small();
    let t = std::time::Instant::now();
    let full = simulate(&program, &config, SimOptions::default());
    assert!(full.is_ok(), "{:?}", full.err().map(|e| e.to_string()));
    assert!(t.elapsed().as_secs() < 60, "{:?}", t.elapsed());
    let small = SimOptions {
        max_cycles: m4c_npu::sim::DEFAULT_MAX_CYCLES / 1000,
        max_instructions: m4c_npu::sim::DEFAULT_MAX_INSTRUCTIONS / 1000,
        ..SimOptions::default()
    };
    match simulate(&program, &config, small) {
        Ok(_) | Err(SimError::Budget { .. }) => {}
        Err(e) => panic!("{e}"),
    }
}
