//! The table ABI: what the macros and `alt-tablegen` emit and what the runtime reads.
//!
//! This is the one definition of every on-disk layout. All multi-byte fields are little-endian
//! (x86-64 and AArch64 Linux are both little-endian).
//!
//! # Self-relative offsets
//!
//! Every address in a table is a signed 32-bit offset from the address of the field that holds
//! it, as the assembler writes `.long target - .`. Such entries need no run-time relocation,
//! work in PIE executables and in kernels linked at any address, and can be produced for objects
//! that are not linked yet (a relocation against the target's section plus offset, resolved by
//! the linker).
//!
//! # Alternative entry (12 bytes, [`AltEntry`])
//!
//! | offset | size | field             | meaning                                                       |
//! |--------|------|-------------------|---------------------------------------------------------------|
//! | 0      | 4    | `site`            | self-relative offset of the site's first byte                 |
//! | 4      | 4    | `replacement`     | self-relative offset of the replacement code, or of the call target when [`AltFlags::DIRECT_CALL`] |
//! | 8      | 2    | `key`             | bits 0..=11 capability id ([`crate::capability`]); bits 12..=15 [`AltFlags`] |
//! | 10     | 1    | `site_len`        | length of the site in bytes (default code plus NOP fill)     |
//! | 11     | 1    | `replacement_len` | length of the replacement code; 0 for a direct call          |
//!
//! An entry *holds* when its capability is present, or, with [`AltFlags::NOT`], when it is
//! absent.
//!
//! # Several entries for one site: the priority rule
//!
//! Entries whose `site` resolves to the same address describe alternatives for one site. They
//! must agree on `site_len`. **The first entry in table order that holds is applied; if none
//! holds, the site keeps its default code.** The macros emit a site's entries in the order the
//! replacements are written, so the order written is the priority order. (Linux applies every
//! matching entry in turn so that the last one wins; ours applies exactly one, which keeps a
//! site's final bytes a function of one entry and makes the report exact.)
//!
//! # Paravirt entry (8 bytes, [`PvEntry`])
//!
//! | offset | size | field      | meaning                                                   |
//! |--------|------|------------|-----------------------------------------------------------|
//! | 0      | 4    | `site`     | self-relative offset of the site's first byte             |
//! | 4      | 1    | `op`       | index of the operation in its operations table            |
//! | 5      | 1    | `site_len` | length of the site in bytes                               |
//! | 6      | 2    | `clobbers` | [`Clobbers`]: registers the site allows the operation to change |
//!
//! Each operations table has its own entry section, named [`PV_SECTION_PREFIX`] followed by the
//! table's name, so an entry's `op` is an index into that table.
//!
//! # Sections
//!
//! | section                          | holds                                    | flags |
//! |----------------------------------|------------------------------------------|-------|
//! | [`ALT_INSTR_SECTION`]            | [`AltEntry`] array, 4-byte aligned       | `aR`  |
//! | [`ALT_REPLACEMENT_SECTION`]      | replacement code, copied into sites      | `axR` |
//! | [`PV_SECTION_PREFIX`]`<table>`   | [`PvEntry`] array, 4-byte aligned        | `aR`  |
//! | [`SITE_EFFECTS_SECTION`]         | [`EffectsEntry`] array, 4-byte aligned: what each site declares it changes (read by `alt-tablegen verify`, not by the runtime) | `aR` |
//!
//! The names are C identifiers so that hosted linkers define `__start_<name>` and
//! `__stop_<name>`; kernels define the same symbols in their linker script (see
//! [`crate::linker`]). `R` (`SHF_GNU_RETAIN`) keeps the sections through `--gc-sections`.

use core::fmt;

/// Section of the alternative entries.
pub const ALT_INSTR_SECTION: &str = "alt_instr";
/// Section of the replacement code.
pub const ALT_REPLACEMENT_SECTION: &str = "alt_replacement";
/// Prefix of the paravirt entry sections; the operations table's name follows.
pub const PV_SECTION_PREFIX: &str = "alt_pv_";

/// Mask of the capability id in [`AltEntry::key`].
pub const KEY_CAPABILITY_MASK: u16 = 0x0fff;

bitflags::bitflags! {
    /// Flags of an alternative entry: bits 12..=15 of [`AltEntry::key`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct AltFlags: u16 {
        /// The entry holds when the capability is **absent** (Linux's `ALT_NOT`).
        const NOT = 1 << 15;
        /// The site becomes a direct `call rel32` to the target named by `replacement`; no
        /// replacement bytes are copied and `replacement_len` is 0.
        const DIRECT_CALL = 1 << 14;
    }
}

/// Flag bits that must be zero (reserved for later versions of the ABI).
pub const KEY_RESERVED_MASK: u16 = 0x3000;

/// One alternative: "at `site`, if capability `key` holds, use `replacement`".
///
/// See the [module documentation](self) for the layout and the priority rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(4))]
pub struct AltEntry {
    /// Self-relative offset of the site.
    pub site: i32,
    /// Self-relative offset of the replacement code (or call target).
    pub replacement: i32,
    /// Capability id and [`AltFlags`].
    pub key: u16,
    /// Site length in bytes.
    pub site_len: u8,
    /// Replacement length in bytes.
    pub replacement_len: u8,
}

/// Size of an [`AltEntry`] in a table.
pub const ALT_ENTRY_SIZE: usize = 12;
const _: () = assert!(core::mem::size_of::<AltEntry>() == ALT_ENTRY_SIZE);

impl AltEntry {
    /// The capability id (bits 0..=11 of `key`). Not checked against the known ids.
    pub const fn capability_id(&self) -> u16 {
        self.key & KEY_CAPABILITY_MASK
    }

    /// The flags (bits 12..=15 of `key`), including any reserved bits that are set.
    pub const fn flags(&self) -> AltFlags {
        AltFlags::from_bits_retain(self.key & !KEY_CAPABILITY_MASK)
    }

    /// Builds the `key` field.
    pub const fn make_key(capability_id: u16, flags: AltFlags) -> u16 {
        (capability_id & KEY_CAPABILITY_MASK) | flags.bits()
    }

    /// Address of the site, for an entry that lives at `entry_addr`.
    pub const fn site_addr(&self, entry_addr: u64) -> u64 {
        resolve(entry_addr, self.site)
    }

    /// Address of the replacement (or call target), for an entry that lives at `entry_addr`.
    pub const fn replacement_addr(&self, entry_addr: u64) -> u64 {
        resolve(entry_addr + 4, self.replacement)
    }

    /// Reads an entry from its 12 little-endian bytes.
    pub const fn from_bytes(b: &[u8; ALT_ENTRY_SIZE]) -> Self {
        Self {
            site: i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            replacement: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            key: u16::from_le_bytes([b[8], b[9]]),
            site_len: b[10],
            replacement_len: b[11],
        }
    }

    /// The entry's 12 little-endian bytes.
    pub fn to_bytes(&self) -> [u8; ALT_ENTRY_SIZE] {
        let mut b = [0; ALT_ENTRY_SIZE];
        b[0..4].copy_from_slice(&self.site.to_le_bytes());
        b[4..8].copy_from_slice(&self.replacement.to_le_bytes());
        b[8..10].copy_from_slice(&self.key.to_le_bytes());
        b[10] = self.site_len;
        b[11] = self.replacement_len;
        b
    }
}

bitflags::bitflags! {
    /// Registers a paravirt site allows its operation to change (its clobber set).
    ///
    /// The bits follow the System V x86-64 caller-saved registers. A site that calls through the
    /// operations table as an ordinary `extern "C"` call clobbers [`Clobbers::C_ABI`]; a site
    /// that promises the compiler more keeps its registers, and a backend function may then only
    /// be called through a register-saving thunk.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Clobbers: u16 {
        /// `rax` (also the result register).
        const RAX = 1 << 0;
        /// `rcx`.
        const RCX = 1 << 1;
        /// `rdx`.
        const RDX = 1 << 2;
        /// `rsi`.
        const RSI = 1 << 3;
        /// `rdi`.
        const RDI = 1 << 4;
        /// `r8`.
        const R8 = 1 << 5;
        /// `r9`.
        const R9 = 1 << 6;
        /// `r10`.
        const R10 = 1 << 7;
        /// `r11`.
        const R11 = 1 << 8;
        /// Every caller-saved vector register (`xmm`/`ymm`/`zmm` 0-15 and 16-31, `k` masks).
        const VECTOR = 1 << 9;
        /// Every register an `extern "C"` call may change.
        const C_ABI = 0x3ff;
    }
}

/// One paravirt call site: "at `site` is a call of operation `op`".
///
/// See the [module documentation](self) for the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(4))]
pub struct PvEntry {
    /// Self-relative offset of the site.
    pub site: i32,
    /// Operation index in the operations table.
    pub op: u8,
    /// Site length in bytes.
    pub site_len: u8,
    /// [`Clobbers`] bits.
    pub clobbers: u16,
}

/// Size of a [`PvEntry`] in a table.
pub const PV_ENTRY_SIZE: usize = 8;
const _: () = assert!(core::mem::size_of::<PvEntry>() == PV_ENTRY_SIZE);

impl PvEntry {
    /// Address of the site, for an entry that lives at `entry_addr`.
    pub const fn site_addr(&self, entry_addr: u64) -> u64 {
        resolve(entry_addr, self.site)
    }

    /// The clobber set, including any unknown bits.
    pub const fn clobber_set(&self) -> Clobbers {
        Clobbers::from_bits_retain(self.clobbers)
    }

    /// Reads an entry from its 8 little-endian bytes.
    pub const fn from_bytes(b: &[u8; PV_ENTRY_SIZE]) -> Self {
        Self {
            site: i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            op: b[4],
            site_len: b[5],
            clobbers: u16::from_le_bytes([b[6], b[7]]),
        }
    }

    /// The entry's 8 little-endian bytes.
    pub fn to_bytes(&self) -> [u8; PV_ENTRY_SIZE] {
        let mut b = [0; PV_ENTRY_SIZE];
        b[0..4].copy_from_slice(&self.site.to_le_bytes());
        b[4] = self.op;
        b[5] = self.site_len;
        b[6..8].copy_from_slice(&self.clobbers.to_le_bytes());
        b
    }
}

/// Section of the site-effects records ([`EffectsEntry`]).
pub const SITE_EFFECTS_SECTION: &str = "alt_site_effects";

/// Names of the general-purpose registers by hardware number, the bit numbering of
/// [`EffectsEntry::gprs`].
pub const GPR_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

bitflags::bitflags! {
    /// What else than general-purpose registers a site tells the compiler its code may change
    /// or use: the `asm!` options it was emitted without (`preserves_flags`, `nomem`,
    /// `readonly`, `nostack`) and whether it declares the vector registers clobbered.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Effects: u8 {
        /// The arithmetic flags may change (no `preserves_flags`).
        const FLAGS = 1 << 0;
        /// Memory may be read (no `nomem`).
        const MEMORY_READ = 1 << 1;
        /// Memory may be written (neither `nomem` nor `readonly`).
        const MEMORY_WRITE = 1 << 2;
        /// The stack may be used: pushes, calls (no `nostack`).
        const STACK = 1 << 3;
        /// Vector registers (`xmm`/`ymm`/`zmm`, `k` masks) may change.
        const VECTORS = 1 << 4;
    }
}

/// What an [`EffectsEntry`] adds besides the declaration it carries ([`EffectsEntry::kind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EffectsKind {
    /// Only the declaration; `code` is 0.
    Declaration = 0,
    /// `code..code + code_len` is a variant the alternative tables do not name (a paravirt
    /// operation's native inline sequence): it must keep the declaration too.
    InlineVariant = 1,
    /// `code` is a function a variant of the site calls (a paravirt thunk a backend is reached
    /// through): calling it must keep the declaration.
    CallVariant = 2,
    /// `code..code + code_len` is one register-to-register instruction that names the
    /// register the compiler chose for an output operand (`mov {out:r}, {out:r}`): that
    /// register is declared changed too. Never executed.
    OperandProbe = 3,
    /// `code` is where a variant of the site may jump to leave it: a label operand of the
    /// site's `asm!` block (`alt::has!`'s other arm). The compiler knows that edge, so a jump
    /// there ends the variant as reaching the site's end does, and the declaration is judged
    /// at that point.
    JumpTarget = 4,
}

impl EffectsKind {
    /// The kind of a raw `kind` byte.
    pub const fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Declaration),
            1 => Some(Self::InlineVariant),
            2 => Some(Self::CallVariant),
            3 => Some(Self::OperandProbe),
            4 => Some(Self::JumpTarget),
            _ => None,
        }
    }
}

/// What a site declares to the compiler it may change: the registers, flags, memory and stack
/// its code may touch. The macros emit at least one per site into [`SITE_EFFECTS_SECTION`]; a
/// site's records add up (bits OR'ed). The runtime does not read them: `alt-tablegen verify`
/// checks every variant of every site against them.
///
/// | offset | size | field      | meaning                                               |
/// |--------|------|------------|-------------------------------------------------------|
/// | 0      | 4    | `site`     | self-relative offset of the site's first byte         |
/// | 4      | 4    | `code`     | self-relative offset of the code `kind` names, or 0   |
/// | 8      | 2    | `gprs`     | general-purpose registers that may change, bit = hardware number ([`GPR_NAMES`]) |
/// | 10     | 1    | `effects`  | [`Effects`]                                           |
/// | 11     | 1    | `kind`     | [`EffectsKind`]                                       |
/// | 12     | 1    | `code_len` | length of the code at `code` (inline variant, probe)  |
/// | 13     | 3    | reserved   | zero                                                  |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(4))]
pub struct EffectsEntry {
    /// Self-relative offset of the site.
    pub site: i32,
    /// Self-relative offset of the code `kind` names, or 0.
    pub code: i32,
    /// General-purpose registers that may change.
    pub gprs: u16,
    /// [`Effects`] bits.
    pub effects: u8,
    /// [`EffectsKind`] as a byte.
    pub kind: u8,
    /// Length of the code at `code`.
    pub code_len: u8,
    /// Zero.
    pub reserved: [u8; 3],
}

/// Size of an [`EffectsEntry`] in a table.
pub const EFFECTS_ENTRY_SIZE: usize = 16;
const _: () = assert!(core::mem::size_of::<EffectsEntry>() == EFFECTS_ENTRY_SIZE);

impl EffectsEntry {
    /// Address of the site, for a record that lives at `entry_addr`.
    pub const fn site_addr(&self, entry_addr: u64) -> u64 {
        resolve(entry_addr, self.site)
    }

    /// Address of the code, for a record that lives at `entry_addr`.
    pub const fn code_addr(&self, entry_addr: u64) -> u64 {
        resolve(entry_addr + 4, self.code)
    }

    /// Reads a record from its 16 little-endian bytes.
    pub const fn from_bytes(b: &[u8; EFFECTS_ENTRY_SIZE]) -> Self {
        Self {
            site: i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            code: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            gprs: u16::from_le_bytes([b[8], b[9]]),
            effects: b[10],
            kind: b[11],
            code_len: b[12],
            reserved: [b[13], b[14], b[15]],
        }
    }
}

/// Resolves a self-relative field: the address of the field plus its value, wrapping as the
/// hardware does.
pub const fn resolve(field_addr: u64, value: i32) -> u64 {
    field_addr.wrapping_add(value as i64 as u64)
}

/// The value of a self-relative field at `field_addr` that points at `target`, or `None` if the
/// distance does not fit in 32 bits.
pub const fn relative(field_addr: u64, target: u64) -> Option<i32> {
    let d = target.wrapping_sub(field_addr) as i64;
    if d >= i32::MIN as i64 && d <= i32::MAX as i64 {
        Some(d as i32)
    } else {
        None
    }
}

impl fmt::Display for AltEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "site {:+#x} len {} replacement {:+#x} len {} capability {:#05x} flags {:?}",
            self.site,
            self.site_len,
            self.replacement,
            self.replacement_len,
            self.capability_id(),
            self.flags()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_documented_offsets() {
        let e = AltEntry {
            site: -0x10,
            replacement: 0x2000,
            key: AltEntry::make_key(0x04, AltFlags::NOT),
            site_len: 6,
            replacement_len: 5,
        };
        assert_eq!(
            e.to_bytes(),
            [0xf0, 0xff, 0xff, 0xff, 0x00, 0x20, 0, 0, 0x04, 0x80, 6, 5]
        );
        assert_eq!(AltEntry::from_bytes(&e.to_bytes()), e);
        assert_eq!(core::mem::offset_of!(AltEntry, replacement), 4);
        assert_eq!(core::mem::offset_of!(AltEntry, key), 8);
        assert_eq!(core::mem::offset_of!(AltEntry, site_len), 10);
        assert_eq!(core::mem::offset_of!(AltEntry, replacement_len), 11);

        let p = PvEntry {
            site: 8,
            op: 3,
            site_len: 7,
            clobbers: Clobbers::RAX.bits(),
        };
        assert_eq!(p.to_bytes(), [8, 0, 0, 0, 3, 7, 1, 0]);
        assert_eq!(PvEntry::from_bytes(&p.to_bytes()), p);
        assert_eq!(core::mem::offset_of!(PvEntry, clobbers), 6);
    }

    #[test]
    fn effects_record_matches_the_documented_offsets() {
        let b = [
            0xf0, 0xff, 0xff, 0xff, 0x10, 0, 0, 0, 0x07, 0x00, 0x1f, 3, 3, 0, 0, 0,
        ];
        let e = EffectsEntry::from_bytes(&b);
        assert_eq!(e.site_addr(0x1000), 0xff0);
        assert_eq!(e.code_addr(0x1000), 0x1014);
        assert_eq!(e.gprs, 0b111, "rax, rcx, rdx");
        assert_eq!(Effects::from_bits(e.effects), Some(Effects::all()));
        assert_eq!(
            EffectsKind::from_u8(e.kind),
            Some(EffectsKind::OperandProbe)
        );
        assert_eq!(e.code_len, 3);
        assert_eq!(core::mem::offset_of!(EffectsEntry, gprs), 8);
        assert_eq!(core::mem::offset_of!(EffectsEntry, kind), 11);
        assert_eq!(core::mem::offset_of!(EffectsEntry, code_len), 12);
        assert_eq!(GPR_NAMES[7], "rdi");
    }

    #[test]
    fn offsets_are_relative_to_their_own_field() {
        let e = AltEntry {
            site: -0x100,
            replacement: 0x100,
            key: 0,
            site_len: 5,
            replacement_len: 0,
        };
        assert_eq!(e.site_addr(0x1000), 0xf00);
        assert_eq!(e.replacement_addr(0x1000), 0x1104);
        assert_eq!(relative(0x1000, 0xf00), Some(-0x100));
        assert_eq!(relative(0, 0x8000_0000), None);
        assert_eq!(relative(0x8000_0000, 0), Some(i32::MIN));
    }

    #[test]
    fn key_splits_into_capability_and_flags() {
        let key = AltEntry::make_key(0x41, AltFlags::DIRECT_CALL | AltFlags::NOT);
        let e = AltEntry {
            site: 0,
            replacement: 0,
            key,
            site_len: 5,
            replacement_len: 0,
        };
        assert_eq!(e.capability_id(), 0x41);
        assert_eq!(e.flags(), AltFlags::DIRECT_CALL | AltFlags::NOT);
        assert_eq!(key & KEY_RESERVED_MASK, 0);
    }
}
