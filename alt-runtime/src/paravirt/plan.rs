//! Planning one table for one backend: validate, then decide and encode each site, then the
//! slots.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::encode::{self, Encoded};
use super::validate::{check_overlaps, check_site, check_table, PvError, ValidSite};
use super::{Backend, OpChoice, OpDesc, PvTableEntry, TableDesc};
use crate::memory::Memory;
use crate::patch::SiteWrite;
use crate::plan::Layout;
use crate::table::Clobbers;

/// What a paravirt site became.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvDecision {
    /// The operation's native inline sequence, relocated and NOP-filled.
    Inline,
    /// A direct call (or `jmp`, for a tail call), NOP-filled.
    Call {
        /// The call target (the backend's function, or a register-saving thunk).
        target: u64,
        /// Whether the target is a register-saving thunk around the backend's function.
        through_thunk: bool,
    },
    /// The operation does nothing (`xor eax, eax` if it returns a value), NOPs.
    Nop,
    /// The operation is unset in the backend; the site traps (`ud2`, NOPs).
    Trap,
}

impl PvDecision {
    /// Short name: `inline`, `direct_call`, `nop` or `trap`.
    pub fn name(&self) -> &'static str {
        match self {
            PvDecision::Inline => "inline",
            PvDecision::Call { .. } => "direct_call",
            PvDecision::Nop => "nop",
            PvDecision::Trap => "trap",
        }
    }
}

/// The plan for one paravirt site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvSitePlan {
    /// Where the site is, the bytes found there and the bytes it will hold.
    pub write: SiteWrite,
    /// Index of the entry in the table's entry section (placeholders count).
    pub entry: usize,
    /// Operation index.
    pub op: u8,
    /// Operation name.
    pub op_name: &'static str,
    /// The decision.
    pub decision: PvDecision,
    /// Why, for people.
    pub why: String,
}

/// A value to store in an 8-byte slot (a table slot or a dispatch slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotValue {
    /// Address of the slot.
    pub addr: u64,
    /// The value.
    pub value: u64,
}

/// A paravirt plan: the sites, sorted by address, and the slots to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvPlan {
    /// Name of the operations table.
    pub table: &'static str,
    /// Name of the backend.
    pub backend: &'static str,
    /// The sites.
    pub sites: Vec<PvSitePlan>,
    /// Dispatch slots, then table slots, in operation order: the order they are stored in, so
    /// that a table slot never points at a thunk whose dispatch slot is stale.
    pub slots: Vec<SlotValue>,
}

/// What a table slot holds for a nop operation and for an unset one.
fn nop_and_trap() -> (u64, u64) {
    #[cfg(target_arch = "x86_64")]
    return (super::nop_function(), super::unset_function());
    #[cfg(not(target_arch = "x86_64"))]
    (0, 0)
}

/// Plans every site of one table for one backend.
///
/// Every entry is validated first; the first problem is returned and nothing is planned.
pub fn plan_paravirt<M: Memory>(
    table: &TableDesc<'_>,
    backend: &Backend<'_>,
    entries: &[PvTableEntry],
    layout: &Layout<'_>,
    mem: &M,
) -> Result<PvPlan, PvError> {
    check_table(table, backend, layout)?;
    let mut valid: Vec<ValidSite> = Vec::with_capacity(entries.len());
    for (index, t) in entries.iter().enumerate() {
        if !t.is_placeholder() {
            let site = check_site(
                table.name,
                table.table,
                table.ops.len(),
                index,
                t,
                layout,
                mem,
            )?;
            valid.push(site);
        }
    }
    valid.sort_by_key(|s| (s.site.start, s.index));
    check_overlaps(table.name, entries, &valid)?;

    let mut sites = Vec::with_capacity(valid.len());
    for v in valid {
        let op = &table.ops[usize::from(v.op)];
        let choice = backend.ops[usize::from(v.op)];
        let encoded = decide(&v, op, choice, mem).map_err(|kind| PvError {
            table: table.name,
            entry: Some((v.index, entries[v.index].addr, v.site.start)),
            kind,
        })?;
        sites.push(PvSitePlan {
            write: SiteWrite {
                addr: v.site.start,
                original: v.original.into(),
                new: encoded.bytes.into(),
            },
            entry: v.index,
            op: v.op,
            op_name: op.name,
            decision: encoded.decision,
            why: encoded.why,
        });
    }
    Ok(PvPlan {
        table: table.name,
        backend: backend.name,
        sites,
        slots: slots(table, backend),
    })
}

/// Decides one valid site: the encoder for the backend's choice.
fn decide<M: Memory>(
    site: &ValidSite,
    op: &OpDesc,
    choice: OpChoice,
    mem: &M,
) -> Result<Encoded, super::PvErrorKind> {
    match choice {
        OpChoice::Native => match encode::inline(site, op.inline, op.clobbers, mem)? {
            Ok(e) => Ok(e),
            Err(reason) => encode::call(site, op.native, op.native_thunk, reason),
        },
        OpChoice::Function(f) => {
            encode::call(site, f, op.dispatch_thunk, &format!("function at {f:#x}"))
        }
        OpChoice::Nop => encode::nop(site, op.returns),
        OpChoice::Unset => Ok(encode::trap(site)),
    }
}

/// The slot values for the backend: each dispatch slot gets the implementation itself, each
/// table slot what an unpatched call should reach (a thunk where the op's clobbers need one).
fn slots(table: &TableDesc<'_>, backend: &Backend<'_>) -> Vec<SlotValue> {
    let (nop_fn, trap_fn) = nop_and_trap();
    let mut dispatch = Vec::new();
    let mut table_slots = Vec::new();
    for (i, (op, choice)) in table.ops.iter().zip(backend.ops).enumerate() {
        let target = match *choice {
            OpChoice::Native => op.native,
            OpChoice::Function(f) => f,
            OpChoice::Nop => nop_fn,
            OpChoice::Unset => trap_fn,
        };
        let c_abi = op.clobbers.contains(Clobbers::C_ABI);
        let slot_value = match *choice {
            OpChoice::Native if !c_abi => op.native_thunk.unwrap_or(op.native),
            OpChoice::Function(_) if !c_abi => op.dispatch_thunk.unwrap_or(target),
            _ => target,
        };
        if op.dispatch_slot != 0 {
            dispatch.push(SlotValue {
                addr: op.dispatch_slot,
                value: target,
            });
        }
        table_slots.push(SlotValue {
            addr: table.table + 8 * i as u64,
            value: slot_value,
        });
    }
    dispatch.extend(table_slots);
    dispatch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryError;
    use crate::paravirt::validate::PvErrorKind;
    use crate::paravirt::{nop_function, unset_function};
    use crate::table::PvEntry;
    use crate::x86_64::relocate;
    use alloc::vec;
    use core::ops::Range;

    const TEXT: Range<u64> = 0x1000..0x2000;
    const REPL: Range<u64> = 0x3000..0x3100;
    const TABLE: u64 = 0x4000;
    const ENTRIES: u64 = 0x5000;
    const NATIVE: u64 = 0x1800;
    const NATIVE_THUNK: u64 = 0x1900;
    const DISPATCH_THUNK: u64 = 0x1a00;
    const DISPATCH_SLOT: u64 = 0x4100;

    struct Fake {
        bytes: Vec<u8>,
    }

    impl Fake {
        fn new() -> Self {
            Fake {
                bytes: vec![0xcc; 0x5000],
            }
        }
        fn put(&mut self, addr: u64, b: &[u8]) {
            let at = (addr - 0x1000) as usize;
            self.bytes[at..at + b.len()].copy_from_slice(b);
        }
        /// `jmp [rip + TABLE + 8*op]` (a tail call) at `site`, padded with 0x90 to `len`.
        fn tail_site(&mut self, site: u64, op: u8, len: usize) {
            let disp = (TABLE + 8 * u64::from(op)) as i64 - (site as i64 + 6);
            let mut b = vec![0xff, 0x25];
            b.extend_from_slice(&(disp as i32).to_le_bytes());
            b.resize(len, 0x90);
            self.put(site, &b);
        }

        /// `call [TABLE + 8*op]` with an absolute address at `site`, padded to `len`.
        fn abs_site(&mut self, site: u64, op: u8, len: usize) {
            let mut b = vec![0xff, 0x14, 0x25];
            b.extend_from_slice(&((TABLE + 8 * u64::from(op)) as i32).to_le_bytes());
            b.resize(len, 0x90);
            self.put(site, &b);
        }

        /// NOPs, then `call [rip + TABLE + 8*op]` ending at `site + len`.
        fn padded_site(&mut self, site: u64, op: u8, len: usize) {
            let at = site + len as u64 - 6;
            let mut b = vec![0; len - 6];
            crate::x86_64::nops::fill(&mut b);
            self.put(site, &b);
            self.site(at, op, 6);
        }

        /// `call [rip + TABLE + 8*op]` at `site`, padded with 0x90 to `len`.
        fn site(&mut self, site: u64, op: u8, len: usize) {
            let disp = (TABLE + 8 * u64::from(op)) as i64 - (site as i64 + 6);
            let mut b = vec![0xff, 0x15];
            b.extend_from_slice(&(disp as i32).to_le_bytes());
            b.resize(len, 0x90);
            self.put(site, &b);
        }
    }

    impl Memory for Fake {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            let at = addr.checked_sub(0x1000).ok_or(MemoryError { addr })? as usize;
            let src = self
                .bytes
                .get(at..at + buf.len())
                .ok_or(MemoryError { addr })?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    fn op(name: &'static str, clobbers: Clobbers, inline: Option<(u64, u8)>) -> OpDesc {
        let c = clobbers.contains(Clobbers::C_ABI);
        OpDesc {
            name,
            native: NATIVE,
            native_thunk: (!c).then_some(NATIVE_THUNK),
            dispatch_thunk: (!c).then_some(DISPATCH_THUNK),
            dispatch_slot: if c { 0 } else { DISPATCH_SLOT },
            inline,
            clobbers,
            returns: true,
        }
    }

    fn entry(i: u64, site: u64, op: u8, len: u8, clobbers: Clobbers) -> PvTableEntry {
        let addr = ENTRIES + 8 * i;
        PvTableEntry {
            addr,
            entry: PvEntry {
                site: relative(addr, site),
                op,
                site_len: len,
                clobbers: clobbers.bits(),
            },
        }
    }

    fn relative(field: u64, target: u64) -> i32 {
        crate::table::relative(field, target).unwrap()
    }

    fn plan(
        ops: &[OpDesc],
        choices: &[OpChoice],
        entries: &[PvTableEntry],
        mem: &Fake,
    ) -> Result<PvPlan, PvError> {
        let table = TableDesc {
            name: "T",
            table: TABLE,
            ops,
            entries: 0..0,
        };
        let backend = Backend {
            name: "b",
            ops: choices,
        };
        let text = [TEXT];
        let layout = Layout {
            text: &text,
            replacements: REPL,
        };
        plan_paravirt(&table, &backend, entries, &layout, mem)
    }

    /// The plan of one entry with the native backend for every operation.
    fn plan_native(ops: &[OpDesc], entry: PvTableEntry, mem: &Fake) -> PvPlan {
        plan(ops, &[OpChoice::Native], &[entry], mem).unwrap()
    }

    /// A call to the native function through its thunk (what a site gets when the operation's
    /// inline sequence may not go in).
    const NATIVE_THROUGH_THUNK: PvDecision = PvDecision::Call {
        target: NATIVE_THUNK,
        through_thunk: true,
    };

    /// An inline sequence `mov rax, [rip + 0x4800]` placed at REPL.start (7 bytes).
    fn inline_mov(mem: &mut Fake) -> (u64, u8) {
        let at = REPL.start;
        let disp = 0x4800i64 - (at as i64 + 7);
        let mut b = vec![0x48, 0x8b, 0x05];
        b.extend_from_slice(&(disp as i32).to_le_bytes());
        mem.put(at, &b);
        (at, 7)
    }

    #[test]
    fn native_inline_is_relocated_and_padded() {
        let mut mem = Fake::new();
        let seq = inline_mov(&mut mem);
        // NOPs first, then the call: it returns to the site's end, so any sequence fits.
        mem.padded_site(0x1100, 0, 9);
        let ops = [op("load", Clobbers::RAX, Some(seq))];
        let p = plan_native(&ops, entry(0, 0x1100, 0, 9, Clobbers::RAX), &mem);
        let s = &p.sites[0];
        assert_eq!(s.decision, PvDecision::Inline);
        // disp = 0x4800 - (0x1100 + 7) = 0x36f9; then a 2-byte NOP.
        assert_eq!(
            s.write.new,
            [0x48, 0x8b, 0x05, 0xf9, 0x36, 0, 0, 0x66, 0x90]
        );
        assert_eq!(s.write.original[..5], [0x0f, 0x1f, 0x00, 0xff, 0x15]);
        assert_eq!(
            (p.table, s.op_name, p.backend, s.entry),
            ("T", "load", "b", 0)
        );
        // Slots: the dispatch slot gets the native function, the table slot the native thunk.
        assert_eq!(p.slots.len(), 2);
        assert_eq!((p.slots[0].addr, p.slots[0].value), (DISPATCH_SLOT, NATIVE));
        assert_eq!((p.slots[1].addr, p.slots[1].value), (TABLE, NATIVE_THUNK));
        // The direct call (for a backend function) ends at the site's end too.
        let p = plan(
            &ops,
            &[OpChoice::Function(0x1c00)],
            &[entry(0, 0x1100, 0, 9, Clobbers::RAX)],
            &mem,
        )
        .unwrap();
        let call = relocate::call_rel32(0x1104, DISPATCH_THUNK).unwrap();
        assert_eq!(
            p.sites[0].write.new,
            [&[0x0f, 0x1f, 0x40, 0x00][..], &call].concat()
        );
    }

    #[test]
    fn an_inline_sequence_never_covers_the_byte_a_call_returns_to() {
        let mut mem = Fake::new();
        let seq = inline_mov(&mut mem);
        // The call first, then padding: a thread inside the native function returns to offset
        // 6, which the 7-byte sequence would cover. The native function is called instead.
        mem.site(0x1100, 0, 9);
        let ops = [op("load", Clobbers::RAX, Some(seq))];
        let p = plan_native(&ops, entry(0, 0x1100, 0, 9, Clobbers::RAX), &mem);
        let s = &p.sites[0];
        assert_eq!(s.decision, NATIVE_THROUGH_THUNK);
        assert!(
            s.why
                .contains("cross the offset the site's call returns to"),
            "{}",
            s.why
        );
        let call = relocate::call_rel32(0x1101, NATIVE_THUNK).unwrap();
        assert_eq!(
            s.write.new,
            [&[0x90][..], &call, &[0x0f, 0x1f, 0x00]].concat()
        );
    }

    #[test]
    fn calls_go_through_thunks_unless_the_site_allows_the_c_abi() {
        let mut mem = Fake::new();
        mem.site(0x1100, 0, 6);
        mem.site(0x1200, 0, 6);
        let ops = [op("f", Clobbers::RAX, None)];
        let entries = [
            entry(0, 0x1100, 0, 6, Clobbers::RAX),
            // A site that allows the C ABI (as a C call site found by alt-tablegen would).
            entry(1, 0x1200, 0, 6, Clobbers::C_ABI),
        ];
        // Native without inline: the native thunk, or the native function itself.
        // The call ends where the indirect call ended (offset 6): a one-byte NOP first.
        let p = plan(&ops, &[OpChoice::Native], &entries, &mem).unwrap();
        let thunk = relocate::call_rel32(0x1101, NATIVE_THUNK).unwrap();
        assert_eq!(p.sites[0].write.new, [&[0x90], &thunk[..]].concat());
        assert_eq!(p.sites[0].decision, NATIVE_THROUGH_THUNK);
        let direct = relocate::call_rel32(0x1201, NATIVE).unwrap();
        assert_eq!(p.sites[1].write.new, [&[0x90], &direct[..]].concat());
        // A backend function: the dispatch thunk (which calls through the dispatch slot).
        let p = plan(&ops, &[OpChoice::Function(0x1c00)], &entries, &mem).unwrap();
        assert_eq!(
            p.sites[0].decision,
            PvDecision::Call {
                target: DISPATCH_THUNK,
                through_thunk: true
            }
        );
        assert_eq!(
            p.sites[1].decision,
            PvDecision::Call {
                target: 0x1c00,
                through_thunk: false
            }
        );
        assert_eq!(p.slots[0].value, 0x1c00);
        assert_eq!(p.slots[1].value, DISPATCH_THUNK);
    }

    #[test]
    fn tail_calls_become_jumps_and_absolute_calls_are_recognised() {
        let mut mem = Fake::new();
        let seq = inline_mov(&mut mem);
        // Tail calls through op 0 (inline fits with its ret in 8 bytes, not in 6) and op 1.
        mem.tail_site(0x1100, 0, 8);
        mem.tail_site(0x1200, 0, 6);
        mem.tail_site(0x1300, 1, 6);
        mem.abs_site(0x1400, 1, 7);
        let mut void = op("v", Clobbers::C_ABI, None);
        void.returns = false;
        let ops = [op("load", Clobbers::C_ABI, Some(seq)), void];
        let entries = [
            entry(0, 0x1100, 0, 8, Clobbers::C_ABI),
            entry(1, 0x1200, 0, 6, Clobbers::C_ABI),
            entry(2, 0x1300, 1, 6, Clobbers::C_ABI),
            entry(3, 0x1400, 1, 7, Clobbers::C_ABI),
        ];
        let p = plan(&ops, &[OpChoice::Native, OpChoice::Nop], &entries, &mem).unwrap();
        let new: Vec<&[u8]> = p.sites.iter().map(|s| &s.write.new[..]).collect();
        // mov rax, [rip + 0x4800 - (0x1100 + 7)] ; ret
        assert_eq!(new[0], [0x48, 0x8b, 0x05, 0xf9, 0x36, 0, 0, 0xc3]);
        assert_eq!(p.sites[0].decision, PvDecision::Inline);
        // Too short for the sequence and its ret: jmp rel32 to the native function (a jump
        // returns nowhere, so it stays at the start).
        let jmp = relocate::jmp_rel32(0x1200, NATIVE).unwrap();
        assert_eq!(new[1], [&jmp[..], &[0x90]].concat());
        assert!(p.sites[1].why.contains("tail call"));
        // A nop tail call returns at once; a nop absolute call is NOPs.
        assert_eq!(new[2], [0xc3, 0x0f, 0x1f, 0x44, 0x00, 0x00]);
        assert_eq!(new[3], [0x0f, 0x1f, 0x80, 0, 0, 0, 0]);

        // The absolute form must name the right slot.
        let mut wrong = Fake::new();
        wrong.abs_site(0x1400, 0, 7);
        let e = plan(
            &ops,
            &[OpChoice::Native, OpChoice::Nop],
            &[entry(0, 0x1400, 1, 7, Clobbers::C_ABI)],
            &wrong,
        )
        .unwrap_err();
        assert_eq!(
            e.kind,
            PvErrorKind::NotTableCall {
                expected: TABLE + 8,
                found: Some(TABLE),
                bytes: vec![0xff, 0x14, 0x25, 0, 0x40, 0, 0],
            }
        );
    }

    #[test]
    fn nop_and_unset() {
        let mut mem = Fake::new();
        mem.site(0x1100, 0, 6);
        mem.site(0x1200, 1, 6);
        mem.site(0x1300, 2, 7);
        let mut void = op("v", Clobbers::C_ABI, None);
        void.returns = false;
        let ops = [
            op("r", Clobbers::C_ABI, None),
            void,
            op("u", Clobbers::RAX, None),
        ];
        let entries = [
            entry(0, 0x1100, 0, 6, Clobbers::C_ABI),
            entry(1, 0x1200, 1, 6, Clobbers::C_ABI),
            entry(2, 0x1300, 2, 7, Clobbers::RAX),
        ];
        let p = plan(
            &ops,
            &[OpChoice::Nop, OpChoice::Nop, OpChoice::Unset],
            &entries,
            &mem,
        )
        .unwrap();
        let new: Vec<&[u8]> = p.sites.iter().map(|s| &s.write.new[..]).collect();
        assert_eq!(new[0], [0x31, 0xc0, 0x0f, 0x1f, 0x40, 0x00]);
        assert_eq!(new[1], [0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00]);
        // ud2, then NOPs that keep a boundary at offset 6, where the indirect call returned.
        assert_eq!(new[2], [0x0f, 0x0b, 0x0f, 0x1f, 0x40, 0x00, 0x90]);
        assert_eq!(p.sites[2].decision, PvDecision::Trap);
        let slots: Vec<u64> = p.slots.iter().map(|s| s.value).collect();
        // Dispatch slot of op 2, then the three table slots.
        let (nop, trap) = (nop_function(), unset_function());
        assert_eq!(slots, [trap, nop, nop, trap]);
    }

    #[test]
    fn every_bad_entry_is_named() {
        let mut mem = Fake::new();
        mem.site(0x1100, 0, 6);
        mem.site(0x1200, 1, 6);
        let ops = [op("a", Clobbers::RAX, None), op("b", Clobbers::C_ABI, None)];
        let both = [OpChoice::Native, OpChoice::Native];
        let kind = |entries: &[PvTableEntry], choices: &[OpChoice]| {
            plan(&ops, choices, entries, &mem).unwrap_err().kind
        };
        let placeholder = PvTableEntry {
            addr: ENTRIES,
            entry: PvEntry::from_bytes(&[0; 8]),
        };
        assert_eq!(
            kind(&[placeholder, entry(1, 0x1100, 2, 6, Clobbers::RAX)], &both),
            PvErrorKind::UnknownOp { op: 2, ops: 2 }
        );
        assert_eq!(
            kind(&[entry(0, 0x1100, 0, 5, Clobbers::RAX)], &both),
            PvErrorKind::SiteTooShort { site_len: 5 }
        );
        assert_eq!(
            kind(&[entry(0, 0x2ffa, 0, 6, Clobbers::RAX)], &both),
            PvErrorKind::SiteOutsideText
        );
        assert_eq!(
            kind(
                &[entry(0, 0x1100, 0, 6, Clobbers::from_bits_retain(0x8001))],
                &both
            ),
            PvErrorKind::UnknownClobbers(0x8000)
        );
        // The site at 0x1200 calls slot 1, not slot 0.
        assert_eq!(
            kind(&[entry(0, 0x1200, 0, 6, Clobbers::RAX)], &both),
            PvErrorKind::NotTableCall {
                expected: TABLE,
                found: Some(TABLE + 8),
                bytes: vec![0xff, 0x15, 0x02, 0x2e, 0x00, 0x00],
            }
        );
        // Not an indirect call at all.
        assert!(matches!(
            kind(&[entry(0, 0x1300, 0, 6, Clobbers::RAX)], &both),
            PvErrorKind::NotTableCall { found: None, .. }
        ));
        assert_eq!(
            kind(
                &[
                    entry(0, 0x1100, 0, 6, Clobbers::RAX),
                    entry(1, 0x1100, 0, 6, Clobbers::RAX)
                ],
                &both
            ),
            PvErrorKind::Overlap {
                other: 0,
                other_site: 0x1100
            }
        );
        // Op b clobbers the C ABI and has no thunk; a site allowing only rax cannot call it.
        assert_eq!(
            kind(&[entry(0, 0x1200, 1, 6, Clobbers::RAX)], &both),
            PvErrorKind::ClobberMismatch {
                needs: Clobbers::C_ABI,
                allows: Clobbers::RAX
            }
        );
        assert_eq!(
            kind(&[], &[OpChoice::Native]),
            PvErrorKind::BackendOpCount {
                table: 2,
                backend: 1
            }
        );
        let e = plan(&ops, &both, &[entry(3, 0x1100, 9, 6, Clobbers::RAX)], &mem).unwrap_err();
        assert_eq!(
            alloc::format!("{e}"),
            "paravirt table T entry 0 at 0x5018 (site 0x1100): operation index 9 is out of \
             range (the table has 2 operations)"
        );
    }

    #[test]
    fn a_tail_site_as_long_as_the_sequence_has_no_room_for_its_ret() {
        let mut mem = Fake::new();
        let seq = inline_mov(&mut mem);
        // 7 bytes: the 7-byte sequence would fit, but not with the ret a tail call needs.
        mem.tail_site(0x1100, 0, 7);
        let ops = [op("load", Clobbers::C_ABI, Some(seq))];
        let p = plan_native(&ops, entry(0, 0x1100, 0, 7, Clobbers::C_ABI), &mem);
        let s = &p.sites[0];
        assert!(
            s.why
                .starts_with("native, the inline sequence does not fit"),
            "{}",
            s.why
        );
        let jmp = relocate::jmp_rel32(0x1100, NATIVE).unwrap();
        assert_eq!(s.write.new, [&jmp[..], &[0x66, 0x90]].concat());
    }

    #[test]
    fn an_inline_sequence_that_clobbers_more_than_the_site_allows_is_not_inlined() {
        let mut mem = Fake::new();
        let seq = inline_mov(&mut mem);
        mem.padded_site(0x1100, 0, 9);
        // The sequence may change rcx too; the site lets the operation change only rax.
        let ops = [op("load", Clobbers::RAX | Clobbers::RCX, Some(seq))];
        let p = plan_native(&ops, entry(0, 0x1100, 0, 9, Clobbers::RAX), &mem);
        let s = &p.sites[0];
        assert_eq!(s.decision, NATIVE_THROUGH_THUNK);
        assert!(
            s.why
                .starts_with("native, the inline sequence clobbers more"),
            "{}",
            s.why
        );
        // The same site allowing rcx as well gets the sequence.
        let p = plan_native(
            &ops,
            entry(0, 0x1100, 0, 9, Clobbers::RAX | Clobbers::RCX),
            &mem,
        );
        assert_eq!(p.sites[0].decision, PvDecision::Inline);
    }

    #[test]
    fn an_operation_without_every_thunk_and_slot_it_needs_is_refused() {
        let mut mem = Fake::new();
        mem.site(0x1100, 0, 6);
        let entries = [entry(0, 0x1100, 0, 6, Clobbers::RAX)];
        let full = op("a", Clobbers::RAX, None);
        assert!(plan(&[full], &[OpChoice::Native], &entries, &mem).is_ok());
        let missing = [
            OpDesc {
                native_thunk: None,
                ..full
            },
            OpDesc {
                dispatch_thunk: None,
                ..full
            },
            OpDesc {
                dispatch_slot: 0,
                ..full
            },
        ];
        for m in missing {
            let e = plan(&[m], &[OpChoice::Native], &entries, &mem).unwrap_err();
            assert_eq!(
                (e.entry, e.kind),
                (None, PvErrorKind::MissingThunk { op: 0 })
            );
        }
        // An inline sequence that runs past the replacement section's end.
        let past = OpDesc {
            inline: Some((REPL.end - 6, 7)),
            ..full
        };
        let e = plan(&[past], &[OpChoice::Native], &entries, &mem).unwrap_err();
        assert_eq!(e.kind, PvErrorKind::InlineOutsideSection { op: 0 });
    }

    #[test]
    fn empty_and_ragged_sites_are_refused_and_touching_ones_are_not() {
        let mut mem = Fake::new();
        let ops = [op("a", Clobbers::RAX, None)];
        let kind = |entries: &[PvTableEntry], mem: &Fake| {
            plan(&ops, &[OpChoice::Native], entries, mem)
                .unwrap_err()
                .kind
        };
        // A site of no bytes is not in the text (rather than too short).
        assert_eq!(
            kind(&[entry(0, 0x1100, 0, 0, Clobbers::RAX)], &mem),
            PvErrorKind::SiteOutsideText
        );
        // A NOP, the call, then 0x0f, the first byte of an instruction cut off by the site's
        // end: the error names that byte's offset in the site.
        mem.put(0x1100, &[0x90]);
        mem.site(0x1101, 0, 6);
        mem.put(0x1107, &[0x0f]);
        match kind(&[entry(0, 0x1100, 0, 8, Clobbers::RAX)], &mem) {
            PvErrorKind::SiteNotWholeInstructions(d) => assert_eq!(d.offset, 7),
            other => panic!("{other:?}"),
        }
        // Two sites that touch do not overlap.
        mem.site(0x1200, 0, 6);
        mem.site(0x1206, 0, 6);
        let p = plan(
            &ops,
            &[OpChoice::Native],
            &[
                entry(0, 0x1206, 0, 6, Clobbers::RAX),
                entry(1, 0x1200, 0, 6, Clobbers::RAX),
            ],
            &mem,
        )
        .unwrap();
        let at: Vec<(u64, usize)> = p.sites.iter().map(|s| (s.write.addr, s.entry)).collect();
        assert_eq!(at, [(0x1200, 1), (0x1206, 0)]);
    }

    #[test]
    fn an_inline_sequence_may_end_where_the_call_returned() {
        let mut mem = Fake::new();
        // mov eax, [rip + 0x4800]: 6 bytes, as long as the call it replaces.
        let disp = 0x4800i64 - (REPL.start as i64 + 6);
        let mut seq = vec![0x8b, 0x05];
        seq.extend_from_slice(&(disp as i32).to_le_bytes());
        mem.put(REPL.start, &seq);
        // The call first: a thread inside the native function returns to offset 6, where the
        // sequence ends.
        mem.site(0x1100, 0, 9);
        let ops = [op("load", Clobbers::RAX, Some((REPL.start, 6)))];
        let p = plan_native(&ops, entry(0, 0x1100, 0, 9, Clobbers::RAX), &mem);
        let s = &p.sites[0];
        assert_eq!(s.decision, PvDecision::Inline, "{}", s.why);
        // disp = 0x4800 - (0x1100 + 6) = 0x36fa; then a 3-byte NOP.
        assert_eq!(
            s.write.new,
            [0x8b, 0x05, 0xfa, 0x36, 0, 0, 0x0f, 0x1f, 0x00]
        );
    }

    #[test]
    fn decisions_have_short_names() {
        let call = PvDecision::Call {
            target: 0,
            through_thunk: false,
        };
        let names = [PvDecision::Inline, call, PvDecision::Nop, PvDecision::Trap].map(|d| d.name());
        assert_eq!(names, ["inline", "direct_call", "nop", "trap"]);
    }

    #[test]
    fn operations_that_allow_the_c_abi_get_their_functions_in_the_slots_even_with_thunks() {
        let mem = Fake::new();
        // Both operations clobber the C ABI, yet carry thunks and dispatch slots: a slot holds
        // the function itself, never a thunk it does not need.
        let with_thunks = |name, dispatch_slot| OpDesc {
            native_thunk: Some(NATIVE_THUNK),
            dispatch_thunk: Some(DISPATCH_THUNK),
            dispatch_slot,
            ..op(name, Clobbers::C_ABI, None)
        };
        let ops = [
            with_thunks("a", DISPATCH_SLOT),
            with_thunks("b", DISPATCH_SLOT + 8),
        ];
        let p = plan(
            &ops,
            &[OpChoice::Native, OpChoice::Function(0x1c00)],
            &[],
            &mem,
        )
        .unwrap();
        let slots: Vec<(u64, u64)> = p.slots.iter().map(|s| (s.addr, s.value)).collect();
        assert_eq!(
            slots,
            [
                (DISPATCH_SLOT, NATIVE),
                (DISPATCH_SLOT + 8, 0x1c00),
                (TABLE, NATIVE),
                (TABLE + 8, 0x1c00)
            ]
        );
    }

    #[test]
    fn inline_that_does_not_fit_becomes_a_call() {
        let mut mem = Fake::new();
        let seq = inline_mov(&mut mem);
        mem.site(0x1100, 0, 6);
        let ops = [op("load", Clobbers::RAX, Some(seq))];
        let p = plan_native(&ops, entry(0, 0x1100, 0, 6, Clobbers::RAX), &mem);
        let s = &p.sites[0];
        assert!(matches!(
            s.decision,
            PvDecision::Call {
                through_thunk: true,
                ..
            }
        ));
        assert!(s
            .why
            .starts_with("native, the inline sequence does not fit"));
    }
}
