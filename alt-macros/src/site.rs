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
    SITE_EFFECTS_PUSHSECTION, SITE_NAMES_PUSHSECTION,
};
use alt_runtime::table::EffectsKind;

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
    /// What the site declares it changes, for `alt-tablegen verify`.
    pub effects: Declared,
}

/// What a site declares to the compiler it may change ([`alt_runtime::table::EffectsEntry`]).
#[derive(Clone, Debug, Default)]
pub struct Declared {
    /// General-purpose registers, bit = hardware number.
    pub gprs: u16,
    /// [`alt_runtime::table::Effects`] bits.
    pub effects: u8,
    /// Output operands in registers the compiler chooses, as template references (`{0:r}`,
    /// `{x:r}`, `{b}` for `reg_byte`): each gets a probe record naming the register.
    pub probes: Vec<String>,
    /// Label operands a variant may jump to (`{alt_jump}`): each gets a jump-target record.
    pub jump_targets: Vec<String>,
}

/// The lines of one [`alt_runtime::table::EffectsEntry`] for the site at label reference `site`
/// (`4b`): `code` is a label or operand expression (`2b`, `{alt_thunk}`) and `len` the length
/// expression of the code (`3b - 2b`), for kinds that have them.
pub fn effects_record(
    site: &str,
    kind: EffectsKind,
    gprs: u16,
    effects: u8,
    code: Option<(&str, &str)>,
) -> Vec<String> {
    let (code, len) = match code {
        Some((c, l)) => (format!(".long {c} - ."), format!(".byte {l}")),
        None => (".long 0".to_string(), ".byte 0".to_string()),
    };
    vec![
        SITE_EFFECTS_PUSHSECTION.to_string(),
        ".balign 4".to_string(),
        format!(".long {site} - ."),
        code,
        format!(".short {gprs:#06x}"),
        format!(".byte {effects:#04x}"),
        format!(".byte {}", kind as u8),
        len,
        ".byte 0, 0, 0".to_string(),
        ".popsection".to_string(),
    ]
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

    // What the site declares, and one probe per output in a compiler-chosen register.
    let site = format!("{s}b");
    let d = &spec.effects;
    out.extend(effects_record(
        &site,
        EffectsKind::Declaration,
        d.gprs,
        d.effects,
        None,
    ));
    for target in &d.jump_targets {
        out.extend(effects_record(
            &site,
            EffectsKind::JumpTarget,
            0,
            0,
            Some((target, "0")),
        ));
    }
    for probe in &d.probes {
        let (a, b) = (labels.next(), labels.next());
        out.push(ALT_REPLACEMENT_PUSHSECTION.to_string());
        out.push(format!("{a}:"));
        out.push(format!("mov {probe}, {probe}"));
        out.push(format!("{b}:"));
        out.push(".popsection".to_string());
        out.extend(effects_record(
            &site,
            EffectsKind::OperandProbe,
            0,
            0,
            Some((&format!("{a}b"), &format!("{b}b - {a}b"))),
        ));
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
            effects: Declared {
                gprs: 0b1,
                effects: 0x1f,
                probes: vec!["{0:r}".into()],
                jump_targets: Vec::new(),
            },
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
        let effects = format!(
            "{SITE_EFFECTS_PUSHSECTION}\n.balign 4\n.long 4b - .\n.long 0\n.short 0x0001\n.byte 0x1f\n.byte 0\n.byte 0\n.byte 0, 0, 0\n.popsection"
        );
        assert!(text.contains(&effects), "{text}");
        assert!(text.contains("7:\nmov {0:r}, {0:r}\n8:\n.popsection\n"));
        assert!(text.contains(
            ".long 4b - .\n.long 7b - .\n.short 0x0000\n.byte 0x00\n.byte 3\n.byte 8b - 7b\n"
        ));
    }
}
