//! (temporary stand-in, replaced by the real module)
#![allow(missing_docs)]
#[cfg(feature = "std")]
pub fn system_capabilities_hosted() -> Result<crate::CapabilitySet, std::string::String> {
    use crate::Features;
    let mut f = Features::empty();
    if std::arch::is_x86_feature_detected!("popcnt") {
        f |= Features::POPCNT;
    }
    if std::arch::is_x86_feature_detected!("avx2") {
        f |= Features::AVX2;
    }
    if std::arch::is_x86_feature_detected!("bmi1") {
        f |= Features::BMI1;
    }
    if std::arch::is_x86_feature_detected!("lzcnt") {
        f |= Features::LZCNT;
    }
    if std::arch::is_x86_feature_detected!("ermsb") {
        f |= Features::ERMS;
    }
    Ok(crate::CapabilitySet::new(f, crate::Errata::empty()))
}
