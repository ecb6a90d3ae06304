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
