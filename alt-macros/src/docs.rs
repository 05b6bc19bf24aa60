//! Documentation generated from the runtime's tables, for the facade's pages.

use alt_runtime::capability::{Capability, CapabilityKind};

use crate::features::target_features;

/// The capability reference: one Markdown table row per capability, features then errata,
/// generated from the capability table so that it is complete by construction.
pub fn capability_reference() -> String {
    let mut s = String::new();
    s.push_str(
        "| name | kind | id | also written | guarantees `#[target_feature]` |\n\
         |---|---|---|---|---|\n",
    );
    for c in Capability::all() {
        let name = c.name();
        let kind = match c.kind() {
            CapabilityKind::Feature(_) => "feature",
            CapabilityKind::Erratum(_) => "erratum",
        };
        let mut also = Vec::new();
        if name.contains('.') {
            also.push(format!("`{}`", name.replace('.', "_")));
        }
        if name.chars().any(|c| c.is_ascii_lowercase()) && !name.starts_with("erratum_") {
            also.push(format!("`{}`", name.to_ascii_uppercase()));
        }
        let tf: Vec<String> = target_features(c)
            .iter()
            .map(|f| format!("`{f}`"))
            .collect();
        s.push_str(&format!(
            "| `{name}` | {kind} | `{:#05x}` | {} | {} |\n",
            c.id(),
            also.join(", "),
            tf.join(", ")
        ));
    }
    s
}
