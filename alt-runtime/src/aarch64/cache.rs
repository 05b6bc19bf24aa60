//! The cache maintenance an AArch64 CPU needs after instructions were written as data, described
//! as data.
//!
//! On AArch64 the instruction fetch path is not required to see stores: the new instructions may
//! sit in the data cache while the instruction cache still holds the old ones. The Arm
//! Architecture Reference Manual's rule for making a write to instruction memory visible to
//! instruction fetch (the "Instruction cache maintenance" and "Concurrent modification and
//! execution of instructions" sections) is, for every cache line written:
//!
//! ```text
//!     DC CVAU, Xt      // clean the data cache line to the Point of Unification
//!     DSB ISH          // ... and wait until that is complete, everywhere in the Inner Shareable domain
//!     IC IVAU, Xt      // invalidate the instruction cache line to the Point of Unification
//!     DSB ISH          // ... and wait until that is complete
//!     ISB              // then discard anything this CPU already fetched
//! ```
//!
//! Two bits of `CTR_EL0` relax it (Linux's `caches_clean_inval_pou` does the same):
//!
//! - `IDC` (bit 28) = 1: data cache clean to the PoU is not required for instruction-to-data
//!   coherence, so the `DC CVAU` loop is dropped; the `DSB ISH` that makes the stores complete
//!   stays.
//! - `DIC` (bit 29) = 1: instruction cache invalidation to the PoU is not required, so the
//!   `IC IVAU` loop and its `DSB` are dropped; the first `DSB ISH` and the `ISB` stay.
//!
//! Line sizes come from `CTR_EL0.DminLine` (bits 19:16) and `CTR_EL0.IminLine` (bits 3:0), each
//! the log2 of the number of 4-byte words in the smallest line of that kind of cache in the
//! system. The range is widened to whole lines.
//!
//! [`sync_sequence`] returns the ordered steps as a small fixed-capacity [`CacheSequence`]: a
//! per-line loop is one [`CacheOp`] covering the rounded range with its line size, and
//! [`lines`] yields its line addresses. The `encode_*` functions give the instruction words, so a
//! future AArch64 backend can emit or check them and host tests can assert them.
//!
//! # Other CPUs
//!
//! `DC CVAU` and `IC IVAU` are broadcast to the Inner Shareable domain, so after the patching
//! CPU's sequence no cache in the system holds stale lines. But every *other* CPU may still have
//! old instructions in its pipeline or prefetch buffers, and the `ISB` in the sequence only
//! synchronises the CPU that executes it. Each other CPU must therefore execute its own `ISB`
//! (a context synchronisation event) after the patching CPU has finished the sequence and before
//! it runs patched code. The patching rendezvous does exactly that: the others wait, the patching
//! CPU writes and runs this sequence, then releases them and each executes `ISB`.
//!
//! ```
//! use alt_runtime::aarch64::cache::{sync_sequence, CacheOp, Domain};
//!
//! // DminLine = IminLine = 4 (64-byte lines), IDC = DIC = 0.
//! let ctr_el0 = (4 << 16) | 4;
//! let seq = sync_sequence(ctr_el0, 0x1038, 16);
//! assert_eq!(
//!     seq.ops(),
//!     &[
//!         CacheOp::CleanDcacheToPoU { addr: 0x1000, len: 0x80, line: 64 },
//!         CacheOp::Dsb(Domain::Ish),
//!         CacheOp::InvalidateIcacheToPoU { addr: 0x1000, len: 0x80, line: 64 },
//!         CacheOp::Dsb(Domain::Ish),
//!         CacheOp::Isb,
//!     ]
//! );
//! ```

/// `CTR_EL0.IminLine`: bits 3:0.
const CTR_IMINLINE_SHIFT: u32 = 0;
/// `CTR_EL0.DminLine`: bits 19:16.
const CTR_DMINLINE_SHIFT: u32 = 16;
/// `CTR_EL0.IDC`: bit 28.
pub const CTR_EL0_IDC: u64 = 1 << 28;
/// `CTR_EL0.DIC`: bit 29.
pub const CTR_EL0_DIC: u64 = 1 << 29;

/// The shareability domain and access types a `DSB` waits for (its `CRm` option field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Domain {
    /// `ISH`: Inner Shareable, reads and writes. What instruction patching needs.
    Ish,
    /// `ISHST`: Inner Shareable, writes only.
    IshSt,
    /// `SY`: full system, reads and writes.
    Sy,
}

impl Domain {
    /// The 4-bit `CRm` option value of `DSB <option>`.
    pub const fn option(self) -> u32 {
        match self {
            Domain::Ish => 0b1011,
            Domain::IshSt => 0b1010,
            Domain::Sy => 0b1111,
        }
    }
}

/// One step of a cache maintenance sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheOp {
    /// `DC CVAU, Xt` for every data cache line in `[addr, addr + len)`.
    CleanDcacheToPoU {
        /// First line address (a multiple of `line`).
        addr: u64,
        /// Length in bytes (a multiple of `line`).
        len: u64,
        /// Line size in bytes.
        line: u64,
    },
    /// `DSB <domain>`: wait until earlier maintenance and stores are complete.
    Dsb(Domain),
    /// `IC IVAU, Xt` for every instruction cache line in `[addr, addr + len)`.
    InvalidateIcacheToPoU {
        /// First line address (a multiple of `line`).
        addr: u64,
        /// Length in bytes (a multiple of `line`).
        len: u64,
        /// Line size in bytes.
        line: u64,
    },
    /// `ISB`: context synchronisation of the executing CPU.
    Isb,
}

impl CacheOp {
    /// The line addresses a per-line operation touches, in ascending order; nothing for `DSB`
    /// and `ISB`. Same as [`lines`].
    pub fn lines(&self) -> Lines {
        lines(self)
    }
}

/// Iterator over the line addresses of a per-line [`CacheOp`]; see [`lines`].
#[derive(Clone, Debug)]
pub struct Lines {
    next: u64,
    line: u64,
    remaining: u64,
}

impl Iterator for Lines {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.remaining == 0 {
            return None;
        }
        let addr = self.next;
        self.remaining -= 1;
        self.next = self.next.wrapping_add(self.line);
        Some(addr)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        (n, usize::try_from(self.remaining).ok())
    }
}

/// The line addresses a per-line operation touches (`addr`, `addr + line`, ... below
/// `addr + len`); an empty iterator for `DSB` and `ISB`.
///
/// ```
/// use alt_runtime::aarch64::cache::{lines, CacheOp};
///
/// let op = CacheOp::CleanDcacheToPoU { addr: 0x1000, len: 0x80, line: 64 };
/// assert!(lines(&op).eq([0x1000, 0x1040]));
/// ```
pub fn lines(op: &CacheOp) -> Lines {
    match *op {
        CacheOp::CleanDcacheToPoU { addr, len, line }
        | CacheOp::InvalidateIcacheToPoU { addr, len, line } => Lines {
            next: addr,
            line,
            remaining: len.checked_div(line).unwrap_or(0),
        },
        CacheOp::Dsb(_) | CacheOp::Isb => Lines {
            next: 0,
            line: 0,
            remaining: 0,
        },
    }
}

/// Most steps a [`CacheSequence`] can hold.
pub const MAX_CACHE_OPS: usize = 6;

/// An ordered sequence of at most [`MAX_CACHE_OPS`] cache maintenance steps, without allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheSequence {
    ops: [CacheOp; MAX_CACHE_OPS],
    len: usize,
}

impl CacheSequence {
    /// An empty sequence.
    pub const fn new() -> Self {
        CacheSequence {
            ops: [CacheOp::Isb; MAX_CACHE_OPS],
            len: 0,
        }
    }

    /// Appends a step; a sequence that is already full is left unchanged and `false` returned.
    fn push(&mut self, op: CacheOp) -> bool {
        match self.ops.get_mut(self.len) {
            Some(slot) => {
                *slot = op;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// The steps, in the order they must be executed.
    pub fn ops(&self) -> &[CacheOp] {
        self.ops.get(..self.len).unwrap_or(&[])
    }

    /// Iterates over the steps in order.
    pub fn iter(&self) -> core::slice::Iter<'_, CacheOp> {
        self.ops().iter()
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no steps (nothing was written).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for CacheSequence {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> IntoIterator for &'a CacheSequence {
    type Item = &'a CacheOp;
    type IntoIter = core::slice::Iter<'a, CacheOp>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Line size in bytes from a 4-bit `CTR_EL0` field holding log2(words per line).
const fn line_bytes(ctr_el0: u64, shift: u32) -> u64 {
    4 << ((ctr_el0 >> shift) & 0xf)
}

/// `[addr, addr + len)` widened to whole lines of `line` bytes (a power of two), as
/// `(first line, length)`. A range running past the top of the address space is cut at it.
fn round_to_lines(addr: u64, len: u64, line: u64) -> (u64, u64) {
    let mask = line - 1;
    let start = addr & !mask;
    let end = (addr as u128 + len as u128).min(1u128 << 64);
    let end = (end + mask as u128) & !(mask as u128);
    // Only a range covering the whole address space has a length of 2^64; cut it by one line.
    let rounded = u64::try_from(end - start as u128).unwrap_or(!mask);
    (start, rounded)
}

/// The maintenance that makes `len` bytes of instructions just written at `addr` visible to
/// instruction fetch on this CPU, for a system whose `CTR_EL0` reads `ctr_el0`.
///
/// | IDC | DIC | sequence                                                      |
/// |-----|-----|---------------------------------------------------------------|
/// | 0   | 0   | `DC CVAU`* , `DSB ISH`, `IC IVAU`*, `DSB ISH`, `ISB`          |
/// | 1   | 0   | `DSB ISH`, `IC IVAU`*, `DSB ISH`, `ISB`                       |
/// | 0   | 1   | `DC CVAU`*, `DSB ISH`, `ISB`                                  |
/// | 1   | 1   | `DSB ISH`, `ISB`                                              |
///
/// (* one per line over the range rounded out to `DminLine` / `IminLine` lines.) An empty
/// range (`len == 0`) needs no maintenance and gives an empty sequence. Other CPUs still need
/// their own `ISB` afterwards; see the [module documentation](self).
///
/// `ctr_el0` should be the *system-wide* value (the smallest line sizes and the weakest
/// `IDC`/`DIC` over all CPUs), as Linux's sanitised `CTR_EL0` is.
pub fn sync_sequence(ctr_el0: u64, addr: u64, len: u64) -> CacheSequence {
    let mut seq = CacheSequence::new();
    if len == 0 {
        return seq;
    }
    // At most five steps are pushed into six slots, so no push below can fail.
    if ctr_el0 & CTR_EL0_IDC == 0 {
        let line = line_bytes(ctr_el0, CTR_DMINLINE_SHIFT);
        let (addr, len) = round_to_lines(addr, len, line);
        seq.push(CacheOp::CleanDcacheToPoU { addr, len, line });
    }
    seq.push(CacheOp::Dsb(Domain::Ish));
    if ctr_el0 & CTR_EL0_DIC == 0 {
        let line = line_bytes(ctr_el0, CTR_IMINLINE_SHIFT);
        let (addr, len) = round_to_lines(addr, len, line);
        seq.push(CacheOp::InvalidateIcacheToPoU { addr, len, line });
        seq.push(CacheOp::Dsb(Domain::Ish));
    }
    seq.push(CacheOp::Isb);
    seq
}

/// `SYS #op1, Cn, Cm, #op2, Xt`: `1101010100 0 01 op1 CRn CRm op2 Rt`.
const fn sys(op1: u32, crn: u32, crm: u32, op2: u32, rt: u32) -> u32 {
    0xd508_0000 | (op1 << 16) | (crn << 12) | (crm << 8) | (op2 << 5) | rt
}

/// `DC CVAU, Xt` (`SYS #3, C7, C11, #1, Xt`): clean data cache line by VA to the PoU.
/// `None` if `rt` is not a register number (0..=31).
///
/// ```
/// assert_eq!(alt_runtime::aarch64::cache::encode_dc_cvau(0), Some(0xd50b_7b20));
/// ```
pub const fn encode_dc_cvau(rt: u8) -> Option<u32> {
    if rt > 31 {
        None
    } else {
        Some(sys(3, 7, 11, 1, rt as u32))
    }
}

/// `IC IVAU, Xt` (`SYS #3, C7, C5, #1, Xt`): invalidate instruction cache line by VA to the PoU.
/// `None` if `rt` is not a register number (0..=31).
///
/// ```
/// assert_eq!(alt_runtime::aarch64::cache::encode_ic_ivau(0), Some(0xd50b_7520));
/// ```
pub const fn encode_ic_ivau(rt: u8) -> Option<u32> {
    if rt > 31 {
        None
    } else {
        Some(sys(3, 7, 5, 1, rt as u32))
    }
}

/// `DSB <option>`: `11010101000000110011 CRm 1 00 11111`.
///
/// ```
/// use alt_runtime::aarch64::cache::{encode_dsb, Domain};
/// assert_eq!(encode_dsb(Domain::Ish), 0xd503_3b9f);
/// ```
pub const fn encode_dsb(domain: Domain) -> u32 {
    0xd503_309f | (domain.option() << 8)
}

/// `ISB` (`ISB SY`): `11010101000000110011 1111 1 10 11111`.
///
/// ```
/// assert_eq!(alt_runtime::aarch64::cache::encode_isb(), 0xd503_3fdf);
/// ```
pub const fn encode_isb() -> u32 {
    0xd503_30df | (0b1111 << 8)
}

/// The instruction word of a step, with the line address in `Xrt` for the per-line steps
/// (`DC CVAU`, `IC IVAU`). `None` if `rt` is not a register number (0..=31).
pub const fn encode(op: &CacheOp, rt: u8) -> Option<u32> {
    match op {
        CacheOp::CleanDcacheToPoU { .. } => encode_dc_cvau(rt),
        CacheOp::InvalidateIcacheToPoU { .. } => encode_ic_ivau(rt),
        CacheOp::Dsb(domain) => Some(encode_dsb(*domain)),
        CacheOp::Isb => Some(encode_isb()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CTR_EL0 with the given line fields (log2 words) and flags; bit 31 is RES1.
    fn ctr(dmin: u64, imin: u64, idc: bool, dic: bool) -> u64 {
        (1 << 31)
            | (dmin << 16)
            | imin
            | if idc { CTR_EL0_IDC } else { 0 }
            | if dic { CTR_EL0_DIC } else { 0 }
    }

    const DSB: CacheOp = CacheOp::Dsb(Domain::Ish);

    #[test]
    fn neither_idc_nor_dic_cleans_and_invalidates() {
        // 64-byte D lines, 32-byte I lines; 8 bytes straddling a 64-byte boundary.
        let seq = sync_sequence(ctr(4, 3, false, false), 0x403c, 8);
        assert_eq!(
            seq.ops(),
            &[
                CacheOp::CleanDcacheToPoU {
                    addr: 0x4000,
                    len: 0x80,
                    line: 64
                },
                DSB,
                CacheOp::InvalidateIcacheToPoU {
                    addr: 0x4020,
                    len: 0x40,
                    line: 32
                },
                DSB,
                CacheOp::Isb,
            ]
        );
    }

    #[test]
    fn idc_replaces_clean_with_dsb() {
        let seq = sync_sequence(ctr(4, 4, true, false), 0x1000, 4);
        assert_eq!(
            seq.ops(),
            &[
                DSB,
                CacheOp::InvalidateIcacheToPoU {
                    addr: 0x1000,
                    len: 64,
                    line: 64
                },
                DSB,
                CacheOp::Isb,
            ]
        );
    }

    #[test]
    fn dic_skips_invalidate_but_keeps_dsb_and_isb() {
        let seq = sync_sequence(ctr(4, 4, false, true), 0x1000, 4);
        assert_eq!(
            seq.ops(),
            &[
                CacheOp::CleanDcacheToPoU {
                    addr: 0x1000,
                    len: 64,
                    line: 64
                },
                DSB,
                CacheOp::Isb
            ]
        );
    }

    #[test]
    fn idc_and_dic_leave_dsb_then_isb() {
        let seq = sync_sequence(ctr(4, 4, true, true), 0x1000, 4);
        assert_eq!(seq.ops(), &[DSB, CacheOp::Isb]);
        assert_eq!(seq.len(), 2);
    }

    #[test]
    fn range_is_rounded_to_lines() {
        // 16-byte lines (DminLine = 2); [0x1007, 0x1007 + 0x20) touches 0x1000..0x1030.
        let seq = sync_sequence(ctr(2, 2, false, false), 0x1007, 0x20);
        let first = seq.ops()[0];
        assert_eq!(
            first,
            CacheOp::CleanDcacheToPoU {
                addr: 0x1000,
                len: 0x30,
                line: 16
            }
        );
        assert!(lines(&first).eq([0x1000, 0x1010, 0x1020]));
        // An aligned range is not widened.
        let seq = sync_sequence(ctr(4, 4, false, false), 0x2000, 0x80);
        assert!(seq.ops()[2].lines().eq([0x2000, 0x2040]));
        // The smallest line (DminLine = 0) is one word.
        let seq = sync_sequence(ctr(0, 0, false, false), 0x2002, 4);
        assert!(seq.ops()[0].lines().eq([0x2000, 0x2004]));
    }

    #[test]
    fn empty_range_needs_nothing() {
        assert!(sync_sequence(ctr(4, 4, false, false), 0x1000, 0).is_empty());
    }

    #[test]
    fn range_at_top_of_address_space_does_not_overflow() {
        let seq = sync_sequence(ctr(4, 4, false, false), u64::MAX - 3, 100);
        let op = seq.ops()[0];
        assert_eq!(
            op,
            CacheOp::CleanDcacheToPoU {
                addr: u64::MAX - 63,
                len: 64,
                line: 64
            }
        );
        assert!(op.lines().eq([u64::MAX - 63]));
    }

    #[test]
    fn dsb_and_isb_have_no_lines() {
        assert_eq!(lines(&DSB).count(), 0);
        assert_eq!(lines(&CacheOp::Isb).count(), 0);
    }

    #[test]
    fn encodings_match_the_manual() {
        assert_eq!(encode_isb(), 0xd503_3fdf);
        assert_eq!(encode_dsb(Domain::Ish), 0xd503_3b9f);
        assert_eq!(encode_dsb(Domain::IshSt), 0xd503_3a9f);
        assert_eq!(encode_dsb(Domain::Sy), 0xd503_3f9f);
        // dc cvau, x3 / ic ivau, x17
        assert_eq!(encode_dc_cvau(3), Some(0xd50b_7b23));
        assert_eq!(encode_ic_ivau(17), Some(0xd50b_7531));
        assert_eq!(encode_dc_cvau(32), None);
        assert_eq!(encode_ic_ivau(255), None);
        let seq = sync_sequence(ctr(4, 4, false, false), 0, 4);
        let words: [Option<u32>; 5] = core::array::from_fn(|i| encode(&seq.ops()[i], 0));
        assert_eq!(
            words,
            [
                Some(0xd50b_7b20),
                Some(0xd503_3b9f),
                Some(0xd50b_7520),
                Some(0xd503_3b9f),
                Some(0xd503_3fdf)
            ]
        );
    }
}
