//! Operating-system support for hosted programs.

#[cfg(target_os = "linux")]
pub mod linux;
