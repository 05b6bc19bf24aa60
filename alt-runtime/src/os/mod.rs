//! Operating-system support for hosted programs.

#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod rendezvous;
