//! One encoder per choice: what a valid paravirt site becomes.
//!
//! Every encoder returns the site's new bytes, NOP-filled to the site's length with an
//! instruction boundary kept where the site's call returns ([`ValidSite::return_offset`]), so
//! that a thread inside the operation while the site changes returns to a whole instruction.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::validate::{PvErrorKind, ValidSite};
use super::{PvDecision, SiteForm, RET, UD2, XOR_EAX};
use crate::isa::{fill_keeping, Isa, Offsets, X86_64};
use crate::memory::Memory;
use crate::table::Clobbers;
use crate::x86_64::relocate;

/// A site's new bytes and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// The bytes, as long as the site.
    pub bytes: Vec<u8>,
    /// What the site became.
    pub decision: PvDecision,
    /// Why, for people.
    pub why: String,
}

fn returns_of(site: &ValidSite) -> Offsets {
    let mut keep = Offsets::EMPTY;
    if let Some(r) = site.return_offset() {
        keep.insert(r);
    }
    keep
}

/// `placed` at the site's start, then NOPs keeping the return boundary.
fn fill(site: &ValidSite, placed: &[u8]) -> Vec<u8> {
    let mut new = vec![0; site.original.len()];
    new[..placed.len()].copy_from_slice(placed);
    fill_keeping::<X86_64>(&mut new, placed.len(), returns_of(site));
    new
}

fn is_tail(site: &ValidSite) -> bool {
    site.form == SiteForm::JmpRip
}

/// The operation's native inline sequence (at `seq`, `len` bytes, clobbering `clobbers`),
/// relocated to the site; a tail-call site gets a `ret` after it. `Ok(Err(reason))` when the
/// sequence cannot be used here, so the caller calls the native function instead.
pub fn inline<M: Memory>(
    site: &ValidSite,
    seq: Option<(u64, u8)>,
    clobbers: Clobbers,
    mem: &M,
) -> Result<Result<Encoded, &'static str>, PvErrorKind> {
    let len = site.original.len();
    let room = if is_tail(site) { len - 1 } else { len };
    let (addr, n) = match seq {
        None => return Ok(Err("native, no inline sequence")),
        Some((_, n)) if usize::from(n) > room => {
            return Ok(Err("native, the inline sequence does not fit the site"))
        }
        Some(_) if !site.allows.contains(clobbers) => {
            return Ok(Err(
                "native, the inline sequence clobbers more than the site allows",
            ))
        }
        Some(seq) => seq,
    };
    let mut src = vec![0; usize::from(n)];
    mem.read(addr, &mut src).map_err(PvErrorKind::Unreadable)?;
    let shape = crate::x86_64::insn::instructions(&src).try_fold(Offsets::EMPTY, |mut b, i| {
        let (at, _) = i.map_err(|e| {
            PvErrorKind::Relocation(relocate::RelocError {
                offset: e.offset,
                kind: relocate::RelocErrorKind::Decode(e),
            })
        })?;
        b.insert(at);
        Ok(b)
    })?;
    if let Some(r) = site.return_offset() {
        if r < src.len() && !shape.contains(r) {
            return Ok(Err(
                "native, the inline sequence would cross the offset the site's call returns to",
            ));
        }
    }
    let mut out = vec![0; src.len()];
    relocate::relocate(&src, addr, site.site.start, &mut out).map_err(PvErrorKind::Relocation)?;
    if is_tail(site) {
        out.push(RET);
    }
    Ok(Ok(Encoded {
        bytes: fill(site, &out),
        decision: PvDecision::Inline,
        why: format!("native, inline sequence of {n} bytes fits the {len}-byte site"),
    }))
}

/// A direct call to `target`, or to `thunk` (which saves the registers the site does not let
/// the call change) when the site allows less than the C ABI. A tail-call site gets a `jmp`.
/// `what` says what is called, for the reason.
pub fn call(
    site: &ValidSite,
    target: u64,
    thunk: Option<u64>,
    what: &str,
) -> Result<Encoded, PvErrorKind> {
    let allows = site.allows;
    let (target, through_thunk) = if allows.contains(Clobbers::C_ABI) {
        (target, false)
    } else if let Some(th) = thunk.filter(|_| allows.contains(Clobbers::RAX)) {
        (th, true)
    } else {
        return Err(PvErrorKind::ClobberMismatch {
            needs: Clobbers::C_ABI,
            allows,
        });
    };
    let start = site.site.start;
    let bytes = if is_tail(site) {
        fill(
            site,
            &relocate::jmp_rel32(start, target).map_err(PvErrorKind::Relocation)?,
        )
    } else {
        // The call ends where the site's indirect call ended: NOPs first.
        let end = usize::from(site.insn_at + site.insn_len);
        let at = end - usize::from(X86_64::CALL_LEN);
        let call =
            relocate::call_rel32(start + at as u64, target).map_err(PvErrorKind::Relocation)?;
        let mut new = vec![0; site.original.len()];
        X86_64::fill(&mut new[..at]);
        new[at..end].copy_from_slice(&call);
        X86_64::fill(&mut new[end..]);
        new
    };
    let what = if is_tail(site) {
        format!("{what}; a tail call, so a jmp")
    } else {
        String::from(what)
    };
    let why = if through_thunk {
        format!("{what}; called through a register-saving thunk (the site allows {allows:?})")
    } else {
        format!("{what}; called directly (the site allows the C ABI's clobbers)")
    };
    Ok(Encoded {
        bytes,
        decision: PvDecision::Call {
            target,
            through_thunk,
        },
        why,
    })
}

/// The operation does nothing: NOPs, `xor eax, eax` first if it returns a value (the result is
/// 0), a `ret` for a tail call.
pub fn nop(site: &ValidSite, returns: bool) -> Result<Encoded, PvErrorKind> {
    if returns && !site.allows.contains(Clobbers::RAX) {
        return Err(PvErrorKind::ClobberMismatch {
            needs: Clobbers::RAX,
            allows: site.allows,
        });
    }
    let mut placed = Vec::new();
    if returns {
        placed.extend_from_slice(&XOR_EAX);
    }
    if is_tail(site) {
        placed.push(RET);
    }
    let why = match (returns, is_tail(site)) {
        (true, _) => "nop: returns 0 (xor eax, eax)",
        (false, true) => "nop (a tail call: ret)",
        (false, false) => "nop",
    };
    Ok(Encoded {
        bytes: fill(site, &placed),
        decision: PvDecision::Nop,
        why: String::from(why),
    })
}

/// The backend leaves the operation unset: the site traps (`ud2`).
pub fn trap(site: &ValidSite) -> Encoded {
    Encoded {
        bytes: fill(site, &UD2),
        decision: PvDecision::Trap,
        why: String::from("unset in the backend: calling it traps (ud2)"),
    }
}
