//! The assembly of one patchable site: replacements, the padded default, table entries, names.
//!
//! ```text
//! .pushsection alt_replacement     replacement i:  Ri: <code>  Ri': (one per inline entry)
//! .popsection
//! S:  .skip ..., 0x90              a default call: NOP padding up to the longest replacement
//!     call <default>               (one .skip per replacement), then the call, so that it
//!                                  returns to the site's end; inline default code comes first
//!                                  and its padding after it
//! E:
//! .pushsection alt_instr           one 12-byte entry per replacement, in priority order
//! Ni: .long S - . ; .long Ri - . (or call target) ; .short key ; .byte E - S ; .byte Ri' - Ri
//! .popsection
//! .pushsection alt_site_names      .long S - . ; .long NAME - .
//! .pushsection alt_entry_names     .long Ni - . ; .long VARIANT_i - .
//! ```
//!
//! Replacements come before the site so that every label difference the padding depends on is
//! already known where `.skip` is read (LLVM's assembler refuses sizes that depend on later,
//! relaxable code). The default and the replacements must not contain relaxable jumps to labels.
//! Labels are numeric local labels, never made only of the digits 0 and 1 (Intel syntax reads
//! `1b` as a binary number), because inlining can duplicate the block.

use alt_runtime::linker::{
    ALT_INSTR_PUSHSECTION, ALT_REPLACEMENT_PUSHSECTION, ENTRY_NAMES_PUSHSECTION,
    SITE_NAMES_PUSHSECTION,
};

/// The default code of a site.
pub enum DefaultCode {
    /// `call rel32` to the `sym` operand of this name (hand-encoded, always 5 bytes).
    Call(String),
    /// Instruction lines (already in `asm!` template form).
    Inline(Vec<String>),
}

/// What an entry puts at the site.
pub enum EntryTarget {
    /// Instruction lines copied in.
    Inline(Vec<String>),
    /// A direct call to the `sym` operand of this name.
    Call(String),
}

/// One table entry of the site.
pub struct EntrySpec {
    pub key: u16,
    pub target: EntryTarget,
    /// `sym` operand naming a `&'static str` with the variant's name.
    pub name_operand: Option<String>,
}

/// A whole site.
pub struct SiteSpec {
    pub default: DefaultCode,
    pub entries: Vec<EntrySpec>,
    /// `sym` operand naming a `&'static str` with the site's function name.
    pub name_operand: Option<String>,
}

struct Labels(u32);

impl Labels {
    fn next(&mut self) -> u32 {
        loop {
            self.0 += 1;
            if self.0.to_string().chars().any(|c| c != '0' && c != '1') {
                return self.0;
            }
        }
    }
}

/// The template lines of a site, for `asm!`.
pub fn template(spec: &SiteSpec) -> Vec<String> {
    let mut labels = Labels(1);
    let mut out = Vec::new();

    // Replacement code first.
    let mut repl_labels = Vec::new();
    let has_inline = spec
        .entries
        .iter()
        .any(|e| matches!(e.target, EntryTarget::Inline(_)));
    if has_inline {
        out.push(ALT_REPLACEMENT_PUSHSECTION.to_string());
    }
    for e in &spec.entries {
        if let EntryTarget::Inline(lines) = &e.target {
            let (start, end) = (labels.next(), labels.next());
            out.push(format!("{start}:"));
            out.extend(lines.iter().cloned());
            out.push(format!("{end}:"));
            repl_labels.push(Some((start, end)));
        } else {
            repl_labels.push(None);
        }
    }
    if has_inline {
        out.push(".popsection".to_string());
    }

    // The site. A default call comes last, after padding to the longest replacement: a thread
    // inside the called function returns to the site's end, an instruction boundary in every
    // variant (the runtime's return-address rule). Inline default code comes first, then its
    // padding.
    let (s, end) = (labels.next(), labels.next());
    out.push(format!("{s}:"));
    let pad = |out: &mut Vec<String>, fixed: &str| {
        for (e, r) in spec.entries.iter().zip(&repl_labels) {
            let need = match (r, &e.target) {
                (Some((a, b)), _) => format!("({b}b - {a}b)"),
                (None, _) => "5".to_string(),
            };
            // Pads by need - fixed - (. - S) when positive: comparisons yield -1 for true.
            let short = format!("({need} - {fixed} - (. - {s}b))");
            out.push(format!(".skip -({short} > 0) * {short}, 0x90"));
        }
    };
    match &spec.default {
        DefaultCode::Call(target) => {
            pad(&mut out, "5");
            out.push(".byte 0xe8".to_string());
            out.push(format!(".long {{{target}}} - . - 4"));
        }
        DefaultCode::Inline(lines) => {
            out.extend(lines.iter().cloned());
            pad(&mut out, "0");
        }
    }
    out.push(format!("{end}:"));

    // Entries, in priority order.
    out.push(ALT_INSTR_PUSHSECTION.to_string());
    out.push(".balign 4".to_string());
    let mut entry_labels = Vec::new();
    for (e, r) in spec.entries.iter().zip(&repl_labels) {
        let n = labels.next();
        entry_labels.push(n);
        out.push(format!("{n}:"));
        out.push(format!(".long {s}b - ."));
        match (&e.target, r) {
            (EntryTarget::Inline(_), Some((a, b))) => {
                out.push(format!(".long {a}b - ."));
                out.push(format!(".short {:#06x}", e.key));
                out.push(format!(".byte {end}b - {s}b"));
                out.push(format!(".byte {b}b - {a}b"));
            }
            (EntryTarget::Call(target), _) => {
                out.push(format!(".long {{{target}}} - ."));
                out.push(format!(".short {:#06x}", e.key));
                out.push(format!(".byte {end}b - {s}b"));
                out.push(".byte 0".to_string());
            }
            (EntryTarget::Inline(_), None) => unreachable!("inline entries have labels"),
        }
    }
    out.push(".popsection".to_string());

    // Names for reports.
    if let Some(name) = &spec.name_operand {
        out.push(SITE_NAMES_PUSHSECTION.to_string());
        out.push(".balign 4".to_string());
        out.push(format!(".long {s}b - ."));
        out.push(format!(".long {{{name}}} - ."));
        out.push(".popsection".to_string());
    }
    let named: Vec<(u32, &String)> = spec
        .entries
        .iter()
        .zip(&entry_labels)
        .filter_map(|(e, n)| e.name_operand.as_ref().map(|op| (*n, op)))
        .collect();
    if !named.is_empty() {
        out.push(ENTRY_NAMES_PUSHSECTION.to_string());
        out.push(".balign 4".to_string());
        for (n, op) in named {
            out.push(format!(".long {n}b - ."));
            out.push(format!(".long {{{op}}} - ."));
        }
        out.push(".popsection".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_skip_binary_looking_numbers() {
        let mut l = Labels(1);
        let got: Vec<u32> = (0..12).map(|_| l.next()).collect();
        assert_eq!(got, [2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15]);
    }

    #[test]
    fn call_site_with_one_inline_replacement() {
        let t = template(&SiteSpec {
            default: DefaultCode::Call("d".into()),
            entries: vec![EntrySpec {
                key: 0x0004,
                target: EntryTarget::Inline(vec!["popcnt rax, rdi".into()]),
                name_operand: None,
            }],
            name_operand: None,
        });
        let text = t.join("\n");
        assert!(text.starts_with(ALT_REPLACEMENT_PUSHSECTION));
        // Padding first, then the default call, ending at the site's end.
        assert!(text.contains(
            "2:\npopcnt rax, rdi\n3:\n.popsection\n4:\n\
             .skip -(((3b - 2b) - 5 - (. - 4b)) > 0) * ((3b - 2b) - 5 - (. - 4b)), 0x90\n\
             .byte 0xe8\n.long {d} - . - 4\n5:"
        ));
        assert!(text.contains("6:\n.long 4b - .\n.long 2b - .\n.short 0x0004\n.byte 5b - 4b\n.byte 3b - 2b\n.popsection"));
    }
}
