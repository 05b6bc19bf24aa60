//! Hypervisor detection from CPUID, for choosing a paravirt backend at start-up.
//!
//! CPUID leaf 1 ECX bit 31 is reserved on real hardware and set by hypervisors; when it is set,
//! leaf `0x4000_0000` returns the hypervisor's maximum leaf in EAX and a 12-byte vendor
//! signature in EBX, ECX, EDX (`KVMKVMKVM\0\0\0`, `Microsoft Hv`, `VMwareVMware`,
//! `XenVMMXenVMM`, `TCGTCGTCGTCG`, ...).
//!
//! ```
//! use alt_runtime::x86_64::cpuid::CpuidDump;
//! use alt_runtime::x86_64::hypervisor::{detect, HypervisorKind};
//!
//! let bare = CpuidDump::from_text("0 0 0000000d 756e6547 6c65746e 49656e69\n\
//!                                  1 0 000306c3 00000800 7edaf223 078bfbff\n").unwrap();
//! assert_eq!(detect(&bare), None);
//!
//! let kvm = CpuidDump::from_text("0 0 0000000d 756e6547 6c65746e 49656e69\n\
//!                                 1 0 000306c3 00000800 fedaf223 078bfbff\n\
//!                                 40000000 0 40000001 4b4d564b 564b4d56 0000004d\n").unwrap();
//! let hv = detect(&kvm).unwrap();
//! assert_eq!(hv.kind, HypervisorKind::Kvm);
//! assert_eq!(hv.signature_str(), "KVMKVMKVM");
//! assert_eq!(hv.max_leaf, 0x4000_0001);
//! ```

use super::cpuid::CpuidSource;

/// First hypervisor CPUID leaf.
pub const HYPERVISOR_LEAF: u32 = 0x4000_0000;

/// A known hypervisor, from its signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HypervisorKind {
    /// `KVMKVMKVM\0\0\0`.
    Kvm,
    /// `Microsoft Hv`.
    HyperV,
    /// `VMwareVMware`.
    Vmware,
    /// `XenVMMXenVMM`.
    Xen,
    /// `TCGTCGTCGTCG` (QEMU without acceleration).
    Tcg,
    /// Another signature (or none).
    Other,
}

/// What leaf `0x4000_0000` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hypervisor {
    /// Known hypervisor, if the signature is one.
    pub kind: HypervisorKind,
    /// The raw signature (EBX, ECX, EDX).
    pub signature: [u8; 12],
    /// Highest hypervisor leaf (EAX of leaf `0x4000_0000`).
    pub max_leaf: u32,
}

impl Hypervisor {
    /// The signature without trailing NULs, or `"?"` if it is not UTF-8.
    pub fn signature_str(&self) -> &str {
        let end = self
            .signature
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |i| i + 1);
        core::str::from_utf8(&self.signature[..end]).unwrap_or("?")
    }
}

/// The hypervisor this CPU reports, or `None` when CPUID.1:ECX bit 31 is clear.
pub fn detect<S: CpuidSource>(src: &S) -> Option<Hypervisor> {
    if src.cpuid(0, 0)[0] < 1 || src.cpuid(1, 0)[2] & (1 << 31) == 0 {
        return None;
    }
    let [eax, ebx, ecx, edx] = src.cpuid(HYPERVISOR_LEAF, 0);
    let mut signature = [0; 12];
    signature[0..4].copy_from_slice(&ebx.to_le_bytes());
    signature[4..8].copy_from_slice(&ecx.to_le_bytes());
    signature[8..12].copy_from_slice(&edx.to_le_bytes());
    let kind = match &signature {
        b"KVMKVMKVM\0\0\0" => HypervisorKind::Kvm,
        b"Microsoft Hv" => HypervisorKind::HyperV,
        b"VMwareVMware" => HypervisorKind::Vmware,
        b"XenVMMXenVMM" => HypervisorKind::Xen,
        b"TCGTCGTCGTCG" => HypervisorKind::Tcg,
        _ => HypervisorKind::Other,
    };
    Some(Hypervisor {
        kind,
        signature,
        max_leaf: eax,
    })
}

/// The hypervisor of the CPU this code runs on.
#[cfg(target_arch = "x86_64")]
pub fn detect_native() -> Option<Hypervisor> {
    detect(&super::cpuid::NativeCpuid)
}
