//! Where the tables are: section bounds, placeholders, and the kernel linker-script fragment.
//!
//! Every detail of how sections are named and bounded lives here. Hosted ELF linkers define
//! `__start_<name>` and `__stop_<name>` for every output section whose name is a C identifier;
//! kernels define the same symbols with [`LINKER_SCRIPT`]. Either way the runtime reads:
//!
//! | section            | bounds symbols                                   | entries |
//! |--------------------|--------------------------------------------------|---------|
//! | `alt_instr`        | `__start_alt_instr`, `__stop_alt_instr`          | [`AltEntry`], 12 bytes |
//! | `alt_replacement`  | `__start_alt_replacement`, `__stop_alt_replacement` | code |
//! | `alt_site_names`   | `__start_alt_site_names`, `__stop_alt_site_names`   | [`NameEntry`], 8 bytes |
//! | `alt_entry_names`  | `__start_alt_entry_names`, `__stop_alt_entry_names` | [`NameEntry`], 8 bytes |
//! | `alt_pv_<TABLE>`   | `__start_alt_pv_<TABLE>`, `__stop_alt_pv_<TABLE>`   | [`crate::PvEntry`], 8 bytes, one section per operations table |
//! | `alt_site_effects` | `__start_alt_site_effects`, `__stop_alt_site_effects` | [`crate::table::EffectsEntry`], 16 bytes |
//!
//! An empty table must still exist or its bounds symbols are undefined, so this module emits a
//! placeholder into each section: an all-zero [`AltEntry`] (skipped by the planner), an `int3`
//! byte of replacement code, and all-zero name entries (skipped). The placeholders are emitted by
//! the same function that reads the bounds, so whenever the bounds are used the object that
//! holds the placeholders is linked.
//!
//! The name tables are optional side tables the macros emit for reports: a [`NameEntry`] maps a
//! site address (in `alt_site_names`) or an alternative entry's address (in `alt_entry_names`)
//! to a `&'static str`.
//!
//! `alt_site_effects` is a side table for tools: what each site declares to the compiler it may
//! change (`alt-tablegen verify` checks every variant against it). The runtime never reads it,
//! so it needs no placeholder and [`sections`] does not return its bounds; kernels still keep
//! and bound it with the fragment so that the checker sees the same image.

use crate::table::AltEntry;

/// Linker-script fragment for kernels: `KEEP`s every alt section, defines the bounds symbols
/// and `ASSERT`s the layout with messages that say how to fix it. Also shipped as
/// `alt-runtime/link/alt.ld`.
pub const LINKER_SCRIPT: &str = include_str!("../link/alt.ld");

/// Writes the linker-script statements that place the entry section of the paravirt
/// operations table `table` (`alt_pv_<table>`), `KEEP` it, define its `__start_`/`__stop_`
/// symbols and `ASSERT` its layout. A kernel's build script writes them into a file its own
/// linker script `INCLUDE`s (the table names are the kernel's, so [`LINKER_SCRIPT`] cannot
/// list them):
///
/// ```
/// let mut script = String::new();
/// alt_runtime::linker::write_paravirt_section(&mut script, "PV_OPS").unwrap();
/// assert!(script.contains("KEEP(*(alt_pv_PV_OPS))"));
/// assert!(script.contains("% 8 == 0"));
/// ```
pub fn write_paravirt_section(out: &mut dyn core::fmt::Write, table: &str) -> core::fmt::Result {
    // A table name is a Rust identifier: also a valid linker-script symbol.
    let s = table;
    writeln!(out, "alt_pv_{s} : ALIGN(4) {{")?;
    writeln!(out, "    __start_alt_pv_{s} = .;")?;
    writeln!(out, "    KEEP(*(alt_pv_{s}))")?;
    writeln!(out, "    __stop_alt_pv_{s} = .;")?;
    writeln!(out, "}}")?;
    writeln!(
        out,
        "ASSERT(__start_alt_pv_{s} % 4 == 0,\n    \"alt: alt_pv_{s} is not 4-byte aligned; keep the ALIGN(4)\")"
    )?;
    writeln!(
        out,
        "ASSERT((__stop_alt_pv_{s} - __start_alt_pv_{s}) % 8 == 0,\n    \"alt: alt_pv_{s} is not a whole number of 8-byte paravirt entries; an object was built for another alt ABI, or something else was placed in alt_pv_{s}\")"
    )
}

/// The assembler directive that opens the `alt_instr` section, exactly as every emitter must
/// write it (the flags must agree or the assembler refuses to merge).
pub const ALT_INSTR_PUSHSECTION: &str = ".pushsection alt_instr,\"aR\",@progbits";
/// The directive that opens the `alt_replacement` section.
pub const ALT_REPLACEMENT_PUSHSECTION: &str = ".pushsection alt_replacement,\"axR\",@progbits";
/// The directive that opens the `alt_site_names` section.
pub const SITE_NAMES_PUSHSECTION: &str = ".pushsection alt_site_names,\"aR\",@progbits";
/// The directive that opens the `alt_entry_names` section.
pub const ENTRY_NAMES_PUSHSECTION: &str = ".pushsection alt_entry_names,\"aR\",@progbits";
/// The directive that opens the `alt_site_effects` section ([`crate::table::EffectsEntry`]).
pub const SITE_EFFECTS_PUSHSECTION: &str = ".pushsection alt_site_effects,\"aR\",@progbits";

/// Flags and type of every paravirt entry section `alt_pv_<TABLE>`: every emitter opens it as
/// `.pushsection alt_pv_<TABLE>,` followed by this (the flags must agree). Its bounds are
/// `__start_alt_pv_<TABLE>` and `__stop_alt_pv_<TABLE>`, read by code the `paravirt_ops!` macro
/// generates with the same `.hidden` + `lea` pattern as [`sections`].
pub const PV_SECTION_FLAGS: &str = "\"aR\",@progbits";

/// A name for a site or an entry: two self-relative offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(4))]
pub struct NameEntry {
    /// Self-relative offset of the site or entry named.
    pub target: i32,
    /// Self-relative offset of a `&'static str` holding the name.
    pub name: i32,
}

/// The bounds of this program's alt sections, as the linker defines them ([`sections`] is the
/// only way to get one: its methods turn the bounds into `'static` slices, which is sound only
/// for bounds the linker gave).
#[derive(Clone, Copy, Debug)]
pub struct Sections {
    /// `alt_instr`.
    alt_instr: (usize, usize),
    /// `alt_replacement`.
    alt_replacement: (usize, usize),
    /// `alt_site_names`.
    site_names: (usize, usize),
    /// `alt_entry_names`.
    entry_names: (usize, usize),
}

/// The bounds of this program's alt sections, with placeholders that keep them defined.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
pub fn sections() -> Sections {
    let (a0, a1, r0, r1, s0, s1, e0, e1): (usize, usize, usize, usize, usize, usize, usize, usize);
    // SAFETY: the asm only computes addresses of linker-defined symbols and adds placeholder
    // data to other sections; it reads and writes no memory.
    unsafe {
        core::arch::asm!(
            ".pushsection alt_instr,\"aR\",@progbits",
            ".balign 4",
            ".long 0, 0, 0",
            ".popsection",
            ".pushsection alt_replacement,\"axR\",@progbits",
            ".byte 0xcc",
            ".popsection",
            ".pushsection alt_site_names,\"aR\",@progbits",
            ".balign 4",
            ".long 0, 0",
            ".popsection",
            ".pushsection alt_entry_names,\"aR\",@progbits",
            ".balign 4",
            ".long 0, 0",
            ".popsection",
            ".hidden __start_alt_instr",
            ".hidden __stop_alt_instr",
            ".hidden __start_alt_replacement",
            ".hidden __stop_alt_replacement",
            ".hidden __start_alt_site_names",
            ".hidden __stop_alt_site_names",
            ".hidden __start_alt_entry_names",
            ".hidden __stop_alt_entry_names",
            "lea {a0}, [rip + __start_alt_instr]",
            "lea {a1}, [rip + __stop_alt_instr]",
            "lea {r0}, [rip + __start_alt_replacement]",
            "lea {r1}, [rip + __stop_alt_replacement]",
            "lea {s0}, [rip + __start_alt_site_names]",
            "lea {s1}, [rip + __stop_alt_site_names]",
            "lea {e0}, [rip + __start_alt_entry_names]",
            "lea {e1}, [rip + __stop_alt_entry_names]",
            a0 = out(reg) a0,
            a1 = out(reg) a1,
            r0 = out(reg) r0,
            r1 = out(reg) r1,
            s0 = out(reg) s0,
            s1 = out(reg) s1,
            e0 = out(reg) e0,
            e1 = out(reg) e1,
            options(nomem, nostack, preserves_flags)
        );
    }
    Sections {
        alt_instr: (a0, a1),
        alt_replacement: (r0, r1),
        site_names: (s0, s1),
        entry_names: (e0, e1),
    }
}

#[cfg(target_arch = "x86_64")]
impl Sections {
    /// The alternative entries of this program (placeholders included).
    pub fn alt_entries(&self) -> &'static [AltEntry] {
        // SAFETY: the linker places only 12-byte, 4-aligned entries in alt_instr (the kernel
        // script asserts it); the section is read-only data alive for the whole program.
        unsafe { slice_between(self.alt_instr) }
    }

    /// The site names of this program (placeholders included).
    pub fn site_names(&self) -> &'static [NameEntry] {
        // SAFETY: as for alt_instr, with 8-byte entries.
        unsafe { slice_between(self.site_names) }
    }

    /// The entry names of this program (placeholders included).
    pub fn entry_names(&self) -> &'static [NameEntry] {
        // SAFETY: as for alt_instr, with 8-byte entries.
        unsafe { slice_between(self.entry_names) }
    }

    /// The address range of `alt_instr`, the table of alternative entries.
    pub fn alt_instr(&self) -> core::ops::Range<u64> {
        self.alt_instr.0 as u64..self.alt_instr.1 as u64
    }

    /// The replacement section's address range.
    pub fn replacements(&self) -> core::ops::Range<u64> {
        self.alt_replacement.0 as u64..self.alt_replacement.1 as u64
    }

    /// The site and entry names of this program, sorted for lookup.
    #[cfg(feature = "alloc")]
    pub fn names(&self) -> Names {
        // SAFETY: the name entries are emitted by the macros and point at `&'static str`s.
        unsafe { Names::new(self.site_names(), self.entry_names()) }
    }
}

/// # Safety
///
/// `start..end` must hold `T`s, aligned, alive for the program's lifetime.
unsafe fn slice_between<T>((start, end): (usize, usize)) -> &'static [T] {
    let size = core::mem::size_of::<T>();
    if end <= start || start % core::mem::align_of::<T>() != 0 {
        return &[];
    }
    // SAFETY: the caller's contract; the length is rounded down to whole entries.
    unsafe { core::slice::from_raw_parts(start as *const T, (end - start) / size) }
}

/// Names of sites and entries for reports, by address. Cloning shares them.
///
/// Nothing is read of a name table until a name is first looked up (a program with a hundred
/// thousand sites pays nothing for naming them until its report is read): then a table the
/// linker left in address order (as it leaves the macros' tables) is searched where it lies,
/// names resolved only when asked for, and any other table is copied and sorted, once.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug, Default)]
pub struct Names {
    sites: Lazy,
    entries: Lazy,
}

/// A name table, looked at when it is first searched; clones share what that found.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug, Default)]
struct Lazy(alloc::sync::Arc<Resolving>);

/// A name table and, once it was first searched, its [`List`] (set once; freed with it).
#[cfg(feature = "alloc")]
#[derive(Debug, Default)]
struct Resolving {
    table: &'static [NameEntry],
    list: core::sync::atomic::AtomicPtr<List>,
}

// The list is built by one thread and read (and freed) by any: it must be both.
#[cfg(feature = "alloc")]
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<List>();
};

#[cfg(feature = "alloc")]
impl Lazy {
    /// # Safety
    ///
    /// As for [`Names::new`].
    unsafe fn new(table: &'static [NameEntry]) -> Self {
        Lazy(alloc::sync::Arc::new(Resolving {
            table,
            list: Default::default(),
        }))
    }

    /// The table's list, worked out by the first caller (threads that race each work it out;
    /// the first to finish sets it, the others drop theirs).
    fn get(&self) -> &List {
        use core::sync::atomic::Ordering::{AcqRel, Acquire};
        let r = &*self.0;
        let set = r.list.load(Acquire);
        if !set.is_null() {
            // SAFETY: set once from `Box::into_raw` below and freed only by `Resolving`'s drop,
            // which cannot run while `self` borrows it.
            return unsafe { &*set };
        }
        // SAFETY: `Lazy::new`'s contract (or an empty table, the default).
        let list =
            alloc::boxed::Box::into_raw(alloc::boxed::Box::new(unsafe { List::new(r.table) }));
        match r
            .list
            .compare_exchange(core::ptr::null_mut(), list, AcqRel, Acquire)
        {
            // SAFETY: as above: now set to ours.
            Ok(_) => unsafe { &*list },
            Err(other) => {
                // SAFETY: ours was never shared; `other` is set for good, as above.
                unsafe {
                    drop(alloc::boxed::Box::from_raw(list));
                    &*other
                }
            }
        }
    }
}

#[cfg(feature = "alloc")]
impl Drop for Resolving {
    fn drop(&mut self) {
        let list = *self.list.get_mut();
        if !list.is_null() {
            // SAFETY: set from `Box::into_raw` and no longer shared: this is its last owner.
            drop(unsafe { alloc::boxed::Box::from_raw(list) });
        }
    }
}

#[cfg(feature = "alloc")]
impl From<alloc::vec::Vec<(u64, &'static str)>> for Lazy {
    fn from(v: alloc::vec::Vec<(u64, &'static str)>) -> Self {
        let list = alloc::boxed::Box::into_raw(alloc::boxed::Box::new(List::from(v)));
        Lazy(alloc::sync::Arc::new(Resolving {
            table: &[],
            list: core::sync::atomic::AtomicPtr::new(list),
        }))
    }
}

/// One name table, searchable by address.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug)]
enum List {
    /// A table in address order with no placeholder inside it (those at its ends are cut off),
    /// read in place.
    InPlace(&'static [NameEntry]),
    /// Any other table: its entries resolved and sorted.
    Sorted(alloc::sync::Arc<alloc::vec::Vec<(u64, &'static str)>>),
}

#[cfg(feature = "alloc")]
impl Default for List {
    fn default() -> Self {
        List::InPlace(&[])
    }
}

#[cfg(feature = "alloc")]
impl From<alloc::vec::Vec<(u64, &'static str)>> for List {
    fn from(mut v: alloc::vec::Vec<(u64, &'static str)>) -> Self {
        v.sort_unstable_by_key(|e| e.0);
        List::Sorted(alloc::sync::Arc::new(v))
    }
}

fn is_placeholder(n: &NameEntry) -> bool {
    n.target == 0 && n.name == 0
}

fn target_of(n: &NameEntry) -> u64 {
    crate::table::resolve(n as *const NameEntry as u64, n.target)
}

/// The name a name entry points at.
///
/// # Safety
///
/// `n` is not a placeholder and its `name` field points at a live `&'static str` (as the
/// macros emit them).
unsafe fn name_of(n: &NameEntry) -> &'static str {
    let at = crate::table::resolve(n as *const NameEntry as u64 + 4, n.name);
    // SAFETY: the caller's contract.
    unsafe { *(at as usize as *const &'static str) }
}

#[cfg(feature = "alloc")]
impl List {
    /// # Safety
    ///
    /// As for [`Names::new`].
    unsafe fn new(table: &'static [NameEntry]) -> Self {
        let first = table.iter().position(|n| !is_placeholder(n));
        let last = table.iter().rposition(|n| !is_placeholder(n));
        let (Some(first), Some(last)) = (first, last) else {
            return List::InPlace(&[]);
        };
        let inner = &table[first..=last];
        let mut previous = 0;
        let in_order = inner.iter().all(|n| {
            let t = target_of(n);
            let ok = !is_placeholder(n) && t >= previous;
            previous = t;
            ok
        });
        if in_order {
            List::InPlace(inner)
        } else {
            // SAFETY: the caller's contract.
            List::Sorted(alloc::sync::Arc::new(unsafe { sorted(table) }))
        }
    }

    fn len(&self) -> usize {
        match self {
            List::InPlace(t) => t.len(),
            List::Sorted(v) => v.len(),
        }
    }

    fn target(&self, i: usize) -> u64 {
        match self {
            List::InPlace(t) => target_of(&t[i]),
            List::Sorted(v) => v[i].0,
        }
    }

    fn name(&self, i: usize) -> &'static str {
        match self {
            // SAFETY: `Names::new`'s contract: an entry of an in-place list is not a
            // placeholder and points at a live `&'static str`.
            List::InPlace(t) => unsafe { name_of(&t[i]) },
            List::Sorted(v) => v[i].1,
        }
    }

    /// The first index whose target is not below `addr`.
    fn partition_point(&self, addr: u64) -> usize {
        match self {
            List::InPlace(t) => t.partition_point(|n| target_of(n) < addr),
            List::Sorted(v) => v.partition_point(|e| e.0 < addr),
        }
    }

    fn find(&self, addr: u64) -> Option<&'static str> {
        let i = self.partition_point(addr);
        (i < self.len() && self.target(i) == addr).then(|| self.name(i))
    }
}

#[cfg(feature = "alloc")]
impl Names {
    /// The names of two name tables (`alt_site_names`, `alt_entry_names`); placeholders are
    /// skipped.
    ///
    /// # Safety
    ///
    /// Every non-placeholder entry's `name` field must point at a `&'static str` (as the macros
    /// emit them) that stays valid and unchanged for the rest of the program: a table in
    /// address order is read, and those `&str`s loaded, each time a name is looked up.
    pub unsafe fn new(sites: &'static [NameEntry], entries: &'static [NameEntry]) -> Self {
        // SAFETY: the caller's contract.
        unsafe {
            Names {
                sites: Lazy::new(sites),
                entries: Lazy::new(entries),
            }
        }
    }

    /// The name of the function whose site is at `addr`.
    pub fn site(&self, addr: u64) -> Option<&'static str> {
        self.sites.get().find(addr)
    }

    /// The name of the variant whose table entry is at `addr`.
    pub fn entry(&self, addr: u64) -> Option<&'static str> {
        self.entries.get().find(addr)
    }
}

/// # Safety
///
/// As for [`Names::new`].
#[cfg(feature = "alloc")]
unsafe fn sorted(table: &'static [NameEntry]) -> alloc::vec::Vec<(u64, &'static str)> {
    let mut v: alloc::vec::Vec<(u64, &'static str)> = alloc::vec::Vec::with_capacity(table.len());
    for n in table.iter().filter(|n| !is_placeholder(n)) {
        // SAFETY: the caller's contract; placeholders are left out.
        v.push((target_of(n), unsafe { name_of(n) }));
    }
    v.sort_unstable_by_key(|e| e.0);
    v
}

/// Looks a name up in a name table: the name whose target is `addr`.
///
/// # Safety
///
/// Every non-placeholder entry's `name` must point at a live `&'static str`.
pub unsafe fn lookup_name(table: &'static [NameEntry], addr: u64) -> Option<&'static str> {
    table.iter().find_map(|n| {
        if is_placeholder(n) || target_of(n) != addr {
            return None;
        }
        // SAFETY: the caller's contract; `n` is not a placeholder.
        Some(unsafe { name_of(n) })
    })
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;

    #[test]
    fn copied_lists_are_sorted_and_searched() {
        let names = Names {
            sites: alloc::vec![(0x30, "c"), (0x10, "a"), (0x50, "e"), (0x20, "b")].into(),
            entries: alloc::vec![(0x20, "x")].into(),
        };
        for (addr, name) in [(0x10, "a"), (0x20, "b"), (0x30, "c"), (0x50, "e")] {
            assert_eq!(names.site(addr), Some(name), "{addr:#x}");
        }
        for addr in [0x0, 0x18, 0x40, 0x60] {
            assert_eq!(names.site(addr), None, "{addr:#x}");
        }
        assert_eq!(names.entry(0x20), Some("x"));
        assert_eq!(names.entry(0x21), None);
    }

    /// A name at an offset from a test buffer, or a placeholder.
    type Named = Option<(u64, &'static str)>;

    /// A name table in a leaked buffer: `(offset, name)` pairs (targets are offsets from
    /// the buffer's start), `None` a placeholder. Returns the table and the buffer's address.
    fn table(names: &[Named]) -> (&'static [NameEntry], u64) {
        #[repr(C)]
        struct Buffer {
            entries: [NameEntry; 8],
            holders: [&'static str; 8],
        }
        let buf: &'static mut Buffer = alloc::boxed::Box::leak(alloc::boxed::Box::new(Buffer {
            entries: [NameEntry { target: 0, name: 0 }; 8],
            holders: [""; 8],
        }));
        let base = buf as *const Buffer as u64;
        for (i, n) in names.iter().enumerate() {
            if let Some((offset, name)) = *n {
                buf.holders[i] = name;
                let at = &buf.entries[i] as *const NameEntry as u64;
                let holder = &buf.holders[i] as *const &str as u64;
                buf.entries[i] = NameEntry {
                    target: (base + offset).wrapping_sub(at) as i32,
                    name: holder.wrapping_sub(at + 4) as i32,
                };
            }
        }
        (&buf.entries[..names.len()], base)
    }

    #[cfg(feature = "std")]
    #[test]
    fn names_are_looked_at_when_first_looked_up_by_any_thread_and_shared() {
        let (a, b, c) = (Some((0x10, "a")), Some((0x20, "b")), Some((0x30, "c")));
        for names in [&[a, b, c][..], &[c, None, a, b]] {
            let (t, base) = table(names);
            // SAFETY: the table is leaked and points at string literals.
            let names = unsafe { Names::new(t, t) };
            let null = |l: &Lazy| {
                l.0.list
                    .load(core::sync::atomic::Ordering::Acquire)
                    .is_null()
            };
            assert!(
                null(&names.sites) && null(&names.entries),
                "nothing read yet"
            );
            let copy = names.clone();
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        for (offset, name) in [(0x10, "a"), (0x20, "b"), (0x30, "c")] {
                            assert_eq!(copy.site(base + offset), Some(name));
                        }
                        assert_eq!(copy.entry(base + 0x18), None);
                    });
                }
            });
            // Worked out once, for every clone.
            assert!(!null(&names.sites) && !null(&names.entries));
            assert!(core::ptr::eq(names.sites.get(), copy.sites.get()));
        }
    }

    #[test]
    fn tables_in_address_order_are_read_in_place_and_others_sorted() {
        let (a, b, c) = (Some((0x10, "a")), Some((0x20, "b")), Some((0x30, "c")));
        let cases: [(&[Named], bool); 5] = [
            (&[a, b, c], true),
            // Placeholders at the ends (each object's runtime adds one) are cut off.
            (&[None, a, b, c, None], true),
            (&[a, None, b, c], false),
            (&[b, a, c], false),
            (&[None, None], true),
        ];
        for (names, in_place) in cases {
            let (t, base) = table(names);
            // SAFETY: the table is leaked and points at string literals.
            let l = unsafe { List::new(t) };
            assert_eq!(matches!(l, List::InPlace(_)), in_place, "{names:?}");
            let real = names.iter().flatten().count();
            assert_eq!(l.len(), real, "{names:?}");
            for &(offset, name) in names.iter().flatten() {
                assert_eq!(l.find(base + offset), Some(name));
            }
            assert_eq!(l.find(base + 0x18), None);
            assert_eq!(l.find(base + 0x40), None);
        }
    }
}
