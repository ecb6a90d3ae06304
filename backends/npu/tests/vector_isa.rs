//! The vector-unit instructions through the assembler, the decoder and the
//! simulator, on hand-checked values.

use m4c_npu::asm::assemble;
use m4c_npu::config::MachineConfig;
use m4c_npu::disasm::disassemble;
use m4c_npu::program::{Program, ProgramError};
use m4c_npu::sim::{simulate, SimError, SimOptions};

const CFG0: &str =
    "ld.cfg dram_stride=4 sram_stride=4 pad_top=0 pad_bottom=0 pad_left=0 pad_right=0\n\
                    st.cfg dram_stride=4 sram_stride=4\n";

/// Loads the 2x4 int8 matrix at DRAM 0 to SRAM 0, runs `body` on the vector
/// unit, stores SRAM 64.. (2x4 bytes) to DRAM 64; returns those 8 bytes.
fn run(body: &str) -> Result<Vec<i8>, SimError> {
    let src = format!(
        ".dram 128\n.data 0 01fd057f80000302\n{CFG0}ld space=a sram=0 dram=0 rows=2 row_bytes=4\n\
         signal engine=ld sem=0\nwait engine=vx sem=0\n{body}\nsignal engine=vx sem=1\n\
         wait engine=st sem=1\nst space=a sram=64 dram=64 rows=2 row_bytes=4\nhalt\n"
    );
    let program = assemble(&src).expect("assembles");
    let text = disassemble(&program);
    assert_eq!(assemble(&text).unwrap(), program, "disassembly round-trips");
    let config = MachineConfig::edge_small();
    let options = SimOptions {
        check_hazards: true,
        ..SimOptions::default()
    };
    let r = simulate(&program, &config, options)?;
    assert!(r.hazards.is_empty());
    Ok(r.dram[64..72].iter().map(|&b| b as i8).collect())
}

// Input rows: [1, -3, 5, 127] and [-128, 0, 3, 2].

#[test]
fn binary_ops_with_row_broadcast_and_requantisation() {
    // max over each row (127, 3) into acc 0..2, then x - rowmax, halved, zp +1.
    let out = run("vec.cfg dst_stride=1 src_stride=4 src2_stride=1\n\
         vred op=max dst=0 src_mem=a src=0 rows=2 cols=4 shift=0\n\
         vec.cfg dst_stride=4 src_stride=4 src2_stride=1\n\
         rq.cfg multiplier=1073741824 shift=0 zero_point=1 clamp_min=-128 clamp_max=127\n\
         vbin op=sub dst_mem=a dst=64 a_mem=a a=0 b_mem=acc b=0 rows=2 cols=4 bcast=1")
    .unwrap();
    // (1-127)/2 = -63 -> -62; (-3-127)/2 = -65 -> -64; (5-127)/2=-61 -> -60; 0 -> 1;
    // TFLite's doubling high multiply rounds ties upwards:
    // (-128-3)/2 = -65.5 -> -65 -> -64; (0-3)/2 = -1.5 -> -1 -> 0; 0 -> 1; -0.5 -> 0 -> 1.
    assert_eq!(out, vec![-62, -64, -60, 1, -64, 0, 1, 1]);
}

#[test]
fn sums_sfu_and_fixed_point_multiply() {
    // sum of squares per row: 1+9+25+16129 = 16164, 16384+0+9+4 = 16397.
    // r = rsqrt in Q34, then q = x * r / 2^31 (Q31 multiply) = 8 x / sqrt(sumsq),
    // doubled by the output stage.
    let out = run("vec.cfg dst_stride=1 src_stride=4 src2_stride=1\n\
         vred op=sumsq dst=0 src_mem=a src=0 rows=2 cols=4 shift=0\n\
         vsfu op=rsqrt dst=0 src=0 rows=1 cols=2 frac=34 bias=0\n\
         vec.cfg dst_stride=4 src_stride=4 src2_stride=1\n\
         rq.cfg multiplier=1073741824 shift=2 zero_point=0 clamp_min=-128 clamp_max=127\n\
         vbin.cfg a_offset=0 a_multiplier=0 a_shift=0 b_offset=0 b_multiplier=0 b_shift=0\n\
         vbin op=mulq dst_mem=a dst=64 a_mem=a a=0 b_mem=acc b=0 rows=2 cols=4 bcast=1")
    .unwrap();
    let expect = |x: f64, s: f64| {
        let r = (2f64.powi(34) / s.sqrt()).floor();
        (2.0 * (x * r / 2f64.powi(31)).round()) as i8
    };
    let (s0, s1) = (16164.0, 16397.0);
    assert_eq!(
        out,
        vec![
            expect(1.0, s0),
            expect(-3.0, s0),
            expect(5.0, s0),
            expect(127.0, s0),
            expect(-128.0, s1),
            0,
            expect(3.0, s1),
            expect(2.0, s1)
        ]
    );
}

#[test]
fn lut_maps_through_the_table() {
    // A table in SRAM 128..384 that negates (saturating): table[i] = -(i - 128).
    let mut table = String::new();
    for i in 0..256i32 {
        table.push_str(&format!(
            "{:02x}",
            (-(i - 128)).clamp(-128, 127) as i8 as u8
        ));
    }
    let src = format!(
        ".dram 512\n.data 0 01fd057f80000302\n.data 128 {table}\n{CFG0}\
         ld space=a sram=0 dram=0 rows=2 row_bytes=4\n\
         ld.cfg dram_stride=0 sram_stride=0 pad_top=0 pad_bottom=0 pad_left=0 pad_right=0\n\
         ld space=a sram=128 dram=128 rows=1 row_bytes=256\n\
         signal engine=ld sem=0\nwait engine=vx sem=0\n\
         vec.cfg dst_stride=4 src_stride=4 src2_stride=0\n\
         vlut dst=64 src=0 table=128 rows=2 cols=4\n\
         signal engine=vx sem=1\nwait engine=st sem=1\n\
         st space=a sram=64 dram=64 rows=2 row_bytes=4\nhalt\n"
    );
    let r = simulate(
        &assemble(&src).unwrap(),
        &MachineConfig::edge_small(),
        SimOptions::default(),
    )
    .unwrap();
    let out: Vec<i8> = r.dram[64..72].iter().map(|&b| b as i8).collect();
    assert_eq!(out, vec![-1, 3, -5, -127, 127, 0, -3, -2]);
}

#[test]
fn bad_vector_programs_are_errors() {
    let err = run("vbin op=mac dst_mem=a dst=64 a_mem=a a=0 b_mem=a b=0 rows=2 cols=4 bcast=0")
        .unwrap_err();
    assert!(err.to_string().contains("accumulator"), "{err}");
    let err = run("vec.cfg dst_stride=1 src_stride=1 src2_stride=1\n\
                   vsfu op=exp2 dst=0 src=16383 rows=1 cols=2 frac=30 bias=0")
    .unwrap_err();
    assert!(err.to_string().contains("accumulator access"), "{err}");
    let err =
        run("vbin.cfg a_offset=0 a_multiplier=1 a_shift=31 b_offset=0 b_multiplier=0 b_shift=0")
            .unwrap_err();
    assert!(err.to_string().contains("a_shift=31"), "{err}");
    // An sfu op code past the list (3) does not decode.
    let word = m4c_npu::isa::encode_word(&m4c_npu::isa::Instr::Vsfu {
        op: 2,
        dst: 0,
        src: 0,
        rows: 1,
        cols: 1,
        frac: 0,
        bias: 0,
    }) | 1 << 8;
    let mut bytes = Program {
        instrs: vec![m4c_npu::isa::Instr::Halt {}],
        ..Program::default()
    }
    .to_bytes();
    bytes[20..36].copy_from_slice(&word.to_le_bytes());
    assert!(matches!(
        Program::from_bytes(&bytes),
        Err(ProgramError::BadWord { index: 0, .. })
    ));
}

#[test]
fn per_channel_requant_applies_each_columns_record_and_traps_on_bad_shift() {
    // Records at DRAM 16: (bias, multiplier, shift) for 4 columns; the
    // accumulator holds zeros, so each output is clamp(zp + MBQM(bias_c)).
    let record = |b: i32, m: i32, s: i32| -> String {
        [b, m, s]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .map(|x| format!("{x:02x}"))
            .collect()
    };
    let half = 1 << 30;
    let program = |last_shift: i32| {
        format!(
            ".dram 128\n.data 16 {}{}{}{}\n\
             ld.cfg dram_stride=0 sram_stride=0 pad_top=0 pad_bottom=0 pad_left=0 pad_right=0\n\
             ld space=a sram=0 dram=16 rows=1 row_bytes=48\nsignal engine=ld sem=0\nwait engine=vx sem=0\n\
             vec.cfg dst_stride=4 src_stride=4 src2_stride=0\n\
             rq.cfg multiplier=0 shift=0 zero_point=1 clamp_min=-128 clamp_max=127\n\
             requant dst=64 acc=0 bias=0 rows=1 cols=4 mode=channel\n\
             signal engine=vx sem=1\nwait engine=st sem=1\nst.cfg dram_stride=4 sram_stride=4\n\
             st space=a sram=64 dram=64 rows=1 row_bytes=4\nhalt\n",
            record(10, half, 0),
            record(10, half, 2),
            record(-300, half, 0),
            record(7, half, last_shift)
        )
    };
    let config = MachineConfig::edge_small();
    let r = simulate(
        &assemble(&program(-1)).unwrap(),
        &config,
        SimOptions::default(),
    )
    .unwrap();
    let out: Vec<i8> = r.dram[64..68].iter().map(|&b| b as i8).collect();
    // 10/2 + 1, 10*4/2 + 1, clamp(-150 + 1), round(7/4) + 1.
    assert_eq!(out, vec![6, 21, -128, 3]);
    let err = simulate(
        &assemble(&program(40)).unwrap(),
        &config,
        SimOptions::default(),
    )
    .err()
    .expect("traps");
    assert!(err.to_string().contains("channel 3 shift=40"), "{err}");
}
