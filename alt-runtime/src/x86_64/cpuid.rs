//! The x86-64 probe: CPUID and XGETBV decoded into a vendor, a family/model/stepping, a hybrid
//! core type and a [`Features`] set.
//!
//! The probe reads CPUID through the [`CpuidSource`] trait, so the same decoder runs on the
//! real instruction (`NativeCpuid`, x86-64 only) and on a recorded dump (`CpuidDump`, in
//! [`super::dump`], with `alloc`), which is how tests build CPUs that this machine is not, and
//! how host tools plan for a named QEMU CPU model or a CPUID dump someone shared.
//!
//! # Rules the decoder follows
//!
//! - It never reads a basic leaf above the maximum basic leaf (leaf 0 EAX), nor an extended leaf
//!   above the maximum extended leaf (leaf `0x8000_0000` EAX).
//! - AVX, AVX2, FMA and F16C are reported only when the OS enabled the SSE and AVX register
//!   state (XCR0 bits 1 and 2); the AVX-512 bits also need the opmask, ZMM_Hi256 and Hi16_ZMM
//!   state (XCR0 bits 5, 6 and 7). XCR0 is read only when CPUID says OSXSAVE.
//! - XSAVE is reported only with OSXSAVE (XSAVE raises #UD unless the OS set CR4.OSXSAVE).
//! - FSGSBASE is reported only when the OS enabled the instructions (CR4.FSGSBASE), as the
//!   source says through [`CpuidSource::os_enabled`]: on hosted Linux `AT_HWCAP2` bit 1
//!   (`HWCAP2_FSGSBASE`, Linux 5.9 and later unless booted with `nofsgsbase`); on bare metal
//!   CR4 itself. Without that step `rdgsbase` raises #UD.
//! - LZCNT is CPUID `0x8000_0001` ECX bit 5 (ABM/LZCNT).
//! - [`Features::LFENCE_SERIALIZING`]: always on Intel; on AMD and Hygon when CPUID
//!   `0x8000_0021` EAX bit 2 says so (as Linux's `X86_FEATURE_LFENCE_RDTSC` from that leaf).
//!
//! ```
//! use alt_runtime::x86_64::cpuid::{probe, CpuidDump, Vendor};
//! use alt_runtime::Features;
//!
//! let dump = CpuidDump::from_text(
//!     "0 0 0000000d 756e6547 6c65746e 49656e69\n\
//!      1 0 000306c3 00000800 fedaf223 078bfbff\n\
//!      7 0 00000000 000027ab 00000000 00000000\n\
//!      xcr0 3\n",
//! )
//! .unwrap();
//! let cpu = probe(&dump);
//! assert_eq!(cpu.vendor, Vendor::Intel);
//! assert_eq!((cpu.family, cpu.model, cpu.stepping), (6, 0x3c, 3));
//! assert!(cpu.features.contains(Features::POPCNT | Features::BMI2));
//! // CPUID says AVX2, but XCR0 has no AVX state: not usable.
//! assert!(!cpu.features.contains(Features::AVX2));
//! ```

use core::fmt;

use crate::capability::Features;

/// Recorded CPUID of QEMU's CPU models (the `models` feature: tools and tests, not programs).
#[cfg(feature = "models")]
pub use super::dump::{cpu_model_dump, model_features, CPU_MODELS};
#[cfg(feature = "alloc")]
pub use super::dump::{CpuidDump, CpuidEntry, DumpError};

/// Something that answers CPUID and XGETBV: the real instruction, or a recorded dump.
pub trait CpuidSource {
    /// CPUID with `leaf` in EAX and `subleaf` in ECX; returns `[eax, ebx, ecx, edx]`.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// XGETBV of extended control register `xcr` (0 is XCR0). The probe calls this only when
    /// CPUID reports OSXSAVE.
    fn xgetbv(&self, xcr: u32) -> u64;
    /// XCR0, given the ECX this source just answered for leaf 1: 0 unless it reports OSXSAVE
    /// (bit 27). The probe calls this instead of [`xgetbv`](Self::xgetbv)`(0)`, so that a
    /// source which must check OSXSAVE before XGETBV (the real instruction faults without it)
    /// need not ask leaf 1 again: under a hypervisor every CPUID is a VM exit, microseconds.
    ///
    /// # Safety
    ///
    /// `leaf1_ecx` must be this source's answer (ECX of `cpuid(1, 0)`), on this CPU or one whose
    /// operating system sets CR4.OSXSAVE alike (every OS sets it on all CPUs or none).
    unsafe fn xcr0_after_leaf1(&self, leaf1_ecx: u32) -> u64 {
        if leaf1_ecx & (1 << 27) != 0 {
            self.xgetbv(0)
        } else {
            0
        }
    }
    /// What the operating system enabled beyond XCR0. The default, nothing, is the safe answer
    /// for a source that cannot tell: such features are then never reported.
    fn os_enabled(&self) -> OsEnabled {
        OsEnabled::empty()
    }
}

bitflags::bitflags! {
    /// Features that need an operating-system step beyond XCR0 before code may use them, as
    /// the OS reports that step.
    ///
    /// The review of every feature with such a step (see `docs/capabilities.md`): the
    /// AVX/AVX-512 state is XCR0 (read with XGETBV); XSAVE needs CR4.OSXSAVE (CPUID says it);
    /// FSGSBASE needs CR4.FSGSBASE, which only the OS knows: this set. AMX needs XCR0 bits 17
    /// and 18 *and*, on Linux, a per-process permission (`arch_prctl(ARCH_REQ_XCOMP_PERM)`)
    /// that a program asks for itself, after the load-time patching; the runtime therefore has
    /// no AMX capability (sites patched at load could only keep their defaults).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct OsEnabled: u32 {
        /// CR4.FSGSBASE: RDFSBASE, RDGSBASE, WRFSBASE and WRGSBASE may run.
        const FSGSBASE = 1 << 0;
    }
}

/// Linux's `HWCAP2_FSGSBASE`: `AT_HWCAP2` bit 1 (`arch/x86/include/uapi/asm/hwcap2.h`).
pub const HWCAP2_FSGSBASE: u64 = 1 << 1;

impl OsEnabled {
    /// What Linux's `AT_HWCAP2` auxiliary vector entry says (x86-64).
    pub const fn from_linux_hwcap2(hwcap2: u64) -> Self {
        if hwcap2 & HWCAP2_FSGSBASE != 0 {
            OsEnabled::FSGSBASE
        } else {
            OsEnabled::empty()
        }
    }

    /// What CR4 says (bit 16 is FSGSBASE), for a kernel that reads its own control register.
    pub const fn from_cr4(cr4: u64) -> Self {
        if cr4 & (1 << 16) != 0 {
            OsEnabled::FSGSBASE
        } else {
            OsEnabled::empty()
        }
    }
}

/// The CPU this code runs on, through the `cpuid` and `xgetbv` instructions.
///
/// On a multi-CPU system the answer is that of whichever CPU the thread runs on at the time;
/// [`crate::cpu`] says how every online CPU is covered.
///
/// [`os_enabled`](CpuidSource::os_enabled): hosted Linux (`std`) asks `getauxval(AT_HWCAP2)`;
/// anything else reads CR4 when it runs at CPL 0 (a kernel; set CR4.FSGSBASE before probing)
/// and reports nothing at any other privilege level.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, Default)]
pub struct NativeCpuid;

#[cfg(target_arch = "x86_64")]
impl CpuidSource for NativeCpuid {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        #[allow(unused_unsafe)]
        // SAFETY: CPUID exists on every x86-64 CPU and only reads identification registers.
        let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, subleaf) };
        [r.eax, r.ebx, r.ecx, r.edx]
    }

    fn xgetbv(&self, xcr: u32) -> u64 {
        // XGETBV raises #UD unless CR4.OSXSAVE is set, which CPUID.1:ECX.OSXSAVE[bit 27]
        // mirrors. Only XCR0 and XCR1 exist; others raise #GP.
        if xcr > 1 || self.cpuid(1, 0)[2] & (1 << 27) == 0 {
            return 0;
        }
        if xcr == 1 {
            // XCR1 needs XGETBV_ECX_1 (CPUID.(EAX=0DH,ECX=1):EAX[bit 2]).
            let max = self.cpuid(0, 0)[0];
            if max < 0xd || self.cpuid(0xd, 1)[0] & (1 << 2) == 0 {
                return 0;
            }
        }
        // SAFETY: the checks above established that the OS enabled XSAVE (CR4.OSXSAVE) and
        // that `xcr` names a register this CPU has, so XGETBV cannot fault.
        unsafe { read_xcr(xcr) }
    }

    unsafe fn xcr0_after_leaf1(&self, leaf1_ecx: u32) -> u64 {
        if leaf1_ecx & (1 << 27) == 0 {
            return 0;
        }
        // SAFETY: the caller's contract: leaf 1 of this CPU reported OSXSAVE, so the OS set
        // CR4.OSXSAVE and XGETBV of XCR0 (which every XSAVE CPU has) cannot fault.
        unsafe { read_xcr(0) }
    }

    fn os_enabled(&self) -> OsEnabled {
        native_os_enabled()
    }
}

#[cfg(all(target_arch = "x86_64", feature = "std", target_os = "linux"))]
fn native_os_enabled() -> OsEnabled {
    // SAFETY: getauxval has no preconditions; it reads the auxiliary vector the kernel gave
    // this process, and answers 0 for a type it does not have.
    let hwcap2 = unsafe { libc::getauxval(libc::AT_HWCAP2) };
    OsEnabled::from_linux_hwcap2(hwcap2)
}

#[cfg(all(target_arch = "x86_64", not(all(feature = "std", target_os = "linux"))))]
fn native_os_enabled() -> OsEnabled {
    let cs: u16;
    // SAFETY: reading CS has no side effects and is allowed at every privilege level.
    unsafe {
        core::arch::asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags))
    };
    if cs & 3 != 0 {
        // Not the kernel: CR4 cannot be read here, and without an OS interface to ask, the
        // safe answer is that nothing was enabled.
        return OsEnabled::empty();
    }
    let cr4: u64;
    // SAFETY: at CPL 0 reading CR4 is allowed and has no side effects.
    unsafe {
        core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags))
    };
    OsEnabled::from_cr4(cr4)
}

/// # Safety
///
/// CR4.OSXSAVE must be set and `xcr` must be a readable extended control register.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "xsave")]
unsafe fn read_xcr(xcr: u32) -> u64 {
    // SAFETY: the caller guarantees the preconditions of XGETBV.
    unsafe { core::arch::x86_64::_xgetbv(xcr) }
}

/// The CPU vendor, from the 12-byte string of CPUID leaf 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vendor {
    /// `GenuineIntel`.
    Intel,
    /// `AuthenticAMD`.
    Amd,
    /// `HygonGenuine`.
    Hygon,
    /// Anything else (the raw string is in [`X86Cpu::vendor_id`]).
    Other,
}

impl Vendor {
    /// The vendor named by a CPUID vendor string.
    pub fn from_id(id: &[u8; 12]) -> Self {
        match id {
            b"GenuineIntel" => Vendor::Intel,
            b"AuthenticAMD" => Vendor::Amd,
            b"HygonGenuine" => Vendor::Hygon,
            _ => Vendor::Other,
        }
    }

    /// A short lower-case name: `intel`, `amd`, `hygon`, `other`.
    pub fn name(self) -> &'static str {
        match self {
            Vendor::Intel => "intel",
            Vendor::Amd => "amd",
            Vendor::Hygon => "hygon",
            Vendor::Other => "other",
        }
    }
}

/// The core type of a hybrid part (CPUID leaf `0x1A` EAX bits 31:24, read only when leaf 7
/// EDX bit 15 says the part is hybrid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CoreType {
    /// Not a hybrid part, or leaf `0x1A` absent or zero.
    Unknown,
    /// `0x20`: an Intel Atom core (E-core).
    Atom,
    /// `0x40`: an Intel Core core (P-core).
    Core,
    /// Another non-zero value.
    Other(u8),
}

impl CoreType {
    /// Decodes the core-type byte.
    pub const fn from_byte(b: u8) -> Self {
        match b {
            0 => CoreType::Unknown,
            0x20 => CoreType::Atom,
            0x40 => CoreType::Core,
            b => CoreType::Other(b),
        }
    }
}

impl fmt::Display for CoreType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreType::Unknown => f.write_str("-"),
            CoreType::Atom => f.write_str("atom(E)"),
            CoreType::Core => f.write_str("core(P)"),
            CoreType::Other(b) => write!(f, "{b:#04x}"),
        }
    }
}

bitflags::bitflags! {
    /// CPUID facts that are not patchable features but that the errata database
    /// ([`crate::errata`]) needs to decide whether an erratum applies.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct X86Facts: u32 {
        /// CPUID.1:EDX bit 19, CLFLUSH.
        const CLFLUSH = 1 << 0;
        /// CPUID.1:ECX bit 3, MONITOR/MWAIT.
        const MWAIT = 1 << 1;
        /// CPUID.8000_0008:EBX bit 2, XSaveErPtr (FXSAVE saves the x87 error pointers).
        const XSAVEERPTR = 1 << 2;
        /// CPUID.8000_0021:EAX bit 6, NullSelectorClearsBase.
        const NULL_SEL_CLR_BASE = 1 << 3;
    }
}

/// What the probe found about one x86-64 CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct X86Cpu {
    /// The vendor.
    pub vendor: Vendor,
    /// The raw 12-byte vendor string (EBX, EDX, ECX of leaf 0).
    pub vendor_id: [u8; 12],
    /// Family, with the extended family added when the base family is `0xF`.
    pub family: u32,
    /// Model, with the extended model prepended when the family is 6 or above (every vendor, as
    /// Linux's `x86_model()`).
    pub model: u32,
    /// Stepping.
    pub stepping: u32,
    /// Hybrid core type (leaf `0x1A`).
    pub core_type: CoreType,
    /// Maximum basic leaf.
    pub max_leaf: u32,
    /// Maximum extended leaf (0 when there are none).
    pub max_ext_leaf: u32,
    /// Usable features.
    pub features: Features,
    /// Other facts the errata database looks at.
    pub facts: X86Facts,
}

impl X86Cpu {
    /// The vendor string as text (`"GenuineIntel"`), or `"?"` if it is not UTF-8.
    pub fn vendor_str(&self) -> &str {
        core::str::from_utf8(&self.vendor_id).unwrap_or("?")
    }
}

impl fmt::Display for X86Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} family {:#x} model {:#x} stepping {}",
            self.vendor_str(),
            self.family,
            self.model,
            self.stepping
        )?;
        if self.core_type != CoreType::Unknown {
            write!(f, " core {}", self.core_type)?;
        }
        Ok(())
    }
}

/// XCR0 bits for SSE and AVX (YMM) state.
pub const XCR0_AVX_STATE: u64 = 0b110;
/// XCR0 bits for the AVX-512 state: opmask, ZMM_Hi256, Hi16_ZMM (plus SSE and AVX).
pub const XCR0_AVX512_STATE: u64 = 0b1110_0110;

const fn bit(reg: u32, n: u32) -> bool {
    reg & (1 << n) != 0
}

/// Decodes the CPU behind `src`. Never panics, whatever `src` answers.
pub fn probe<S: CpuidSource>(src: &S) -> X86Cpu {
    let [max_leaf, b0, c0, d0] = src.cpuid(0, 0);
    let mut vendor_id = [0u8; 12];
    vendor_id[0..4].copy_from_slice(&b0.to_le_bytes());
    vendor_id[4..8].copy_from_slice(&d0.to_le_bytes());
    vendor_id[8..12].copy_from_slice(&c0.to_le_bytes());
    let vendor = Vendor::from_id(&vendor_id);

    let leaf = |l: u32, s: u32| -> [u32; 4] {
        if l <= max_leaf {
            src.cpuid(l, s)
        } else {
            [0; 4]
        }
    };
    let ext0 = src.cpuid(0x8000_0000, 0)[0];
    // A CPU without extended leaves may answer anything here; only 0x8000_00xx is a range.
    let max_ext_leaf = if ext0 & 0xffff_0000 == 0x8000_0000 {
        ext0
    } else {
        0
    };
    let ext = |l: u32| -> [u32; 4] {
        if max_ext_leaf != 0 && l <= max_ext_leaf {
            src.cpuid(l, 0)
        } else {
            [0; 4]
        }
    };

    let [sig, _, ecx1, edx1] = leaf(1, 0);
    let base_family = (sig >> 8) & 0xf;
    let base_model = (sig >> 4) & 0xf;
    let stepping = sig & 0xf;
    let family = if base_family == 0xf {
        base_family + ((sig >> 20) & 0xff)
    } else {
        base_family
    };
    // As Linux's x86_model(): the extended model counts from family 6 up, whatever the vendor
    // (Zhaoxin family 7 model 0x3b, not 0xb).
    let model = if family >= 6 {
        (((sig >> 16) & 0xf) << 4) | base_model
    } else {
        base_model
    };

    let [_, ebx7, ecx7, edx7] = leaf(7, 0);
    // Leaf 0x1A describes the core type only on hybrid parts (leaf 7 EDX bit 15), as Linux
    // reads it; skipping it elsewhere also saves a CPUID (a VM exit under a hypervisor).
    let core_type = if bit(edx7, 15) {
        CoreType::from_byte((leaf(0x1a, 0)[0] >> 24) as u8)
    } else {
        CoreType::Unknown
    };
    let [_, _, ecx81, edx81] = ext(0x8000_0001);
    // Leaf 0x8000_0008 EBX gives only AMD facts (XSaveErPtr; bit 2 is reserved on Intel):
    // one VM exit saved elsewhere.
    let ebx88 = match vendor {
        Vendor::Amd | Vendor::Hygon => ext(0x8000_0008)[1],
        Vendor::Intel | Vendor::Other => 0,
    };
    let eax821 = ext(0x8000_0021)[0];

    let osxsave = bit(ecx1, 27);
    // SAFETY: `ecx1` is what `src` answered for leaf 1 just now.
    let xcr0 = unsafe { src.xcr0_after_leaf1(ecx1) };
    let os = src.os_enabled();
    let avx_state = xcr0 & XCR0_AVX_STATE == XCR0_AVX_STATE;
    let avx512_state = xcr0 & XCR0_AVX512_STATE == XCR0_AVX512_STATE;

    let mut f = Features::empty();
    let mut set = |flag: Features, on: bool| f.set(flag, on);
    // Leaf 1 ECX.
    set(Features::SSE3, bit(ecx1, 0));
    set(Features::PCLMULQDQ, bit(ecx1, 1));
    set(Features::SSSE3, bit(ecx1, 9));
    set(Features::FMA, bit(ecx1, 12) && avx_state);
    set(Features::CMPXCHG16B, bit(ecx1, 13));
    set(Features::SSE4_1, bit(ecx1, 19));
    set(Features::SSE4_2, bit(ecx1, 20));
    set(Features::MOVBE, bit(ecx1, 22));
    set(Features::POPCNT, bit(ecx1, 23));
    set(Features::AES, bit(ecx1, 25));
    set(Features::XSAVE, bit(ecx1, 26) && osxsave);
    set(Features::OSXSAVE, osxsave);
    set(Features::AVX, bit(ecx1, 28) && avx_state);
    set(Features::F16C, bit(ecx1, 29) && avx_state);
    set(Features::RDRAND, bit(ecx1, 30));
    set(Features::HYPERVISOR, bit(ecx1, 31));
    // Leaf 1 EDX.
    set(Features::CLFLUSH, bit(edx1, 19));
    // Leaf 7 subleaf 0.
    set(
        Features::FSGSBASE,
        bit(ebx7, 0) && os.contains(OsEnabled::FSGSBASE),
    );
    set(Features::BMI1, bit(ebx7, 3));
    set(Features::AVX2, bit(ebx7, 5) && avx_state);
    set(Features::BMI2, bit(ebx7, 8));
    set(Features::ERMS, bit(ebx7, 9));
    set(Features::AVX512F, bit(ebx7, 16) && avx512_state);
    set(Features::AVX512DQ, bit(ebx7, 17) && avx512_state);
    set(Features::RDSEED, bit(ebx7, 18));
    set(Features::ADX, bit(ebx7, 19));
    set(Features::CLFLUSHOPT, bit(ebx7, 23));
    set(Features::CLWB, bit(ebx7, 24));
    set(Features::AVX512CD, bit(ebx7, 28) && avx512_state);
    set(Features::SHA, bit(ebx7, 29));
    set(Features::AVX512BW, bit(ebx7, 30) && avx512_state);
    set(Features::AVX512VL, bit(ebx7, 31) && avx512_state);
    set(Features::RDPID, bit(ecx7, 22));
    set(Features::FSRM, bit(edx7, 4));
    set(Features::SERIALIZE, bit(edx7, 14));
    set(Features::HYBRID, bit(edx7, 15));
    // Extended leaves.
    set(Features::LZCNT, bit(ecx81, 5));
    set(Features::RDTSCP, bit(edx81, 27));
    let lfence = match vendor {
        Vendor::Intel => true,
        Vendor::Amd | Vendor::Hygon => bit(eax821, 2),
        Vendor::Other => false,
    };
    set(Features::LFENCE_SERIALIZING, lfence);

    let mut facts = X86Facts::empty();
    facts.set(X86Facts::CLFLUSH, bit(edx1, 19));
    facts.set(X86Facts::MWAIT, bit(ecx1, 3));
    facts.set(X86Facts::XSAVEERPTR, bit(ebx88, 2));
    facts.set(X86Facts::NULL_SEL_CLR_BASE, bit(eax821, 6));

    X86Cpu {
        vendor,
        vendor_id,
        family,
        model,
        stepping,
        core_type,
        max_leaf,
        max_ext_leaf,
        features: f,
        facts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: [u32; 4] = [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69];
    const AMD: [u32; 4] = [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65];

    /// A Haswell-like Intel CPU with AVX2 in CPUID.
    fn haswell(xcr0: u64) -> CpuidDump {
        let mut d = CpuidDump::new();
        d.set(0, 0, INTEL);
        // family 6 model 0x3c stepping 3; SSE3..AVX, OSXSAVE, F16C, RDRAND, FMA, MOVBE...
        d.set(1, 0, [0x0003_06c3, 0x0000_0800, 0x7ffa_fbff, 0x178b_fbff]);
        d.set(7, 0, [0, 0x0000_27ab, 0, 0]);
        d.set(0x8000_0000, 0, [0x8000_0008, 0, 0, 0]);
        d.set(0x8000_0001, 0, [0, 0, 0x21, 0x2c10_0800]);
        d.set_xcr0(xcr0);
        d.set_os_enabled(OsEnabled::FSGSBASE);
        d
    }

    #[test]
    fn decodes_intel_signature_and_features() {
        let cpu = probe(&haswell(0x7));
        assert_eq!(cpu.vendor, Vendor::Intel);
        assert_eq!(cpu.vendor_str(), "GenuineIntel");
        assert_eq!((cpu.family, cpu.model, cpu.stepping), (6, 0x3c, 3));
        let expect = Features::SSE3
            | Features::PCLMULQDQ
            | Features::SSSE3
            | Features::FMA
            | Features::CMPXCHG16B
            | Features::SSE4_1
            | Features::SSE4_2
            | Features::MOVBE
            | Features::POPCNT
            | Features::AES
            | Features::XSAVE
            | Features::OSXSAVE
            | Features::AVX
            | Features::F16C
            | Features::RDRAND
            | Features::CLFLUSH
            | Features::FSGSBASE
            | Features::BMI1
            | Features::AVX2
            | Features::BMI2
            | Features::ERMS
            | Features::LZCNT
            | Features::RDTSCP
            | Features::LFENCE_SERIALIZING;
        assert_eq!(cpu.features, expect, "diff {:?}", cpu.features ^ expect);
    }

    #[test]
    fn avx_needs_os_state() {
        let avx_family = Features::AVX | Features::AVX2 | Features::FMA | Features::F16C;
        // SSE state only: AVX2 in CPUID but not usable.
        let cpu = probe(&haswell(0x3));
        assert!(!cpu.features.intersects(avx_family));
        assert!(cpu.features.contains(Features::POPCNT | Features::BMI2));
        // No OSXSAVE: XCR0 is not even read.
        let mut d = haswell(0x7);
        let mut l1 = d.get(1, 0).unwrap();
        l1[2] &= !(1 << 27);
        d.set(1, 0, l1);
        let cpu = probe(&d);
        assert!(!cpu.features.intersects(avx_family | Features::OSXSAVE));
        // XSAVE raises #UD without CR4.OSXSAVE: not usable either.
        assert!(!cpu.features.contains(Features::XSAVE));
        assert!(cpu.features.contains(Features::POPCNT));
    }

    #[test]
    fn fsgsbase_needs_the_os() {
        // CPUID leaf 7 EBX bit 0 says FSGSBASE; without the OS step the instructions fault.
        let mut d = haswell(0x7);
        assert!(probe(&d).features.contains(Features::FSGSBASE));
        d.set_os_enabled(OsEnabled::empty());
        let cpu = probe(&d);
        assert!(!cpu.features.contains(Features::FSGSBASE));
        assert!(cpu.features.contains(Features::AVX2 | Features::BMI2));
        // ... and the OS step alone gives nothing on a CPU without it.
        let mut l7 = d.get(7, 0).unwrap();
        l7[1] &= !1;
        d.set(7, 0, l7);
        d.set_os_enabled(OsEnabled::FSGSBASE);
        assert!(!probe(&d).features.contains(Features::FSGSBASE));
        assert_eq!(OsEnabled::from_linux_hwcap2(2), OsEnabled::FSGSBASE);
        assert_eq!(OsEnabled::from_linux_hwcap2(1), OsEnabled::empty());
        assert_eq!(OsEnabled::from_cr4(1 << 16), OsEnabled::FSGSBASE);
        assert_eq!(OsEnabled::from_cr4(!(1 << 16)), OsEnabled::empty());
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[test]
    fn native_fsgsbase_follows_at_hwcap2() {
        // SAFETY: getauxval has no preconditions.
        let hwcap2 = unsafe { libc::getauxval(libc::AT_HWCAP2) };
        let cpuid_says = NativeCpuid.cpuid(7, 0)[1] & 1 != 0 && NativeCpuid.cpuid(0, 0)[0] >= 7;
        assert_eq!(
            probe(&NativeCpuid).features.contains(Features::FSGSBASE),
            cpuid_says && hwcap2 & 2 != 0,
            "AT_HWCAP2 {hwcap2:#x}"
        );
    }

    #[test]
    fn avx512_needs_zmm_state() {
        let mut d = haswell(0x7);
        // AVX512F, DQ, CD, BW, VL in leaf 7 EBX.
        let ebx = 0x0000_27ab | (1 << 16) | (1 << 17) | (1 << 28) | (1 << 30) | (1 << 31);
        d.set(7, 0, [0, ebx, 0, 0]);
        let avx512 = Features::AVX512F
            | Features::AVX512DQ
            | Features::AVX512CD
            | Features::AVX512BW
            | Features::AVX512VL;
        assert!(!probe(&d).features.intersects(avx512));
        assert!(probe(&d).features.contains(Features::AVX2));
        d.set_xcr0(0x67); // opmask and ZMM_Hi256 but no Hi16_ZMM
        assert!(!probe(&d).features.intersects(avx512));
        d.set_xcr0(0xe7);
        assert!(probe(&d).features.contains(avx512));
    }

    #[test]
    fn asks_each_leaf_once_and_xcr0_from_the_leaf_1_it_read() {
        // Every CPUID is a VM exit under a hypervisor: the probe asks each leaf once, and hands
        // the source the leaf 1 it read instead of letting it ask again before XGETBV.
        use alloc::vec::Vec;
        use core::cell::RefCell;
        struct Counting(CpuidDump, RefCell<Vec<(u32, u32)>>, RefCell<Option<u32>>);
        impl CpuidSource for Counting {
            fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
                self.1.borrow_mut().push((leaf, subleaf));
                self.0.cpuid(leaf, subleaf)
            }
            fn xgetbv(&self, xcr: u32) -> u64 {
                self.0.xgetbv(xcr)
            }
            unsafe fn xcr0_after_leaf1(&self, leaf1_ecx: u32) -> u64 {
                *self.2.borrow_mut() = Some(leaf1_ecx);
                self.0.xgetbv(0)
            }
        }
        let d = haswell(0x7);
        let ecx1 = d.cpuid(1, 0)[2];
        let src = Counting(d, RefCell::default(), RefCell::default());
        let cpu = probe(&src);
        assert!(cpu.features.contains(Features::AVX2));
        let mut asked = src.1.borrow().clone();
        let n = asked.len();
        asked.sort();
        asked.dedup();
        assert_eq!(asked.len(), n, "a leaf asked twice: {:x?}", src.1.borrow());
        assert_eq!(*src.2.borrow(), Some(ecx1));
    }

    #[test]
    fn never_reads_above_max_leaf() {
        struct Strict(CpuidDump);
        impl CpuidSource for Strict {
            fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
                let max = self.0.cpuid(0, 0)[0];
                let max_ext = self.0.cpuid(0x8000_0000, 0)[0];
                if leaf < 0x8000_0000 {
                    assert!(leaf <= max, "read leaf {leaf:#x} above max {max:#x}");
                } else if leaf > 0x8000_0000 {
                    assert!(leaf <= max_ext, "read leaf {leaf:#x} above {max_ext:#x}");
                }
                self.0.cpuid(leaf, subleaf)
            }
            fn xgetbv(&self, xcr: u32) -> u64 {
                self.0.xgetbv(xcr)
            }
        }
        // Max leaf 1: leaf 7 has data but must not be read.
        let mut d = haswell(7);
        d.set(0, 0, [1, INTEL[1], INTEL[2], INTEL[3]]);
        d.set(0x8000_0000, 0, [0x8000_0000, 0, 0, 0]);
        let cpu = probe(&Strict(d));
        assert!(!cpu.features.intersects(Features::AVX2 | Features::BMI2));
        assert!(
            !cpu.features.contains(Features::LZCNT),
            "extended leaf 1 not read"
        );
        assert!(cpu.features.contains(Features::AVX | Features::POPCNT));
    }

    #[test]
    fn extended_family_and_model_rules() {
        // AMD Zen 2: base family 0xf + ext 8 = 0x17; model 0x31.
        let mut d = CpuidDump::new();
        d.set(0, 0, AMD);
        d.set(1, 0, [0x0083_0f10, 0, 0, 0]);
        let cpu = probe(&d);
        assert_eq!(cpu.vendor, Vendor::Amd);
        assert_eq!((cpu.family, cpu.model, cpu.stepping), (0x17, 0x31, 0));
        assert!(!cpu.features.contains(Features::LFENCE_SERIALIZING));
        // Family 5: the extended model is not used.
        d.set(1, 0, [0x0001_0543, 0, 0, 0]);
        let cpu = probe(&d);
        assert_eq!((cpu.family, cpu.model, cpu.stepping), (5, 4, 3));
    }

    #[test]
    fn extended_model_counts_for_every_vendor_from_family_6() {
        // A Zhaoxin KaiXian KX-6000 ("CentaurHauls", family 7 model 0x3b: signature
        // 0x000307b0): Linux's x86_model() adds the extended model for family >= 6 on every
        // vendor.
        let mut d = CpuidDump::new();
        d.set(0, 0, [0xd, 0x746e_6543, 0x736c_7561, 0x4872_7561]);
        d.set(1, 0, [0x0003_07b0, 0, 0, 0]);
        let cpu = probe(&d);
        assert_eq!(cpu.vendor_str(), "CentaurHauls");
        assert_eq!((cpu.family, cpu.model, cpu.stepping), (7, 0x3b, 0));
        // Centaur family 6 with extended model 0 (VIA Nano 0x000006f2): model 0xf.
        d.set(1, 0, [0x0000_06f2, 0, 0, 0]);
        assert_eq!(probe(&d).model, 0xf);
        // Family 6 with an extended model on a non-Intel vendor: 0x000306c0 -> model 0x3c.
        d.set(1, 0, [0x0003_06c0, 0, 0, 0]);
        assert_eq!((probe(&d).family, probe(&d).model), (6, 0x3c));
    }

    #[test]
    fn amd_lfence_and_facts_from_extended_leaves() {
        let mut d = CpuidDump::new();
        d.set(0, 0, AMD);
        d.set(1, 0, [0x00a0_0f11, 0, 1 << 3, 1 << 19]);
        d.set(0x8000_0000, 0, [0x8000_0021, 0, 0, 0]);
        d.set(0x8000_0008, 0, [0, 1 << 2, 0, 0]);
        d.set(0x8000_0021, 0, [(1 << 2) | (1 << 6), 0, 0, 0]);
        let cpu = probe(&d);
        assert_eq!((cpu.family, cpu.model), (0x19, 0x01));
        assert!(cpu.features.contains(Features::LFENCE_SERIALIZING));
        assert_eq!(cpu.facts, X86Facts::all());
    }

    #[test]
    fn hybrid_core_type() {
        let mut d = haswell(7);
        d.set(0, 0, [0x20, INTEL[1], INTEL[2], INTEL[3]]);
        d.set(7, 0, [0, 0x27ab, 0, 1 << 15]);
        d.set(0x1a, 0, [0x4000_0001, 0, 0, 0]);
        let p = probe(&d);
        assert_eq!(p.core_type, CoreType::Core);
        assert!(p.features.contains(Features::HYBRID));
        d.set(0x1a, 0, [0x2000_0001, 0, 0, 0]);
        assert_eq!(probe(&d).core_type, CoreType::Atom);
        // Leaf 0x1A means nothing on a part that is not hybrid: not read.
        d.set(7, 0, [0, 0x27ab, 0, 0]);
        assert_eq!(probe(&d).core_type, CoreType::Unknown);
        d.set(7, 0, [0, 0x27ab, 0, 1 << 15]);
        // Leaf 0x1a above the maximum leaf is not read.
        d.set(0, 0, [0x19, INTEL[1], INTEL[2], INTEL[3]]);
        assert_eq!(probe(&d).core_type, CoreType::Unknown);
    }

    #[test]
    fn garbage_never_panics() {
        struct Noise(u32);
        impl CpuidSource for Noise {
            fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
                let x = leaf
                    .wrapping_mul(0x9e37_79b9)
                    .wrapping_add(subleaf)
                    .wrapping_add(self.0);
                [x, !x, x.rotate_left(7), x ^ 0xdead_beef]
            }
            fn xgetbv(&self, _: u32) -> u64 {
                u64::MAX
            }
        }
        for seed in 0u32..256 {
            let _ = probe(&Noise(seed.wrapping_mul(0x0101_0101)));
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn native_probe_matches_its_capture() {
        let native = probe(&NativeCpuid);
        let captured = probe(&CpuidDump::capture(&NativeCpuid));
        assert_eq!(native, captured);
        // Every x86-64 CPU has SSE2 and CMPXCHG8B; most have these.
        assert_ne!(native.max_leaf, 0);
    }
}
