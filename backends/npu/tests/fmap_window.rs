//! The feature-map SRAM window: `ld`/`st` with a `dram` address from
//! `FMAP_BASE` reach the on-chip fmap SRAM, with its own DMA path, traffic
//! counters and energy; bad window accesses trap, never panic.

use m4c_npu::asm::assemble;
use m4c_npu::config::{MachineConfig, FMAP_BASE};
use m4c_npu::disasm::disassemble;
use m4c_npu::sim::{simulate, Mem, SimError, SimOptions, SimResult};

const LD_CFG: &str =
    "ld.cfg dram_stride=64 sram_stride=64 pad_top=0 pad_bottom=0 pad_left=0 pad_right=0";

/// Assembles `src` (checking that the disassembly reads back to the same
/// program) and runs it with the trace and the hazard checker.
fn run(src: &str, config: &MachineConfig) -> Result<SimResult, SimError> {
    let program = assemble(src).expect("assembles");
    assert_eq!(assemble(&disassemble(&program)).unwrap(), program);
    let options = SimOptions {
        trace: true,
        check_hazards: true,
        ..SimOptions::default()
    };
    simulate(&program, config, options)
}

fn trap(r: Result<SimResult, SimError>) -> (usize, String) {
    match r {
        Err(SimError::Trap { index, message, .. }) => (index, message),
        Err(e) => panic!("expected a trap, got {e}"),
        Ok(_) => panic!("expected a trap, got success"),
    }
}

/// A 4 x 64 tile `0, 1, 2, ...` (mod 251) at DRAM 0.
fn tile() -> Vec<u8> {
    (0..256u32).map(|i| (i % 251) as u8).collect()
}

/// DRAM → SRAM `a` → fmap (rows 128 apart from 0x100) → SRAM `w` → DRAM
/// 1024, each step ordered by a semaphore.
fn round_trip_source() -> String {
    let hex: String = tile().iter().map(|b| format!("{b:02x}")).collect();
    let window = FMAP_BASE + 0x100;
    format!(
        ".dram 2048\n.data 0 {hex}\n{LD_CFG}\n\
         ld space=a sram=0 dram=0 rows=4 row_bytes=64\n\
         signal engine=ld sem=0\nwait engine=st sem=0\n\
         st.cfg dram_stride=128 sram_stride=64\n\
         st space=a sram=0 dram={window} rows=4 row_bytes=64\n\
         signal engine=st sem=1\nwait engine=ld sem=1\n\
         ld.cfg dram_stride=128 sram_stride=64 pad_top=0 pad_bottom=0 pad_left=0 pad_right=0\n\
         ld space=w sram=0 dram={window} rows=4 row_bytes=64\n\
         signal engine=ld sem=2\nwait engine=st sem=2\n\
         st.cfg dram_stride=64 sram_stride=64\n\
         st space=w sram=0 dram=1024 rows=4 row_bytes=64\nhalt\n"
    )
}

#[test]
fn a_tile_stored_to_the_window_loads_back_with_window_timing_and_traffic() {
    let config = MachineConfig::edge_small();
    let r = run(&round_trip_source(), &config).unwrap();
    assert!(r.hazards.is_empty(), "{:?}", r.hazards);
    // Functional: the bytes went through the fmap and came back unchanged.
    assert_eq!(r.dram[1024..1280], tile()[..]);
    assert_eq!(r.fmap.len(), 512 << 10);
    for row in 0..4 {
        let at = 0x100 + 128 * row;
        assert_eq!(r.fmap[at..at + 64], tile()[64 * row..64 * (row + 1)]);
        assert!(r.fmap[at + 64..at + 128].iter().all(|&b| b == 0));
    }
    assert_eq!(r.fmap.iter().filter(|&&b| b != 0).count(), 254);

    // Timing, by hand from edge-small (DRAM: 100-cycle latency, 32 B/cycle;
    // window: 10-cycle latency, 64 B/cycle; a `*.cfg` takes 1 cycle).
    let cycles: Vec<(usize, u64, u64)> = r
        .trace
        .iter()
        .map(|e| (e.index, e.start, e.cycles))
        .collect();
    let dram = |bytes: u64| 100 + bytes.div_ceil(32);
    let window = |bytes: u64| 10 + bytes.div_ceil(64);
    assert_eq!(window(256), 14);
    let ld0 = 1;
    let st0 = ld0 + dram(256) + 1;
    let ld1 = st0 + window(256) + 1;
    let st1 = ld1 + window(256) + 1;
    assert_eq!(
        cycles,
        [
            (0, 0, 1),
            (1, ld0, dram(256)),
            (4, st0 - 1, 1),
            (5, st0, window(256)),
            (8, ld1 - 1, 1),
            (9, ld1, window(256)),
            (12, st1 - 1, 1),
            (13, st1, dram(256)),
        ]
    );
    assert_eq!(r.stats.cycles, st1 + dram(256));

    // Traffic and energy: window bytes are fmap bytes, not DRAM bytes.
    let s = &r.stats;
    assert_eq!((s.dram_read_bytes, s.dram_write_bytes), (256, 256));
    assert_eq!((s.fmap_read_bytes, s.fmap_write_bytes), (256, 256));
    assert_eq!((s.sram_read_bytes, s.sram_write_bytes), (512, 512));
    let e = &config.energy;
    let expected = 512.0 * e.sram_read_pj_per_byte
        + 512.0 * e.sram_write_pj_per_byte
        + 512.0 * e.dram_pj_per_byte
        + 512.0 * e.fmap_pj_per_byte;
    assert!(
        (s.energy_pj - expected).abs() < 1e-9 * expected,
        "{} vs {expected}",
        s.energy_pj
    );
    assert!(e.fmap_pj_per_byte < e.dram_pj_per_byte / 10.0);
    let text = s.to_text(&config);
    assert!(
        text.contains("DRAM bytes     read 256, written 256"),
        "{text}"
    );
    assert!(
        text.contains("fmap bytes     read 256, written 256"),
        "{text}"
    );
}

#[test]
fn the_fmap_starts_zeroed_in_every_run() {
    // Load from the window before anything was stored: zeros, on a fresh
    // machine each time even after a run that wrote there.
    let config = MachineConfig::edge_small();
    run(&round_trip_source(), &config).unwrap();
    let read_fresh = format!(
        ".dram 64\n.data 0 {}\n{LD_CFG}\nld space=a sram=0 dram={} rows=1 row_bytes=64\n\
         signal engine=ld sem=0\nwait engine=st sem=0\n\
         st.cfg dram_stride=64 sram_stride=64\nst space=a sram=0 dram=0 rows=1 row_bytes=64\nhalt\n",
        "ff".repeat(64),
        FMAP_BASE + 0x100
    );
    let r = run(&read_fresh, &config).unwrap();
    assert_eq!(r.dram, vec![0; 64]);
}

#[test]
fn a_dram_load_beside_a_window_store_keeps_the_whole_dram_rate() {
    // DMA-out streams 64000 B to the window from cycle 0 (data in [10,
    // 1010)) while DMA-in loads 3200 B from DRAM from cycle 1 (after its
    // `ld.cfg`; data from 101): the load gets the full shared 32 B/cycle.
    let body = |dst: u32| {
        format!(
            ".dram 70000\n{LD_CFG}\n\
             st space=w sram=0 dram={dst} rows=1 row_bytes=64000\n\
             ld space=a sram=0 dram=0 rows=1 row_bytes=3200\nhalt\n"
        )
    };
    let config = MachineConfig::edge_small();
    let cost = |src: &str, index: usize| {
        let r = run(src, &config).unwrap();
        r.trace.iter().find(|e| e.index == index).unwrap().cycles
    };
    assert_eq!(cost(&body(FMAP_BASE), 1), 10 + 64000 / 64);
    assert_eq!(cost(&body(FMAP_BASE), 2), 100 + 3200 / 32);
    // Control: a DRAM store of 64000 B in its place (data in [100, 2100)
    // at all 32 B/cycle) leaves the load nothing until it ends.
    assert_eq!(cost(&body(4096), 1), 100 + 64000 / 32);
    assert_eq!(cost(&body(4096), 2), 100 + (2100 - 101) + 3200 / 32);
}

#[test]
fn bad_window_accesses_trap_naming_the_instruction() {
    let small = MachineConfig {
        fmap_sram_bytes: 4096,
        ..MachineConfig::edge_small()
    };
    let none = MachineConfig {
        fmap_sram_bytes: 0,
        ..MachineConfig::edge_small()
    };
    let ld = |cfg: &str, dram: u64, rows: u32, row_bytes: u32| {
        format!(
            ".dram 64\nld.cfg dram_stride={cfg} sram_stride=64 pad_top=0 pad_bottom=0 pad_left=0 pad_right=0\n\
             ld space=a sram=0 dram={dram} rows={rows} row_bytes={row_bytes}\nhalt\n"
        )
    };
    let st = |cfg: &str, dram: u64, rows: u32, row_bytes: u32| {
        format!(
            ".dram 64\nst.cfg dram_stride={cfg} sram_stride=64\n\
             st space=a sram=0 dram={dram} rows={rows} row_bytes={row_bytes}\nhalt\n"
        )
    };
    let base = u64::from(FMAP_BASE);
    let cases = [
        // Past the fmap's 4096 bytes: the last row, one byte, a stride.
        (
            ld("64", base + 4090, 1, 8),
            &small,
            "fmap SRAM access [4090, 4098) outside its 4096 bytes",
        ),
        (
            st("64", base + 4096, 1, 1),
            &small,
            "fmap SRAM access [4096, 4097)",
        ),
        (st("4096", base, 2, 8), &small, "fmap SRAM access [0, 4104)"),
        (
            ld("0", u64::from(u32::MAX), 1, 16_000_000),
            &small,
            "fmap SRAM",
        ),
        // Straddling the boundary from below: by length, by stride.
        (ld("64", base - 8, 1, 16), &small, "reaches the fmap window"),
        (
            st(&base.to_string(), 0, 2, 8),
            &small,
            "reaches the fmap window",
        ),
        // No fmap at all.
        (ld("64", base, 1, 8), &none, "no fmap SRAM"),
        (st("64", base + 64, 4, 8), &none, "no fmap SRAM"),
    ];
    for (src, config, wanted) in cases {
        let (index, message) = trap(run(&src, config));
        assert_eq!(index, 1, "{src}");
        assert!(message.contains(wanted), "{src}: {message}");
    }
    // In bounds, up to the last byte of the fmap, works.
    let r = run(&st("64", base + 4088, 1, 8), &small).unwrap();
    assert_eq!(r.stats.fmap_write_bytes, 8);
}

#[test]
fn unsynchronised_window_store_and_load_are_a_hazard() {
    let src = |sync: &str| {
        format!(
            ".dram 64\nst.cfg dram_stride=64 sram_stride=64\n\
             st space=a sram=0 dram={} rows=2 row_bytes=16\n{sync}\
             {LD_CFG}\nld space=w sram=0 dram={} rows=1 row_bytes=16\nhalt\n",
            FMAP_BASE + 256,
            FMAP_BASE + 320
        )
    };
    let config = MachineConfig::edge_small();
    let racy = run(&src(""), &config).unwrap();
    assert_eq!(racy.hazards.len(), 1, "{:?}", racy.hazards);
    let h = &racy.hazards[0];
    assert_eq!((h.mem, h.start, h.end), (Mem::Fmap, 320, 336));
    let mut pair = [h.first.0, h.second.0];
    pair.sort();
    assert_eq!(pair, [1, 3]);
    let ordered = run(
        &src("signal engine=st sem=0\nwait engine=ld sem=0\n"),
        &config,
    )
    .unwrap();
    assert!(ordered.hazards.is_empty(), "{:?}", ordered.hazards);
    // The same DRAM addresses below the window are another memory: a DRAM
    // store to DRAM 256.. does not conflict with the window load.
    let apart = format!(
        ".dram 512\nst.cfg dram_stride=64 sram_stride=64\n\
         st space=a sram=0 dram=320 rows=1 row_bytes=16\n\
         {LD_CFG}\nld space=w sram=0 dram={} rows=1 row_bytes=16\nhalt\n",
        FMAP_BASE + 320
    );
    assert!(run(&apart, &config).unwrap().hazards.is_empty());
}

#[test]
fn window_addresses_pass_the_program_checks_and_round_trip_as_text() {
    // No machine is known when a program is decoded: the top of the window
    // is as valid as its bottom (the run traps if the fmap is smaller).
    let src = format!(
        ".dram 16\nst.cfg dram_stride=0 sram_stride=0\n\
         st space=a sram=0 dram={FMAP_BASE} rows=1 row_bytes=1\n\
         st space=w sram=0 dram={} rows=1 row_bytes=1\nhalt\n",
        u32::MAX
    );
    let program = assemble(&src).unwrap();
    let text = disassemble(&program);
    assert!(text.contains(" dram=0xc0000000 "), "{text}");
    assert!(text.contains(" dram=0xffffffff "), "{text}");
    let again = assemble(&text).unwrap();
    assert_eq!(again.to_bytes(), program.to_bytes());
    assert_eq!(
        m4c_npu::program::Program::from_bytes(&program.to_bytes()).unwrap(),
        program
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    /// A `st` near the edges of the DRAM image and of the window, against a
    /// plain model: it traps exactly when a row leaves the one memory its
    /// address selects, and otherwise writes the rows there and only there.
    #[test]
    fn stores_near_the_edges_match_a_model(
        near in 0usize..4, delta in -40i64..40, rows in 0u64..4, stride in 0u64..48,
        row_bytes in 0u64..24, fmap in proptest::sample::select(vec![0u32, 64, 256]),
    ) {
        let base = u64::from(FMAP_BASE);
        let anchor = [0, 128, base, base + u64::from(fmap)][near];
        let addr = anchor.saturating_add_signed(delta).min(u64::from(u32::MAX));
        let pattern: Vec<u8> = (1..=128u8).collect();
        let hex: String = pattern.iter().map(|b| format!("{b:02x}")).collect();
        let src = format!(
            ".dram 128\n.data 0 {hex}\n{LD_CFG}\nld space=a sram=0 dram=0 rows=1 row_bytes=128\n\
             signal engine=ld sem=0\nwait engine=st sem=0\n\
             st.cfg dram_stride={stride} sram_stride=24\n\
             st space=a sram=0 dram={addr} rows={rows} row_bytes={row_bytes}\nhalt\n"
        );
        let config = MachineConfig { fmap_sram_bytes: fmap, ..MachineConfig::edge_small() };
        // The model.
        let (mut dram, mut fmap_bytes) = (pattern.clone(), vec![0u8; fmap as usize]);
        let in_window = addr >= base;
        let (memory, offset) = if in_window { (&mut fmap_bytes, addr - base) } else { (&mut dram, addr) };
        let end = offset + rows.saturating_sub(1) * stride + row_bytes;
        let fits = rows == 0 || (end <= memory.len() as u64 && !(in_window && fmap == 0));
        if fits {
            for r in 0..rows {
                let at = (offset + r * stride) as usize;
                let from = (24 * r) as usize;
                memory[at..at + row_bytes as usize].copy_from_slice(&pattern[from..from + row_bytes as usize]);
            }
        }
        match run(&src, &config) {
            Ok(r) => {
                proptest::prop_assert!(fits, "{src}");
                proptest::prop_assert_eq!(r.dram, dram);
                proptest::prop_assert_eq!(r.fmap, fmap_bytes);
                let moved = rows * row_bytes;
                let window_bytes = if in_window { moved } else { 0 };
                proptest::prop_assert_eq!(r.stats.fmap_write_bytes, window_bytes);
                proptest::prop_assert_eq!(r.stats.dram_write_bytes, moved - window_bytes);
            }
            Err(SimError::Trap { index: 5, .. }) => proptest::prop_assert!(!fits, "{src}"),
            Err(e) => proptest::prop_assert!(false, "{src}: {e}"),
        }
    }
}
