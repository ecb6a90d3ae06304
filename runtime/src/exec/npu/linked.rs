//! Running an NPU part as one linked program ([`m4c_npu::link`]): the
//! part's input tensors are written into the program's DRAM image where
//! the memory plan put them, the program runs once on the simulator, and
//! the output tensors are read back from theirs. Intermediate tensors
//! never leave the simulated machine (they live in its DRAM arena or its
//! feature-map SRAM); each layer's figures are those of its instructions.

use m4c_npu::config::MachineConfig;
use m4c_npu::link::arena::Home;
use m4c_npu::link::LinkedPart;
use m4c_npu::module::{sram_footprint, Boundary, PartPlan};
use m4c_npu::sim::{simulate_spans, SimOptions};

use super::LayerFigures;

/// Runs `linked` (part `part` of the plan) on `tensors` (the inputs set)
/// and the part's index operands:
/// writes the results of `outputs` into `tensors` and returns the part's
/// cycles and each layer's figures.
pub(super) fn run(
    part: usize,
    plan: &PartPlan,
    linked: &LinkedPart,
    (inputs, outputs, indices): (&[Boundary], &[Boundary], &[Vec<i64>]),
    tensors: &mut [Vec<i8>],
    config: &MachineConfig,
) -> Result<(u64, Vec<LayerFigures>), String> {
    let mut program = linked.program.clone();
    for b in inputs {
        let bytes: Vec<u8> = tensors[b.tensor].iter().map(|&v| v as u8).collect();
        program.set_segment(linked.tensor_addr[b.tensor], &bytes)?;
    }
    for (layer, &first) in plan.layers.iter().zip(&linked.first_instr) {
        if let Some(r) = &layer.rows_by_index {
            let idx = indices
                .get(r.input)
                .ok_or_else(|| format!("layer `{}`: no index operand {}", layer.name, r.input))?;
            r.patch(&mut program.instrs, first, idx)
                .map_err(|e| format!("layer `{}`: {e}", layer.name))?;
        }
    }
    let (result, per_layer) =
        simulate_spans(&program, config, SimOptions::default(), &linked.spans)
            .map_err(|e| format!("linked program: {e}"))?;
    for b in outputs {
        let at = linked.tensor_addr[b.tensor] as usize;
        let t = &mut tensors[b.tensor];
        let out = result
            .dram
            .get(at..at + t.len())
            .ok_or_else(|| format!("output `{}` outside the linked image", b.value))?;
        for (d, &s) in t.iter_mut().zip(out) {
            *d = s as i8;
        }
    }
    let layers = plan
        .layers
        .iter()
        .zip(per_layer)
        .zip(&linked.spans)
        .map(|((layer, s), span)| LayerFigures {
            name: layer.name.clone(),
            kernel: layer.kernel.clone(),
            part,
            tile_rows: layer.tile_rows,
            cycles: s.cycles,
            macs: s.macs,
            utilization: s.utilization,
            sram_bytes: sram_footprint(&program.instrs[span.clone()]),
            dram_bytes: s.dram_read_bytes + s.dram_write_bytes,
            fmap_bytes: s.fmap_read_bytes + s.fmap_write_bytes,
            result_in: match linked.memory.homes.get(layer.output.tensor) {
                Some(Home::Fmap(_)) => "fmap",
                _ => "dram",
            },
            energy_pj: s.energy_pj,
        })
        .collect();
    Ok((result.stats.cycles, layers))
}
