//! Arbitrary text as textual IR (`m4c opt -o` output, bundles' IR
//! sections): parsing returns a graph or an error; a graph that parses
//! prints to text that parses back to the same text (the round trip the
//! format promises).
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(graph) = m4c_ir::text::parse(text, &HashMap::new()) else {
        return;
    };
    let printed = m4c_ir::text::print(&graph);
    let again = m4c_ir::text::parse(&printed, &HashMap::new())
        .unwrap_or_else(|e| panic!("printed IR does not parse: {e}\n{printed}"));
    assert_eq!(m4c_ir::text::print(&again), printed, "print/parse round trip");
    let _ = graph.verify();
});
