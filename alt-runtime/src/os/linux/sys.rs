//! The operating-system calls the hosted writer makes, behind one trait.
//!
//! [`MprotectWriter`](super::MprotectWriter) reaches the kernel only through [`TextSys`]:
//! reading `/proc/self/maps`, changing protections, copying into text made writable, writing
//! through `/proc/self/mem`, and reading memory without faulting. [`LinuxSys`] makes the real
//! calls. Tests put a layer in between that fails the k-th call of one kind (fault injection)
//! and check that the writer leaves the text exactly as it was.

use alloc::vec::Vec;
use core::cell::OnceCell;
use core::ops::Range;

use super::maps::{read_maps, Mapping};
use crate::memory::Spans;
use crate::writer::WriteError;

/// An operating-system error number (`errno`).
pub type Errno = i32;

/// What the hosted writer asks of the operating system.
///
/// # Safety
///
/// The writer relies on the answers to write into live code: an implementation promises that
/// every mapping [`TextSys::maps`] lists exists with the protection and sharing it says (it
/// may list fewer: the writer then refuses the pages it does not find), that
/// [`TextSys::protect`] returns `Ok` only when the range has the protection asked for, and that
/// [`TextSys::read`] (and [`TextSys::read_each`]) return `Ok` only with the bytes that are
/// there: the writer restores what it read, and reads back what it restored. A write
/// ([`TextSys::copy`], [`TextSys::mem_write`]) may say it was done when it was not: the writer
/// does not rely on it.
pub unsafe trait TextSys {
    /// The process's mappings (`/proc/self/maps`).
    fn maps(&self) -> Result<Vec<Mapping>, WriteError>;

    /// Sets the protection of the page-aligned `range` (`mprotect`).
    ///
    /// # Safety
    ///
    /// Nothing the program does while the range has `prot` may rely on another protection
    /// (no reference into it is used in a way `prot` forbids, no code in it runs if `prot`
    /// lacks execute), and the caller restores what the program relies on afterwards.
    unsafe fn protect(&self, range: Range<u64>, prot: i32) -> Result<(), Errno>;

    /// Copies `bytes` to `addr` in this address space.
    ///
    /// # Safety
    ///
    /// `addr..addr + bytes.len()` is mapped writable, and no other thread executes or writes it
    /// while the copy runs.
    unsafe fn copy(&self, addr: u64, bytes: &[u8]) -> Result<(), Errno>;

    /// Writes `bytes` at `addr` through `/proc/self/mem`, whatever the pages' protection.
    ///
    /// # Safety
    ///
    /// As for [`TextSys::copy`], whatever the protection: the bytes are valid for
    /// `addr..addr + bytes.len()`, and no other thread executes, reads or writes it (nor
    /// holds a reference into it) while the call runs.
    unsafe fn mem_write(&self, addr: u64, bytes: &[u8]) -> Result<(), Errno>;

    /// Reads `buf.len()` bytes at `addr`; an unmapped or unreadable byte is an error, never a
    /// fault.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno>;

    /// Reads each of `ranges` into `out`, one after another; on error, the address that
    /// failed (`EINVAL` for a range that does not fit in the rest of `out`).
    fn read_each<R: Spans + ?Sized>(&self, ranges: &R, out: &mut [u8]) -> Result<(), (u64, Errno)> {
        let mut at = 0;
        for i in 0..ranges.len() {
            let (addr, len) = crate::memory::start_len(&ranges.span(i));
            let buf = room(out, at, len).map_err(|e| (addr, e))?;
            self.read(addr, buf).map_err(|e| (addr, e))?;
            at += len;
        }
        Ok(())
    }
}

/// The `len` bytes of `out` at `at`, or `EINVAL` if it is shorter.
fn room(out: &mut [u8], at: usize, len: usize) -> Result<&mut [u8], Errno> {
    crate::memory::room(out, at, len).ok_or(libc::EINVAL)
}

/// The real calls: `mprotect`, `memcpy`, `/proc/self/mem` and `process_vm_readv`.
#[derive(Debug, Default)]
pub struct LinuxSys {
    /// `/proc/self/mem`, opened on first use and kept for the writer's lifetime.
    mem: OnceCell<std::fs::File>,
}

fn last_errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

impl LinuxSys {
    /// `/proc/self/mem`, opened for reading and writing on first use (read-only where the
    /// kernel refuses writing: writes then fail, reads still work).
    fn mem(&self) -> Result<&std::fs::File, Errno> {
        if let Some(f) = self.mem.get() {
            return Ok(f);
        }
        let open = |write| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(write)
                .open("/proc/self/mem")
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
        };
        let f = open(true).or_else(|_| open(false))?;
        Ok(self.mem.get_or_init(|| f))
    }
}

// SAFETY: the maps are the kernel's (`/proc/self/maps`), `mprotect` and `process_vm_readv`
// report what they did.
unsafe impl TextSys for LinuxSys {
    fn maps(&self) -> Result<Vec<Mapping>, WriteError> {
        read_maps()
    }

    unsafe fn protect(&self, range: Range<u64>, prot: i32) -> Result<(), Errno> {
        let len = range.end.checked_sub(range.start).ok_or(libc::EINVAL)? as usize;
        // SAFETY: the caller's contract: no access relies on another protection meanwhile.
        let rc = unsafe { libc::mprotect(range.start as usize as *mut libc::c_void, len, prot) };
        if rc == 0 {
            Ok(())
        } else {
            Err(last_errno())
        }
    }

    unsafe fn copy(&self, addr: u64, bytes: &[u8]) -> Result<(), Errno> {
        // SAFETY: the caller's contract: the destination is writable and not in use.
        unsafe { crate::short::copy_small(bytes.as_ptr(), addr as usize as *mut u8, bytes.len()) };
        Ok(())
    }

    unsafe fn mem_write(&self, addr: u64, bytes: &[u8]) -> Result<(), Errno> {
        use std::os::unix::fs::FileExt;
        let mem = self.mem()?;
        mem.write_all_at(bytes, addr)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    }

    fn read_each<R: Spans + ?Sized>(&self, ranges: &R, out: &mut [u8]) -> Result<(), (u64, Errno)> {
        // process_vm_readv takes up to IOV_MAX (1024) ranges per call; a failing range ends a
        // call early, and is then read alone to find out why.
        const BATCH: usize = 256;
        let mut local = [libc::iovec {
            iov_base: core::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        let mut remote = local;
        let mut at = 0;
        for first in (0..ranges.len()).step_by(BATCH) {
            let group = first..ranges.len().min(first + BATCH);
            let start = at;
            let mut total = 0;
            for (i, k) in group.clone().enumerate() {
                let (addr, len) = crate::memory::start_len(&ranges.span(k));
                // The kernel writes `len` bytes there: they must be `out`'s.
                let buf = room(out, at, len).map_err(|e| (addr, e))?;
                local[i] = libc::iovec {
                    iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                    iov_len: len,
                };
                remote[i] = libc::iovec {
                    iov_base: addr as usize as *mut libc::c_void,
                    iov_len: len,
                };
                at += len;
                total += len;
            }
            let n = group.len() as libc::c_ulong;
            // SAFETY: every local iovec is a disjoint part of `out`; the kernel checks the
            // remote ranges and fails with EFAULT rather than faulting.
            let got = unsafe {
                libc::process_vm_readv(libc::getpid(), local.as_ptr(), n, remote.as_ptr(), n, 0)
            };
            if got != total as isize {
                let mut off = start;
                for k in group {
                    let (addr, len) = crate::memory::start_len(&ranges.span(k));
                    let buf = room(out, off, len).map_err(|e| (addr, e))?;
                    self.read(addr, buf).map_err(|e| (addr, e))?;
                    off += len;
                }
            }
        }
        Ok(())
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        if buf.is_empty() {
            return Ok(());
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as usize as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: the local iovec is `buf`; the kernel checks the remote range and fails with
        // EFAULT rather than faulting.
        let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        if n == buf.len() as isize {
            return Ok(());
        }
        if n >= 0 {
            return Err(libc::EFAULT);
        }
        let e = last_errno();
        if e == libc::EFAULT {
            return Err(e);
        }
        // No process_vm_readv here (ENOSYS, or refused): read through /proc/self/mem.
        use std::os::unix::fs::FileExt;
        let mem = self.mem()?;
        mem.read_exact_at(buf, addr)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EFAULT))
    }
}

/// A kind of call the writer makes, for [`FaultInjector`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// [`TextSys::maps`].
    Maps,
    /// [`TextSys::protect`].
    Protect,
    /// [`TextSys::copy`].
    Copy,
    /// [`TextSys::mem_write`].
    MemWrite,
    /// [`TextSys::read`] and each range of [`TextSys::read_each`].
    Read,
}

/// What the injected fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The call fails with this error number and does nothing.
    Fail(Errno),
    /// The call does half its work, then fails with this error number (copies and writes: the
    /// first half of the bytes; other calls as `Fail`).
    Partial(Errno),
    /// The call reports success but does nothing: a copy or write that silently did not
    /// happen, or maps that list nothing. (A lying `protect` or read would break
    /// [`TextSys`]'s promise, on which the writer writes live code: injected into those, `Lie`
    /// fails with `EIO` instead.)
    Lie,
}

/// A [`TextSys`] that fails one chosen call: the `k`-th (counting from 1) call of one kind.
/// Every other call goes through to the layer beneath. For tests of code that patches: after
/// any single failure the text must be exactly as before, or the error must hand back what
/// reverts it.
#[derive(Debug, Default)]
pub struct FaultInjector<S: TextSys = LinuxSys> {
    inner: S,
    target: Option<(Call, usize, Fault)>,
    counts: core::cell::Cell<[usize; 5]>,
    fired: core::cell::Cell<bool>,
}

impl<S: TextSys> FaultInjector<S> {
    /// Fails the `k`-th call (from 1) of kind `call` with `fault`; `None` injects nothing and
    /// only counts.
    pub fn new(inner: S, target: Option<(Call, usize, Fault)>) -> Self {
        Self {
            inner,
            target,
            counts: Default::default(),
            fired: Default::default(),
        }
    }

    /// How many calls of `call` were made.
    pub fn count(&self, call: Call) -> usize {
        self.counts.get()[call as usize]
    }

    /// Whether the fault was injected.
    pub fn fired(&self) -> bool {
        self.fired.get()
    }

    /// Counts a call; the fault to inject now, if any.
    fn tick(&self, call: Call) -> Option<Fault> {
        let mut c = self.counts.get();
        c[call as usize] += 1;
        self.counts.set(c);
        let (kind, k, fault) = self.target?;
        (kind == call && k == c[call as usize]).then(|| {
            self.fired.set(true);
            fault
        })
    }
}

// SAFETY: every call goes to `inner`, which keeps the promise, or fails, or (copies, writes)
// does nothing while saying it did, which the promise allows; maps that list nothing list no
// wrong mapping; no `protect` or read says it did what it did not.
unsafe impl<S: TextSys> TextSys for FaultInjector<S> {
    fn maps(&self) -> Result<Vec<Mapping>, WriteError> {
        match self.tick(Call::Maps) {
            None => self.inner.maps(),
            Some(Fault::Lie) => Ok(Vec::new()),
            Some(Fault::Fail(e) | Fault::Partial(e)) => Err(WriteError::unchanged(
                0,
                "cannot read /proc/self/maps",
                Some(e),
            )),
        }
    }

    unsafe fn protect(&self, range: Range<u64>, prot: i32) -> Result<(), Errno> {
        match self.tick(Call::Protect) {
            // SAFETY: the caller's contract, passed on.
            None => unsafe { self.inner.protect(range, prot) },
            Some(Fault::Lie) => Err(libc::EIO),
            Some(Fault::Fail(e) | Fault::Partial(e)) => Err(e),
        }
    }

    unsafe fn copy(&self, addr: u64, bytes: &[u8]) -> Result<(), Errno> {
        match self.tick(Call::Copy) {
            // SAFETY: the caller's contract, passed on.
            None => unsafe { self.inner.copy(addr, bytes) },
            Some(Fault::Lie) => Ok(()),
            Some(Fault::Fail(e)) => Err(e),
            Some(Fault::Partial(e)) => {
                // SAFETY: as above, for the first half of the range.
                let _ = unsafe { self.inner.copy(addr, &bytes[..bytes.len() / 2]) };
                Err(e)
            }
        }
    }

    unsafe fn mem_write(&self, addr: u64, bytes: &[u8]) -> Result<(), Errno> {
        match self.tick(Call::MemWrite) {
            // SAFETY: the caller's contract, passed on.
            None => unsafe { self.inner.mem_write(addr, bytes) },
            Some(Fault::Lie) => Ok(()),
            Some(Fault::Fail(e)) => Err(e),
            Some(Fault::Partial(e)) => {
                // SAFETY: as above, for the first half of the range.
                let _ = unsafe { self.inner.mem_write(addr, &bytes[..bytes.len() / 2]) };
                Err(e)
            }
        }
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        match self.tick(Call::Read) {
            None => self.inner.read(addr, buf),
            Some(Fault::Lie) => Err(libc::EIO),
            Some(Fault::Fail(e) | Fault::Partial(e)) => Err(e),
        }
    }

    // Reads range by range, so that each counts as one call.
}
