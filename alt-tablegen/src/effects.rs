//! The register-effects check: every variant of every site changes only what the site tells the
//! compiler it may change.
//!
//! A site's `asm!` block makes promises the compiler relies on: which general-purpose registers
//! may change (the result, `clobber(...)`, outputs), whether the flags, memory, the stack and the
//! vector registers may be touched (`preserves_flags`, `nomem`/`readonly`, `nostack`,
//! `preserve_vectors`). The macros record those promises beside the table
//! ([`alt_runtime::table::EffectsEntry`], section `alt_site_effects`). This module decodes every
//! variant a site can become with an independent decoder that knows implicit operands (iced-x86's
//! instruction info: `rep movsb` writes rcx, rsi and rdi; `cpuid` rax..rdx; `rdtsc` rdx:rax;
//! `syscall` rcx and r11; a store writes memory) and reports each broken promise with the site's
//! function, the variant, the instruction and the register.
//!
//! The variants of a site: its default code as it is in the file; each alternative entry's
//! replacement (copied) or call target (a direct call); and, from the effects records, a
//! paravirt operation's native inline sequence and the thunks its backends are reached through.
//!
//! How code is judged:
//!
//! - Straight-line code is executed symbolically: a register keeps its promise if it ends with
//!   the value it had on entry, so a thunk's `push rcx` ... `pop rcx` (or a vector register saved
//!   to the stack and loaded back) counts as saved. A register another instruction writes is
//!   reported with the first instruction that wrote it.
//! - A `call` to a known address is followed (the callee decoded the same way, up to its `ret`);
//!   a callee with any branch (a loop, a jump table, a tail call) or an indirect call is an
//!   `extern "C"` function: it may change every caller-saved register (System V), the vector registers
//!   `xmm0`-`xmm15`, the flags and memory. (As the thunks, this judges vector registers by number,
//!   not width: a saved `xmm0` counts for `ymm0`; see `docs/patching.md`.)
//! - An unconditional jump to a label the site's records declare (an `asm!` label operand:
//!   `alt::has!`'s other arm) ends the variant there, as reaching the site's end does; any
//!   other jump out of the code is a tail call of an `extern "C"` function.
//! - Stack use is `push`/`pop`/`call`, an access based on `rsp`, or `sub`/`add rsp, imm`; the
//!   stack must end balanced, and any other write of `rsp` is an error.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use alt_runtime::table::{
    Effects, EffectsEntry, EffectsKind, EFFECTS_ENTRY_SIZE, GPR_NAMES, PV_SECTION_PREFIX,
    SITE_EFFECTS_SECTION,
};
use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic,
    OpAccess, OpKind, Register,
};
use object::elf;
use object::read::elf::SectionHeader;
use serde::Serialize;

use crate::inspect::Tables;
use crate::read::{Object, LE};

/// Calls followed into callees at most this deep (site -> thunk -> function).
const MAX_DEPTH: u32 = 3;
/// Instructions decoded in one callee before it counts as an `extern "C"` function.
const MAX_CALLEE_INSTRUCTIONS: usize = 256;

/// One broken promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EffectsProblem {
    /// The site's address.
    pub site: u64,
    /// The site's function (`quickstart::copy_bytes`), or a description of the site.
    pub function: String,
    /// The variant: `default`, `alt_instr[i] (erms)`, `paravirt native inline`...
    pub variant: String,
    /// Address of the instruction.
    pub address: u64,
    /// The instruction, in Intel syntax (`rep movsb`).
    pub instruction: String,
    /// What it changes: a register (`rcx`), `flags`, `memory`, `stack`, `vector registers`.
    pub changes: String,
    /// Why that breaks the site's promise.
    pub reason: String,
}

impl fmt::Display for EffectsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "site {:#x} of `{}`, {}: `{}` at {:#x} changes {}: {}",
            self.site,
            self.function,
            self.variant,
            self.instruction,
            self.address,
            self.changes,
            self.reason
        )
    }
}

/// What [`check`] found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EffectsReport {
    /// Sites whose variants were checked.
    pub sites_checked: usize,
    /// Sites in the tables without an effects record (built by older macros, or tables made by
    /// `alt-tablegen emit` for C code): not checked.
    pub sites_without_record: usize,
    /// Every broken promise, by site address.
    pub problems: Vec<EffectsProblem>,
}

/// What a site declares, from its records.
#[derive(Clone, Debug, Default)]
struct Declaration {
    gprs: u16,
    effects: Effects,
    inline_variants: Vec<(u64, u8)>,
    call_variants: Vec<u64>,
    /// Labels of the site's `asm!` block a variant may jump to (`alt::has!`'s other arm).
    jump_targets: Vec<u64>,
}

/// Reads `alt_site_effects`: declarations by site address. Malformed records are ignored here
/// (the section's size is checked by the linker script, unknown kinds are reported by
/// [`check`]).
fn declarations(obj: &Object<'_>, problems: &mut Vec<String>) -> BTreeMap<u64, Declaration> {
    let mut out: BTreeMap<u64, Declaration> = BTreeMap::new();
    for (i, h) in obj.section_headers() {
        if obj.section_name(i) != SITE_EFFECTS_SECTION || h.sh_type(LE) == elf::SHT_NOBITS {
            continue;
        }
        let Ok(data) = obj.section_data(i) else {
            continue;
        };
        let base = h.sh_addr(LE);
        for (n, chunk) in data.chunks_exact(EFFECTS_ENTRY_SIZE).enumerate() {
            let Ok(b) = <&[u8; EFFECTS_ENTRY_SIZE]>::try_from(chunk) else {
                continue;
            };
            if b.iter().all(|&x| x == 0) {
                continue;
            }
            let e = EffectsEntry::from_bytes(b);
            let addr = base.wrapping_add((n * EFFECTS_ENTRY_SIZE) as u64);
            let site = e.site_addr(addr);
            let d = out.entry(site).or_default();
            d.gprs |= e.gprs;
            d.effects |= Effects::from_bits_retain(e.effects);
            let code = e.code_addr(addr);
            match EffectsKind::from_u8(e.kind) {
                Some(EffectsKind::Declaration) => {}
                Some(EffectsKind::InlineVariant) => d.inline_variants.push((code, e.code_len)),
                Some(EffectsKind::CallVariant) => d.call_variants.push(code),
                Some(EffectsKind::JumpTarget) => d.jump_targets.push(code),
                Some(EffectsKind::OperandProbe) => {
                    match code_at(obj, code, e.code_len.into()).and_then(probe_register) {
                        Some(bit) => d.gprs |= bit,
                        None => problems.push(format!(
                            "{SITE_EFFECTS_SECTION}[{n}]: the operand probe at {code:#x} is not a register-to-register instruction"
                        )),
                    }
                }
                None => problems.push(format!(
                    "{SITE_EFFECTS_SECTION}[{n}]: unknown record kind {}",
                    e.kind
                )),
            }
        }
    }
    out
}

/// The register an operand probe (`mov r, r`) names, as a [`EffectsEntry::gprs`] bit.
fn probe_register(bytes: &[u8]) -> Option<u16> {
    let mut d = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
    let insn = d.decode();
    if insn.is_invalid() || insn.op_count() < 1 || insn.op0_kind() != OpKind::Register {
        return None;
    }
    gpr_index(insn.op0_register()).map(|i| 1 << i)
}

/// The bytes at `addr..addr+len` of an allocated section with contents.
fn code_at<'d>(obj: &Object<'d>, addr: u64, len: u64) -> Option<&'d [u8]> {
    for (i, h) in obj.section_headers() {
        if h.sh_flags(LE) & u64::from(elf::SHF_ALLOC) == 0 || h.sh_type(LE) == elf::SHT_NOBITS {
            continue;
        }
        let start = h.sh_addr(LE);
        let off = addr.checked_sub(start)?;
        if off >= h.sh_size(LE) {
            continue;
        }
        let end = off.checked_add(len)?.min(h.sh_size(LE));
        let data = obj.section_data(i).ok()?;
        return data.get(off as usize..end as usize);
    }
    None
}

/// Index of a general-purpose register (any width) by hardware number.
fn gpr_index(r: Register) -> Option<usize> {
    let full = r.full_register();
    if !full.is_gpr64() {
        return None;
    }
    Some(full.number())
}

/// A register the checker tracks: GPRs 0..16, vector registers 16..48 (by number), masks 48..56.
fn slot_of(r: Register) -> Option<usize> {
    if let Some(i) = gpr_index(r) {
        return Some(i);
    }
    let full = r.full_register();
    if full.is_zmm() || full.is_ymm() || full.is_xmm() {
        return Some(16 + full.number());
    }
    if full.is_k() {
        return Some(48 + full.number());
    }
    None
}

const SLOTS: usize = 56;
const RSP: usize = 4;

fn slot_name(i: usize) -> String {
    match i {
        0..=15 => GPR_NAMES[i].to_string(),
        16..=47 => format!("xmm{}/ymm{}/zmm{}", i - 16, i - 16, i - 16),
        _ => format!("k{}", i - 48),
    }
}

/// The caller-saved general-purpose registers of System V, by hardware number.
const C_ABI_GPRS: [usize; 9] = [0, 1, 2, 6, 7, 8, 9, 10, 11];

/// An instruction that did something, for reports: the instruction of the code judged, and,
/// when it is a call, the instructions inside the callees that did it (`call 0x10 -> push rcx at
/// 0x10 -> ...`).
#[derive(Clone, Debug)]
struct Culprit {
    address: u64,
    text: String,
    chain: Vec<String>,
}

impl Culprit {
    fn of(insn: &Instruction) -> Self {
        use iced_x86::Formatter;
        let mut f = iced_x86::IntelFormatter::new();
        let o = f.options_mut();
        o.set_space_after_operand_separator(true);
        o.set_hex_prefix("0x");
        o.set_hex_suffix("");
        o.set_uppercase_hex(false);
        o.set_branch_leading_zeros(false);
        let mut text = String::new();
        f.format(insn, &mut text);
        Self {
            address: insn.ip(),
            text,
            chain: Vec::new(),
        }
    }

    fn plain(address: u64, text: impl Into<String>) -> Self {
        Self {
            address,
            text: text.into(),
            chain: Vec::new(),
        }
    }

    /// `by`, through which `self` (in a callee) happened.
    fn through(&self, by: &Culprit) -> Self {
        let mut chain = by.chain.clone();
        if self.text == C_FUNCTION && self.chain.is_empty() {
            chain.push(C_FUNCTION.to_string());
        } else {
            chain.push(format!("{} at {:#x}", self.text, self.address));
            chain.extend(self.chain.iter().cloned());
        }
        Self {
            address: by.address,
            text: by.text.clone(),
            chain,
        }
    }

    fn describe(&self) -> String {
        let mut s = self.text.clone();
        for c in &self.chain {
            s.push_str(" -> ");
            s.push_str(c);
        }
        s
    }
}

/// What running a piece of code does, judged against nothing yet.
#[derive(Clone, Debug, Default)]
struct Outcome {
    /// Registers whose value at the end is not their value at entry, with the first instruction
    /// that wrote them.
    changed: BTreeMap<usize, Culprit>,
    flags: Option<Culprit>,
    memory_read: Option<Culprit>,
    memory_write: Option<Culprit>,
    stack: Option<Culprit>,
    /// Stack pointer not restored, or written some other way.
    unbalanced: Option<Culprit>,
}

impl Outcome {
    fn note(slot: &mut Option<Culprit>, c: &Culprit) {
        if slot.is_none() {
            *slot = Some(c.clone());
        }
    }
}

/// Symbolic state of straight-line code.
struct State {
    /// What each register holds: `Some(i)` the entry value of register `i`, `None` anything else.
    regs: [Option<usize>; SLOTS],
    first_write: [Option<Culprit>; SLOTS],
    /// Stack pointer relative to entry.
    sp: i64,
    /// Stack slots (relative to entry) holding a register's entry value.
    slots: HashMap<i64, Option<usize>>,
    /// The stack pointer when `mov rbp, rsp` set up a frame (for `leave`).
    frame: Option<i64>,
    /// The code moved the stack pointer in a way this model does not follow.
    lost_stack: bool,
    out: Outcome,
}

impl State {
    fn new() -> Self {
        let mut regs = [None; SLOTS];
        for (i, r) in regs.iter_mut().enumerate() {
            *r = Some(i);
        }
        Self {
            regs,
            first_write: std::array::from_fn(|_| None),
            sp: 0,
            slots: HashMap::new(),
            frame: None,
            lost_stack: false,
            out: Outcome::default(),
        }
    }

    fn write(&mut self, slot: usize, value: Option<usize>, by: &Culprit) {
        if slot == RSP {
            return;
        }
        self.regs[slot] = value;
        if value != Some(slot) && self.first_write[slot].is_none() {
            self.first_write[slot] = Some(by.clone());
        }
    }

    /// What an `extern "C"` call (or a callee's `outcome`) does to the state.
    fn apply(&mut self, callee: &Outcome, by: &Culprit) {
        for (&slot, inner) in &callee.changed {
            let c = inner.through(by);
            self.write(slot, None, &c);
        }
        let wrap = |inner: &Option<Culprit>| inner.as_ref().map(|i| i.through(by));
        for (mine, theirs) in [
            (&mut self.out.flags, wrap(&callee.flags)),
            (&mut self.out.memory_read, wrap(&callee.memory_read)),
            (&mut self.out.memory_write, wrap(&callee.memory_write)),
            (&mut self.out.unbalanced, wrap(&callee.unbalanced)),
        ] {
            if let Some(t) = theirs {
                Outcome::note(mine, &t);
            }
        }
        Outcome::note(&mut self.out.stack, by);
    }

    fn finish(mut self, end: &Culprit) -> Outcome {
        for slot in 0..SLOTS {
            if slot != RSP && self.regs[slot] != Some(slot) {
                let c = self.first_write[slot]
                    .clone()
                    .unwrap_or_else(|| end.clone());
                self.out.changed.insert(slot, c);
            }
        }
        if self.sp != 0 {
            let c = Culprit::plain(
                end.address,
                format!("{} (stack pointer {:+} at the end)", end.text, self.sp),
            );
            Outcome::note(&mut self.out.unbalanced, &c);
        }
        self.out
    }
}

/// How a report names what an `extern "C"` function may do.
const C_FUNCTION: &str = "an `extern \"C\"` function (System V: every caller-saved register)";

/// What calling an `extern "C"` function may do.
fn c_abi_outcome(by: &Culprit) -> Outcome {
    let mut out = Outcome::default();
    let c = Culprit::plain(by.address, C_FUNCTION);
    for r in C_ABI_GPRS {
        out.changed.insert(r, c.clone());
    }
    for v in 0..16 {
        out.changed.insert(16 + v, c.clone());
    }
    out.flags = Some(c.clone());
    out.memory_read = Some(c.clone());
    out.memory_write = Some(c.clone());
    out
}

/// Runs code symbolically.
struct Runner<'o, 'd> {
    obj: &'o Object<'d>,
    info: InstructionInfoFactory,
    /// An indirect call in this code stands for these checked call variants (a paravirt site's
    /// call through its table slot): it is not judged as an `extern "C"` call.
    indirect_is_checked: bool,
    /// Labels the site's variants may jump to: an unconditional jump there ends the variant.
    jump_targets: Vec<u64>,
}

impl Runner<'_, '_> {
    /// Runs `bytes` at `ip` to their end (a variant) or to a `ret` (a callee).
    fn run(&mut self, bytes: &[u8], ip: u64, callee: bool, depth: u32) -> Outcome {
        let mut st = State::new();
        let mut d = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
        let end_ip = ip + bytes.len() as u64;
        let mut insn = Instruction::default();
        let mut count = 0;
        let mut last = Culprit::plain(ip, "(end)");
        while d.can_decode() {
            d.decode_out(&mut insn);
            count += 1;
            let me = Culprit::of(&insn);
            last = me.clone();
            if insn.is_invalid() || (callee && count > MAX_CALLEE_INSTRUCTIONS) {
                // Not code we can follow: judge it as a C function.
                let c = c_abi_outcome(&me);
                st.apply(&c, &me);
                return st.finish(&me);
            }
            if callee
                && matches!(
                    insn.flow_control(),
                    FlowControl::UnconditionalBranch
                        | FlowControl::ConditionalBranch
                        | FlowControl::IndirectBranch
                )
            {
                // A function with control flow (loops, jump tables, tail calls): judge it as the
                // extern "C" function it is, whatever it did before the branch.
                return c_abi_outcome(&me);
            }
            match insn.flow_control() {
                FlowControl::Return => {
                    if callee {
                        return st.finish(&me);
                    }
                    Outcome::note(&mut st.out.unbalanced, &me);
                    continue;
                }
                FlowControl::Call => {
                    let target = insn.near_branch_target();
                    let inner = if depth >= MAX_DEPTH {
                        c_abi_outcome(&me)
                    } else {
                        self.callee(target, &me, depth + 1)
                    };
                    st.apply(&inner, &me);
                    continue;
                }
                FlowControl::IndirectCall => {
                    if !self.indirect_is_checked || depth > 0 {
                        st.apply(&c_abi_outcome(&me), &me);
                    } else {
                        Outcome::note(&mut st.out.stack, &me);
                    }
                    continue;
                }
                FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
                    let t = insn.near_branch_target();
                    if t >= ip && t < end_ip {
                        // A local branch: every instruction is still decoded in turn.
                        if insn.flow_control() == FlowControl::ConditionalBranch {
                            self.effects(&insn, &mut st, &me);
                        }
                        continue;
                    }
                    if !callee
                        && insn.flow_control() == FlowControl::UnconditionalBranch
                        && self.jump_targets.contains(&t)
                    {
                        // To a label of the site's asm! block: the compiler knows this edge,
                        // so the variant ends here, as at the site's end.
                        return st.finish(&me);
                    }
                    // Leaving the code: a tail call of an extern "C" function.
                    st.apply(&c_abi_outcome(&me), &me);
                    st.out.stack = st.out.stack.take().filter(|_| callee);
                    return st.finish(&me);
                }
                FlowControl::IndirectBranch => {
                    st.apply(&c_abi_outcome(&me), &me);
                    return st.finish(&me);
                }
                _ => {}
            }
            self.step(&insn, &mut st, &me);
            if callee && st.lost_stack {
                // A function that moves its stack pointer in ways we do not follow (alignment,
                // a dynamic frame): judge it as the extern "C" function it is.
                return c_abi_outcome(&me);
            }
        }
        if callee {
            // Ran off the end without `ret`: nothing we can judge; a C function.
            let c = c_abi_outcome(&last);
            st.apply(&c, &last);
        }
        st.finish(&Culprit::plain(end_ip, "(end of the variant)"))
    }

    /// The outcome of calling `target`.
    fn callee(&mut self, target: u64, by: &Culprit, depth: u32) -> Outcome {
        match code_at(self.obj, target, 16 * MAX_CALLEE_INSTRUCTIONS as u64) {
            Some(bytes) if !bytes.is_empty() => {
                let saved = self.indirect_is_checked;
                self.indirect_is_checked = false;
                let out = self.run(bytes, target, true, depth);
                self.indirect_is_checked = saved;
                out
            }
            _ => c_abi_outcome(by),
        }
    }

    /// One instruction that is not control flow.
    fn step(&mut self, insn: &Instruction, st: &mut State, me: &Culprit) {
        let stack_mem = insn.memory_base().full_register() == Register::RSP
            && insn.memory_index() == Register::None;
        match insn.mnemonic() {
            Mnemonic::Push if insn.op0_kind() == OpKind::Register => {
                st.sp -= 8;
                let v = slot_of(insn.op0_register()).and_then(|s| st.regs[s]);
                st.slots.insert(st.sp, v);
                Outcome::note(&mut st.out.stack, me);
                return;
            }
            Mnemonic::Pop if insn.op0_kind() == OpKind::Register => {
                let v = st.slots.get(&st.sp).copied().flatten();
                st.sp += 8;
                if let Some(s) = slot_of(insn.op0_register()) {
                    st.write(s, v, me);
                }
                Outcome::note(&mut st.out.stack, me);
                return;
            }
            Mnemonic::Sub | Mnemonic::Add
                if insn.op0_kind() == OpKind::Register
                    && insn.op0_register() == Register::RSP
                    && matches!(
                        insn.op1_kind(),
                        OpKind::Immediate8to64 | OpKind::Immediate32to64
                    ) =>
            {
                let imm = insn.immediate(1) as i64;
                st.sp += if insn.mnemonic() == Mnemonic::Sub {
                    -imm
                } else {
                    imm
                };
                Outcome::note(&mut st.out.stack, me);
                // Flags change too.
                Outcome::note(&mut st.out.flags, me);
                return;
            }
            _ => {}
        }
        if insn.mnemonic() == Mnemonic::Leave {
            match st.frame {
                Some(sp) => {
                    st.sp = sp;
                    let v = st.slots.get(&st.sp).copied().flatten();
                    st.sp += 8;
                    st.write(5, v, me);
                }
                None => st.lost_stack = true,
            }
            Outcome::note(&mut st.out.stack, me);
            return;
        }
        if insn.mnemonic() == Mnemonic::Mov
            && insn.op0_kind() == OpKind::Register
            && insn.op0_register() == Register::RBP
            && insn.op1_kind() == OpKind::Register
            && insn.op1_register() == Register::RSP
        {
            st.frame = Some(st.sp);
            st.write(5, None, me);
            return;
        }
        if is_plain_move(insn) && insn.op_count() == 2 {
            // A save to or a load from a stack slot, or a register copy.
            let at = st.sp + insn.memory_displacement64() as i64;
            match (insn.op0_kind(), insn.op1_kind()) {
                (OpKind::Memory, OpKind::Register) if stack_mem => {
                    let v = slot_of(insn.op1_register()).and_then(|s| st.regs[s]);
                    st.slots.insert(at, v);
                    Outcome::note(&mut st.out.stack, me);
                    return;
                }
                (OpKind::Register, OpKind::Memory) if stack_mem => {
                    let v = st.slots.get(&at).copied().flatten();
                    if let Some(s) = slot_of(insn.op0_register()) {
                        st.write(s, v, me);
                    }
                    Outcome::note(&mut st.out.stack, me);
                    return;
                }
                (OpKind::Register, OpKind::Register)
                    if insn.op0_register().is_gpr64() && insn.op1_register().is_gpr64() =>
                {
                    if let (Some(d), Some(s)) =
                        (slot_of(insn.op0_register()), slot_of(insn.op1_register()))
                    {
                        let v = st.regs[s];
                        st.write(d, v, me);
                        return;
                    }
                }
                _ => {}
            }
        }
        self.effects(insn, st, me);
    }

    /// The general rule: what the instruction info says it writes.
    fn effects(&mut self, insn: &Instruction, st: &mut State, me: &Culprit) {
        if insn.rflags_modified() != 0 {
            Outcome::note(&mut st.out.flags, me);
        }
        let info = self.info.info(insn);
        for r in info.used_registers() {
            if !is_write(r.access()) {
                continue;
            }
            let reg = r.register();
            if reg.full_register() == Register::RSP {
                // Implicit stack pointer updates of push/pop-like instructions count as stack
                // use; anything else moves the stack pointer where we cannot follow.
                Outcome::note(&mut st.out.stack, me);
                if !matches!(
                    insn.mnemonic(),
                    Mnemonic::Push | Mnemonic::Pop | Mnemonic::Pushfq | Mnemonic::Popfq
                ) {
                    st.lost_stack = true;
                    Outcome::note(&mut st.out.unbalanced, me);
                } else {
                    st.sp += if matches!(insn.mnemonic(), Mnemonic::Push | Mnemonic::Pushfq) {
                        -8
                    } else {
                        8
                    };
                }
                continue;
            }
            if let Some(s) = slot_of(reg) {
                st.write(s, None, me);
            }
        }
        for m in info.used_memory() {
            let on_stack = m.base().full_register() == Register::RSP;
            if on_stack {
                Outcome::note(&mut st.out.stack, me);
                continue;
            }
            match m.access() {
                OpAccess::Read | OpAccess::CondRead => Outcome::note(&mut st.out.memory_read, me),
                a if is_write(a) => {
                    Outcome::note(&mut st.out.memory_write, me);
                    if matches!(a, OpAccess::ReadWrite | OpAccess::ReadCondWrite) {
                        Outcome::note(&mut st.out.memory_read, me);
                    }
                }
                _ => {}
            }
        }
    }
}

fn is_write(a: OpAccess) -> bool {
    matches!(
        a,
        OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
}

/// Moves that copy a value unchanged (so a save and a restore can be matched).
fn is_plain_move(insn: &Instruction) -> bool {
    matches!(
        insn.mnemonic(),
        Mnemonic::Mov
            | Mnemonic::Movdqu
            | Mnemonic::Movdqa
            | Mnemonic::Movups
            | Mnemonic::Movaps
            | Mnemonic::Vmovdqu
            | Mnemonic::Vmovdqa
            | Mnemonic::Vmovups
            | Mnemonic::Vmovaps
            | Mnemonic::Vmovdqu64
            | Mnemonic::Vmovdqu32
            | Mnemonic::Vmovdqa64
            | Mnemonic::Kmovw
            | Mnemonic::Kmovq
            | Mnemonic::Kmovd
            | Mnemonic::Kmovb
    ) && !matches!(insn.code(), Code::INVALID)
}

/// A variant of a site, to run.
enum Variant {
    /// Code copied to (or already at) the site.
    Code { name: String, addr: u64, len: u64 },
    /// A direct call the site becomes.
    Call { name: String, target: u64 },
}

/// The name of each site, from `alt_site_names` (the `&'static str`s it points at, read through
/// the dynamic relocations of a position-independent executable).
fn site_names(obj: &Object<'_>) -> HashMap<u64, String> {
    let relative = relative_relocations(obj);
    let read_u64 = |addr: u64| -> Option<u64> {
        if let Some(v) = relative.get(&addr) {
            return Some(*v);
        }
        let b = code_at(obj, addr, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    };
    let mut out = HashMap::new();
    for (i, h) in obj.section_headers() {
        if obj.section_name(i) != "alt_site_names" || h.sh_type(LE) == elf::SHT_NOBITS {
            continue;
        }
        let Ok(data) = obj.section_data(i) else {
            continue;
        };
        let base = h.sh_addr(LE);
        for (n, chunk) in data.chunks_exact(8).enumerate() {
            let target = i32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let name = i32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
            if target == 0 && name == 0 {
                continue;
            }
            let at = base + (n * 8) as u64;
            let site = alt_runtime::table::resolve(at, target);
            let str_addr = alt_runtime::table::resolve(at + 4, name);
            let text = read_u64(str_addr)
                .zip(read_u64(str_addr + 8))
                .and_then(|(p, l)| {
                    let b = code_at(obj, p, l.min(512))?;
                    String::from_utf8(b.to_vec()).ok()
                });
            if let Some(t) = text {
                out.insert(site, t);
            }
        }
    }
    out
}

/// `R_X86_64_RELATIVE` relocations: address -> value.
fn relative_relocations(obj: &Object<'_>) -> HashMap<u64, u64> {
    let mut out = HashMap::new();
    for (i, h) in obj.section_headers() {
        if h.sh_type(LE) != elf::SHT_RELA || h.sh_flags(LE) & u64::from(elf::SHF_ALLOC) == 0 {
            continue;
        }
        let Ok(data) = obj.section_data(i) else {
            continue;
        };
        for r in data.chunks_exact(24) {
            let offset = u64::from_le_bytes(r[0..8].try_into().unwrap_or_default());
            let info = u64::from_le_bytes(r[8..16].try_into().unwrap_or_default());
            let addend = i64::from_le_bytes(r[16..24].try_into().unwrap_or_default());
            if info & 0xffff_ffff == u64::from(elf::R_X86_64_RELATIVE) {
                out.insert(offset, addend as u64);
            }
        }
    }
    out
}

/// Checks every variant of every site against what the site declares.
pub fn check(obj: &Object<'_>, tables: &Tables) -> EffectsReport {
    let mut record_problems = Vec::new();
    let decls = declarations(obj, &mut record_problems);
    let names = site_names(obj);
    let mut report = EffectsReport::default();

    // Every site: address -> (length, description, variants).
    let mut sites: BTreeMap<u64, (u64, String, Vec<Variant>, bool)> = BTreeMap::new();
    for a in &tables.alt {
        let e = sites.entry(a.site).or_insert_with(|| {
            let name = names
                .get(&a.site)
                .cloned()
                .unwrap_or_else(|| format!("site at {:#x}", a.site));
            (u64::from(a.site_len), name, Vec::new(), false)
        });
        let cond = format!(
            "{}{}",
            if a.not { "!" } else { "" },
            a.capability.unwrap_or("?")
        );
        e.2.push(if a.direct_call {
            Variant::Call {
                name: format!(
                    "alt_instr[{}] ({cond} => call {:#x})",
                    a.index, a.replacement
                ),
                target: a.replacement,
            }
        } else {
            Variant::Code {
                name: format!("alt_instr[{}] ({cond} => inline)", a.index),
                addr: a.replacement,
                len: u64::from(a.replacement_len),
            }
        });
    }
    for p in &tables.pv {
        sites.entry(p.site).or_insert_with(|| {
            (
                u64::from(p.site_len),
                format!("{PV_SECTION_PREFIX}{} op {}", p.table, p.op),
                Vec::new(),
                true,
            )
        });
    }

    for (site, (len, name, mut variants, paravirt)) in sites {
        let Some(decl) = decls.get(&site) else {
            report.sites_without_record += 1;
            continue;
        };
        report.sites_checked += 1;
        variants.insert(
            0,
            Variant::Code {
                name: "default".into(),
                addr: site,
                len,
            },
        );
        for &(addr, l) in &decl.inline_variants {
            variants.push(Variant::Code {
                name: "paravirt native inline sequence".into(),
                addr,
                len: u64::from(l),
            });
        }
        for &target in &decl.call_variants {
            variants.push(Variant::Call {
                name: format!("paravirt call through the thunk at {target:#x}"),
                target,
            });
        }
        let mut runner = Runner {
            obj,
            info: InstructionInfoFactory::new(),
            indirect_is_checked: paravirt && !decl.call_variants.is_empty(),
            jump_targets: decl.jump_targets.clone(),
        };
        for v in &variants {
            let (vname, outcome) = match v {
                Variant::Code { name, addr, len } => match code_at(obj, *addr, *len) {
                    Some(bytes) if bytes.len() as u64 == *len => {
                        (name, runner.run(bytes, *addr, false, 0))
                    }
                    _ => continue, // `verify` reports code outside the file.
                },
                Variant::Call { name, target } => {
                    let by = Culprit::plain(site, format!("call {target:#x}"));
                    let inner = runner.callee(*target, &by, 1);
                    let mut st = State::new();
                    st.apply(&inner, &by);
                    (name, st.finish(&by))
                }
            };
            judge(
                &mut report.problems,
                site,
                &name.clone(),
                vname,
                decl,
                &outcome,
            );
        }
    }
    for p in record_problems {
        report.problems.push(EffectsProblem {
            site: 0,
            function: SITE_EFFECTS_SECTION.into(),
            variant: String::new(),
            address: 0,
            instruction: String::new(),
            changes: "record".into(),
            reason: p,
        });
    }
    report
}

/// Compares what a variant does with what its site declares.
fn judge(
    problems: &mut Vec<EffectsProblem>,
    site: u64,
    function: &str,
    variant: &str,
    decl: &Declaration,
    out: &Outcome,
) {
    let mut push = |c: &Culprit, changes: String, reason: String| {
        problems.push(EffectsProblem {
            site,
            function: function.to_string(),
            variant: variant.to_string(),
            address: c.address,
            instruction: c.describe(),
            changes,
            reason,
        })
    };
    let declared: Vec<&str> = (0..16)
        .filter(|i| decl.gprs & (1 << i) != 0)
        .map(|i| GPR_NAMES[i])
        .collect();
    let mut vectors_reported = false;
    for (&slot, c) in &out.changed {
        if slot < 16 {
            if decl.gprs & (1 << slot) == 0 {
                push(
                    c,
                    GPR_NAMES[slot].to_string(),
                    format!(
                        "the site declares only {} changed; add `{}` to `clobber(...)` (or the operation's `clobbers`), or save and restore it",
                        if declared.is_empty() { "no register".to_string() } else { declared.join(", ") },
                        GPR_NAMES[slot]
                    ),
                );
            }
        } else if !decl.effects.contains(Effects::VECTORS) && !vectors_reported {
            vectors_reported = true;
            push(
                c,
                slot_name(slot),
                "the site promises the vector registers unchanged (`preserve_vectors`, or a paravirt operation with a register list)".into(),
            );
        }
    }
    if let Some(c) = &out.flags {
        if !decl.effects.contains(Effects::FLAGS) {
            push(
                c,
                "flags".into(),
                "the site is declared `preserves_flags`".into(),
            );
        }
    }
    if let Some(c) = &out.memory_write {
        if !decl.effects.contains(Effects::MEMORY_WRITE) {
            push(
                c,
                "memory".into(),
                "a store in a site declared not to write memory (`nomem` or `readonly`)".into(),
            );
        }
    }
    if let Some(c) = &out.memory_read {
        if !decl.effects.contains(Effects::MEMORY_READ) {
            push(
                c,
                "memory".into(),
                "a load in a site declared not to touch memory (`nomem`)".into(),
            );
        }
    }
    if let Some(c) = &out.stack {
        if !decl.effects.contains(Effects::STACK) {
            push(
                c,
                "stack".into(),
                "the site is declared `nostack`: the compiler may keep data below the stack pointer".into(),
            );
        }
    }
    if let Some(c) = &out.unbalanced {
        push(
            c,
            "rsp".into(),
            "the stack pointer does not come back to its value at the site".into(),
        );
    }
}
