//! A compiled NPU sub-graph as the device runs it: int8 tensors, and
//! layers that each are one generated program whose run-time operands
//! are written into the placeholder segments its generator left
//! ([`crate::kernels::KernelProgram::inputs`]). The compiler
//! (`m4c-npu-codegen`) writes a [`ModulePlan`] of NPU parts ([`PartPlan`])
//! and CPU-fallback parts (IR plus the CPU backend's code, [`CpuCode`]);
//! the runtime runs the NPU parts here, layer after layer, on the
//! simulator. Layers do not overlap each other
//! (each ends before the next starts): the sub-graph's cycles are the sum.

use serde::{Deserialize, Serialize};

use crate::config::MachineConfig;
use crate::isa::Instr;
pub use crate::layout::Layout;
use crate::program::Program;
use crate::report::Stats;
use crate::sim::{simulate, SimOptions};

/// One int8 tensor of a sub-graph: `real = scale * (q - zero_point)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// The IR value it holds (the ONNX value name).
    pub name: String,
    /// Bytes (= elements).
    pub bytes: usize,
    /// Quantisation scale.
    pub scale: f64,
    /// Quantisation zero point.
    pub zero_point: i32,
}

/// A range of a tensor bound to a program's DRAM segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// Index into [`PartPlan::tensors`].
    pub tensor: usize,
    /// First byte of the tensor.
    pub offset: usize,
    /// Bytes.
    pub len: usize,
    /// DRAM address of the segment in the layer's program.
    pub addr: u32,
}

/// One layer: a program and where its operands come from and go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// The IR value it computes (the ONNX node's output name).
    pub name: String,
    /// The kernel (`gemm`, `lut`, `eltwise-add`, `softmax`, `layernorm`, `copy`, ...).
    pub kernel: String,
    /// Index into the part's programs.
    pub program: usize,
    /// Run-time operands.
    pub inputs: Vec<Binding>,
    /// Its result.
    pub output: Binding,
    /// For an embedding lookup: the rows its loads fetch are chosen at
    /// run time by an index operand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_by_index: Option<RowIndex>,
    /// Rows of its result per tile of its streamed pipeline (how the
    /// code generator cut it to fit the SRAMs; 0 in plans that predate
    /// the field).
    #[serde(default)]
    pub tile_rows: usize,
}

/// A layer whose loads fetch rows of a table chosen at run time (an
/// embedding lookup: a Gather of a constant table by run-time indices).
/// The program was generated for index 0 everywhere: load `lds[r]` reads
/// the table's first row. Before the layer runs the device moves it by
/// `index[r] * row_bytes` bytes — as a driver writes DMA descriptors from
/// the indices the CPU holds — after checking the index lies in the
/// table (negative indices count from the end, as ONNX's Gather does).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowIndex {
    /// Which of the part's index operands ([`IndexInput`]).
    pub input: usize,
    /// The instruction index of each row's `ld` in the layer's program.
    pub lds: Vec<usize>,
    /// Bytes per row.
    pub row_bytes: usize,
    /// Rows of the table.
    pub table_rows: usize,
}

impl RowIndex {
    /// Moves each row's load of `instrs` (the layer's program, or its span
    /// of a linked one starting at `first`) to the row `indices` names.
    pub fn patch(&self, instrs: &mut [Instr], first: usize, indices: &[i64]) -> Result<(), String> {
        if indices.len() != self.lds.len() {
            return Err(format!(
                "{} indices for {} rows",
                indices.len(),
                self.lds.len()
            ));
        }
        let rows = self.table_rows as i64;
        for (&at, &i) in self.lds.iter().zip(indices) {
            let row = if i < 0 { i + rows } else { i };
            if !(0..rows).contains(&row) {
                return Err(format!("index {i} outside a table of {rows} rows"));
            }
            let ld = first.checked_add(at).and_then(|k| instrs.get_mut(k));
            let Some(Instr::Ld {
                dram, row_bytes, ..
            }) = ld
            else {
                return Err(format!("instruction {at} is not a row's load"));
            };
            if *row_bytes != self.row_bytes as i64 {
                return Err(format!("the load at {at} is not {} bytes", self.row_bytes));
            }
            *dram += row * self.row_bytes as i64;
        }
        Ok(())
    }
}

/// An integer value an NPU part takes as it is (not quantised): the
/// indices of its embedding lookups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexInput {
    /// The IR value name.
    pub value: String,
    /// Elements.
    pub elements: usize,
}

/// A compiled NPU sub-graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartPlan {
    /// Its int8 tensors.
    pub tensors: Vec<TensorSpec>,
    /// Layers in execution order.
    pub layers: Vec<LayerSpec>,
}

/// A value crossing between an NPU part and the rest of the module: the
/// float value `value` (shape `shape`) is quantised into, or dequantised
/// from, int8 tensor `tensor` of the part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Boundary {
    /// The IR value name.
    pub value: String,
    /// Index into the part's tensors.
    pub tensor: usize,
    /// The float value's shape.
    pub shape: Vec<usize>,
    /// The order the quantiser writes an input's bytes in (outputs are
    /// always as they are).
    #[serde(default)]
    pub layout: Layout,
}

/// One part of a module, in execution order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModulePart {
    /// An NPU sub-graph: one program per layer, run on the simulator.
    Npu {
        /// The sub-graph.
        plan: PartPlan,
        /// Its programs: `first..first + count` of the module's blob.
        first_program: usize,
        /// Values quantised on entry.
        inputs: Vec<Boundary>,
        /// Values dequantised on exit.
        outputs: Vec<Boundary>,
        /// Integer values taken as they are (embedding indices).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        indices: Vec<IndexInput>,
    },
    /// A CPU-fallback sub-graph: its IR, and the CPU backend's compiled
    /// code for it where the CPU backend compiled it; without code (or
    /// when the code cannot load on this host) the reference interpreter
    /// runs the IR.
    Fallback {
        /// The sub-graph's IR text; its inputs and outputs keep the
        /// module's value names.
        ir: String,
        /// Its constants (the runtime's constant encoding) in the
        /// module's `code-weights` section.
        constants: ByteRange,
        /// Why its nodes are not on the NPU (one line per refused op kind).
        reasons: Vec<String>,
        /// The CPU backend's code for the sub-graph.
        cpu: Option<CpuCode>,
        /// Why there is no CPU code (the CPU backend refused or failed).
        not_compiled: Option<String>,
    },
}

/// A byte range of the module's `code-weights` section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    /// First byte.
    pub offset: usize,
    /// Bytes.
    pub len: usize,
}

impl ByteRange {
    /// The bytes of `section` it names, or why it lies outside.
    pub fn of<'a>(&self, section: &'a [u8]) -> Result<&'a [u8], String> {
        self.offset
            .checked_add(self.len)
            .and_then(|end| section.get(self.offset..end))
            .ok_or_else(|| {
                format!(
                    "bytes {}+{} outside the {}-byte code-weights section",
                    self.offset,
                    self.len,
                    section.len()
                )
            })
    }
}

/// A fallback part compiled by the CPU backend: its artifact's three
/// sections, stored in the module's `code-weights` section, and the CPU
/// target the code needs. The runtime loads it through its CPU device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpuCode {
    /// The CPU target (`x86_64-avx512`, ...).
    pub target: String,
    /// The LLVM CPU it was tuned for.
    pub tuning: String,
    /// The shared library.
    pub library: ByteRange,
    /// BLAKE3 (hex) of the library, checked before it is loaded.
    pub library_blake3: String,
    /// The CPU backend's plan (JSON).
    pub plan: ByteRange,
    /// Its packed weights.
    pub weights: ByteRange,
}

/// A whole module compiled for the NPU with CPU fallback: the machine it
/// was compiled for and its parts in a topological order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModulePlan {
    /// The machine the programs were generated for.
    pub config: MachineConfig,
    /// Parts in execution order.
    pub parts: Vec<ModulePart>,
}

impl ModulePlan {
    /// Checks every NPU part against the `programs` count and every
    /// fallback part's byte ranges against the `weights`-byte
    /// `code-weights` section.
    pub fn check(&self, programs: usize, weights: &[u8]) -> Result<(), String> {
        self.config.validate().map_err(|e| e.to_string())?;
        for (k, part) in self.parts.iter().enumerate() {
            if let ModulePart::Fallback { constants, cpu, .. } = part {
                let ranges = cpu.iter().flat_map(|c| [c.library, c.plan, c.weights]);
                for r in std::iter::once(*constants).chain(ranges) {
                    r.of(weights)
                        .map_err(|e| format!("fallback part {k}: {e}"))?;
                }
            }
            if let ModulePart::Npu {
                plan,
                first_program,
                inputs,
                outputs,
                indices,
            } = part
            {
                for l in &plan.layers {
                    if let Some(r) = &l.rows_by_index {
                        let fits = indices
                            .get(r.input)
                            .is_some_and(|i| i.elements == r.lds.len());
                        let table = r.table_rows.checked_mul(r.row_bytes);
                        if !fits
                            || table.is_none_or(|b| b > crate::program::MAX_DRAM_BYTES as usize)
                        {
                            return Err(format!("layer `{}`: bad row index", l.name));
                        }
                    }
                }
                if *first_program > programs {
                    return Err(format!("first program {first_program} of {programs}"));
                }
                let own = programs - first_program;
                plan.check(own)?;
                for b in outputs {
                    if b.layout != Layout::AsIs {
                        return Err(format!("output `{}`: {:?} layout", b.value, b.layout));
                    }
                }
                for b in inputs.iter().chain(outputs) {
                    let t = plan
                        .tensors
                        .get(b.tensor)
                        .ok_or("boundary tensor missing")?;
                    b.layout
                        .check(&b.shape)
                        .map_err(|e| format!("boundary `{}`: {e}", b.value))?;
                    let elements = b.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                    if elements != Some(t.bytes) {
                        return Err(format!(
                            "boundary `{}`: shape {:?} vs {} bytes",
                            b.value, b.shape, t.bytes
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// What one layer's simulation measured.
#[derive(Clone, Debug)]
pub struct LayerRun {
    /// The simulator's statistics.
    pub stats: Stats,
    /// Highest SRAM byte (activation plus weight) the program addresses.
    pub sram_bytes: u64,
}

impl PartPlan {
    /// Checks every binding against the tensors and `programs` (count).
    pub fn check(&self, programs: usize) -> Result<(), String> {
        for l in &self.layers {
            if l.program >= programs {
                return Err(format!(
                    "layer `{}`: program {} of {programs}",
                    l.name, l.program
                ));
            }
            for b in l.inputs.iter().chain(std::iter::once(&l.output)) {
                let t = self.tensors.get(b.tensor).ok_or_else(|| {
                    format!("layer `{}`: tensor {} does not exist", l.name, b.tensor)
                })?;
                if b.offset.checked_add(b.len).is_none_or(|end| end > t.bytes) {
                    return Err(format!(
                        "layer `{}`: bytes {}+{} outside tensor `{}` ({} bytes)",
                        l.name, b.offset, b.len, t.name, t.bytes
                    ));
                }
            }
        }
        Ok(())
    }

    /// Runs layer `index` on `tensors` (one byte buffer per tensor, sized
    /// as specified) and the part's index operands `indices`: writes its
    /// operands into a copy of its program's image (and moves its row
    /// loads, [`RowIndex`]), simulates, and copies the result out.
    pub fn run_layer(
        &self,
        index: usize,
        programs: &[Program],
        (tensors, indices): (&mut [Vec<i8>], &[Vec<i64>]),
        config: &MachineConfig,
        options: SimOptions,
    ) -> Result<LayerRun, String> {
        let layer = self
            .layers
            .get(index)
            .ok_or_else(|| format!("no layer {index}"))?;
        let fail = |e: String| format!("layer `{}` ({}): {e}", layer.name, layer.kernel);
        let mut program = programs
            .get(layer.program)
            .ok_or_else(|| fail(format!("no program {}", layer.program)))?
            .clone();
        for b in &layer.inputs {
            let bytes: Vec<u8> = binding(tensors, b)
                .map_err(fail)?
                .iter()
                .map(|&v| v as u8)
                .collect();
            program.set_segment(b.addr, &bytes).map_err(fail)?;
        }
        if let Some(r) = &layer.rows_by_index {
            let idx = indices
                .get(r.input)
                .ok_or_else(|| fail(format!("no index operand {}", r.input)))?;
            r.patch(&mut program.instrs, 0, idx).map_err(fail)?;
        }
        let sram_bytes = sram_footprint(&program.instrs);
        let result = simulate(&program, config, options).map_err(|e| fail(e.to_string()))?;
        let o = layer.output;
        let at = o.addr as usize;
        let out = result
            .dram
            .get(at..at + o.len)
            .ok_or_else(|| fail(format!("output 0x{at:x}+{} outside DRAM", o.len)))?;
        let len = binding(tensors, &o).map_err(fail)?.len();
        if let Some(d) = tensors
            .get_mut(o.tensor)
            .and_then(|t| t.get_mut(o.offset..o.offset + len))
        {
            for (d, &s) in d.iter_mut().zip(out) {
                *d = s as i8;
            }
        }
        Ok(LayerRun {
            stats: result.stats,
            sram_bytes,
        })
    }
}

/// The bytes binding `b` names in `tensors` (an error, not a panic, when
/// they lie outside: plans are validated at load, but `run_layer` is
/// public).
fn binding<'t>(tensors: &'t [Vec<i8>], b: &Binding) -> Result<&'t [i8], String> {
    b.offset
        .checked_add(b.len)
        .and_then(|end| tensors.get(b.tensor)?.get(b.offset..end))
        .ok_or_else(|| {
            format!(
                "bytes {}+{} outside tensor {} (sized {})",
                b.offset,
                b.len,
                b.tensor,
                tensors.get(b.tensor).map_or(0, Vec::len)
            )
        })
}

/// The highest SRAM byte the loads and stores of `instrs` (a program, or
/// one layer's span of a linked one) address, summed over the activation
/// and weight SRAMs: the buffers a kernel generator places statically, so
/// this is its SRAM use.
pub fn sram_footprint(instrs: &[Instr]) -> u64 {
    let (mut ld_stride, mut st_stride) = (0i64, 0i64);
    let mut top = [0u64; 2];
    for i in instrs {
        let (space, sram, rows, row_bytes, stride) = match *i {
            Instr::LdCfg { sram_stride, .. } => {
                ld_stride = sram_stride;
                continue;
            }
            Instr::StCfg { sram_stride, .. } => {
                st_stride = sram_stride;
                continue;
            }
            Instr::Ld {
                space,
                sram,
                rows,
                row_bytes,
                ..
            } => (space, sram, rows, row_bytes, ld_stride),
            Instr::St {
                space,
                sram,
                rows,
                row_bytes,
                ..
            } => (space, sram, rows, row_bytes, st_stride),
            _ => continue,
        };
        if rows > 0 {
            let end = sram + (rows - 1) * stride + row_bytes;
            let slot = usize::from(space != 0);
            top[slot] = top[slot].max(end.max(0) as u64);
        }
    }
    top[0] + top[1]
}

/// Packs programs into one blob: a count, then each program's length and
/// `.npub` bytes (little-endian `u32`s).
pub fn pack_programs(programs: &[Program]) -> Vec<u8> {
    let mut out = (programs.len() as u32).to_le_bytes().to_vec();
    for p in programs {
        let bytes = p.to_bytes();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// Unpacks [`pack_programs`]' blob, validating every program.
pub fn unpack_programs(blob: &[u8]) -> Result<Vec<Program>, String> {
    let mut at = 0usize;
    let word = |at: &mut usize, what: &str| -> Result<usize, String> {
        let b = blob
            .get(*at..*at + 4)
            .ok_or_else(|| format!("program blob truncated at {what}"))?;
        *at += 4;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(&mut at, "the count")?;
    let mut programs = Vec::new();
    for i in 0..count {
        let len = word(&mut at, "a length")?;
        let bytes = blob
            .get(at..at + len)
            .ok_or_else(|| format!("program #{i} truncated"))?;
        at += len;
        programs.push(Program::from_bytes(bytes).map_err(|e| format!("program #{i}: {e}"))?);
    }
    if at != blob.len() {
        return Err(format!(
            "{} trailing bytes in the program blob",
            blob.len() - at
        ));
    }
    Ok(programs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::eltwise::{self, BinaryOperands, EltOp};

    /// A fallback part's byte ranges must lie inside the section: an
    /// overflowing or overlong range is an error, never a slice panic.
    #[test]
    fn fallback_ranges_outside_the_section_are_refused() {
        let part = |offset, len| ModulePart::Fallback {
            ir: String::new(),
            constants: ByteRange { offset, len },
            reasons: vec![],
            cpu: None,
            not_compiled: None,
        };
        let plan = |p| ModulePlan {
            config: MachineConfig::edge_small(),
            parts: vec![p],
        };
        let section = [0u8; 16];
        assert!(plan(part(8, 8)).check(0, &section).is_ok());
        assert!(plan(part(8, 9)).check(0, &section).is_err());
        let err = plan(part(usize::MAX, 2)).check(0, &section).unwrap_err();
        assert!(err.contains("fallback part 0"), "{err}");
    }

    /// A layer compiled on placeholder data and run on other operands
    /// gives the kernel's reference result for those operands.
    #[test]
    fn a_layer_runs_on_operands_written_into_its_segments() {
        let config = MachineConfig::edge_small();
        let ops = BinaryOperands::random(EltOp::Add, 5, 24, 7);
        let zeros = BinaryOperands {
            a: vec![0; 120],
            b: vec![0; 120],
            ..ops.clone()
        };
        let k = eltwise::generate(&zeros, &config).unwrap();
        let blob = pack_programs(std::slice::from_ref(&k.program));
        let programs = unpack_programs(&blob).unwrap();
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            bytes: 120,
            scale: 1.0,
            zero_point: 0,
        };
        let bind = |tensor, addr| Binding {
            tensor,
            offset: 0,
            len: 120,
            addr,
        };
        let plan = PartPlan {
            tensors: vec![spec("a"), spec("b"), spec("y")],
            layers: vec![LayerSpec {
                name: "y".into(),
                kernel: "eltwise-add".into(),
                program: 0,
                inputs: vec![bind(0, k.inputs[0]), bind(1, k.inputs[1])],
                output: bind(2, k.out_addr),
                rows_by_index: None,
                tile_rows: k.tile_rows,
            }],
        };
        plan.check(1).unwrap();
        let mut tensors = vec![ops.a.clone(), ops.b.clone(), vec![0; 120]];
        let run = plan
            .run_layer(
                0,
                &programs,
                (&mut tensors, &[]),
                &config,
                SimOptions::default(),
            )
            .unwrap();
        assert_eq!(tensors[2], ops.reference().unwrap());
        assert!(run.stats.cycles > 0 && run.sram_bytes > 0);
        assert!(unpack_programs(&blob[..blob.len() - 1]).is_err());
    }
}
