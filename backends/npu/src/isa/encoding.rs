//! Packing operand fields into 128-bit instruction words and back.

use super::{spec_for_opcode, FieldKind, Instr};

/// Why a 128-bit word is not a valid instruction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WordError {
    /// The low byte is not an opcode of the ISA.
    #[error("unknown opcode 0x{0:02x}")]
    BadOpcode(u8),
    /// Bits after the last field are set.
    #[error("reserved bits set in a `{0}` instruction")]
    ReservedBits(&'static str),
    /// A field holds a value the ISA gives no meaning (e.g. memory space 3).
    #[error("field `{field}` of `{mnemonic}` has invalid value {value}")]
    BadField {
        /// The instruction's mnemonic.
        mnemonic: &'static str,
        /// The field's name.
        field: &'static str,
        /// The value found.
        value: i64,
    },
}

/// Encodes one instruction. Field values must be in range (the assembler and
/// the kernel generators check this); out-of-range values are truncated, so
/// callers go through [`Instr::check_ranges`] first.
pub fn encode_word(instr: &Instr) -> u128 {
    let spec = instr.spec();
    let mut word = spec.opcode as u128;
    let mut pos = 8;
    for (field, value) in spec.fields.iter().zip(instr.field_values()) {
        let mask = (1u128 << field.bits) - 1;
        word |= ((value as i128 as u128) & mask) << pos;
        pos += field.bits;
    }
    word
}

/// Decodes one instruction word, rejecting unknown opcodes, set reserved bits
/// and field values without meaning.
pub fn decode_word(word: u128) -> Result<Instr, WordError> {
    let opcode = (word & 0xff) as u8;
    let spec = spec_for_opcode(opcode).ok_or(WordError::BadOpcode(opcode))?;
    let mut pos = 8;
    let mut values = Vec::with_capacity(spec.fields.len());
    for field in spec.fields {
        let raw = (word >> pos) & ((1u128 << field.bits) - 1);
        let value = match field.kind {
            FieldKind::Int => {
                let shift = 128 - field.bits;
                (((raw << shift) as i128) >> shift) as i64
            }
            _ => raw as i64,
        };
        if matches!(field.kind, FieldKind::Named(names) if value as usize >= names.len()) {
            return Err(WordError::BadField {
                mnemonic: spec.mnemonic,
                field: field.name,
                value,
            });
        }
        values.push(value);
        pos += field.bits;
    }
    if pos < 128 && word >> pos != 0 {
        return Err(WordError::ReservedBits(spec.mnemonic));
    }
    #[allow(
        clippy::expect_used,
        reason = "values has one entry per field of the spec table"
    )]
    let instr = Instr::from_values(opcode, &values).expect("field count matches the spec table");
    Ok(instr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_opcode_fits_in_128_bits() {
        for op in super::super::OPS {
            let bits: u32 = 8 + op.fields.iter().map(|f| f.bits).sum::<u32>();
            assert!(bits <= 128, "{} uses {bits} bits", op.mnemonic);
        }
    }

    #[test]
    fn signed_fields_round_trip() {
        let i = Instr::RqCfg {
            multiplier: -1_234_567,
            shift: -5,
            zero_point: -128,
            clamp_min: -128,
            clamp_max: 127,
        };
        assert_eq!(decode_word(encode_word(&i)).unwrap(), i);
    }

    #[test]
    fn rejects_unknown_opcode_and_reserved_bits() {
        assert_eq!(decode_word(0xee), Err(WordError::BadOpcode(0xee)));
        let halt = encode_word(&Instr::Halt {});
        assert_eq!(
            decode_word(halt | 1 << 100),
            Err(WordError::ReservedBits("halt"))
        );
    }
}
