//! `has!`: a capability as a `bool`, answered by a patchable jump (asm goto).
//!
//! ```text
//! has!(KEY [, likely | unlikely])                  a bool
//! has!(KEY => f(args), KEY => g(args), _ => expr)  the first arm whose key holds
//! ```
//!
//! `has!(cap)` is one 5-byte site in an `asm!` block with a label operand: either `jmp rel32` to
//! the label (the other arm) or a 5-byte NOP (fall through), and one table entry that swaps the
//! two. Before patching (and where patching is off) the site answers as the unpatched default of
//! its kind: **false for a feature** (the portable path, correct on every CPU) and **true for an
//! erratum** (the workaround, applied until the system is known not to need it). The entry is
//! keyed `cap` for a feature and `!cap` for an erratum, so the planner's rules (features held by
//! every CPU, errata by any) decide, and a late CPU is checked against them like any site.
//!
//! Layout: the arm that falls through is the one patching makes common, so that a patched site
//! is NOPs on the machines patching is for: the true arm for a feature, the false arm for an
//! erratum (`likely` / `unlikely` say which arm falls through instead). The site is then `jmp`
//! by default and the replacement empty, or a NOP by default and the replacement a `jmp`, which
//! the planner re-targets from the replacement section to the site like any `rel32` jump. No
//! variant calls anything, so the return-address rule has nothing to keep.
//!
//! Where the build's target features guarantee the capability, the answer is the constant
//! `true`, under `cfg`, with no site at all ([`crate::certain`]).
//!
//! The arm form runs a function under the branch that holds its key: the function is checked to
//! be a safe function whose target features the key guarantees (it must coerce to a safe `fn`
//! pointer inside a function compiled with those features), then called, so a safe
//! `#[target_feature]` function runs where the capability holds without `unsafe`.

use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Expr, Ident, Token};

use alt_runtime::capability::CapabilityKind;

use crate::args::Key;
use crate::certain::{guaranteed_by, predicate};
use crate::features::target_features;
use crate::site::{Declared, DefaultCode, EntrySpec, EntryTarget, SiteSpec};

/// Which arm falls through, as written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The arm patching makes common.
    Auto,
    /// `likely`: the true arm.
    Likely,
    /// `unlikely`: the false arm.
    Unlikely,
}

/// One `KEY => f(args)` arm.
pub struct Arm {
    key: Key,
    key_text: String,
    call: syn::ExprCall,
    path: syn::ExprPath,
}

/// The input of `has!`.
pub enum HasInput {
    /// `has!(KEY [, likely | unlikely])`.
    Test {
        key: Key,
        key_text: String,
        layout: Layout,
    },
    /// `has!(KEY => f(args), ..., _ => expr)`.
    Arms { arms: Vec<Arm>, otherwise: Expr },
}

/// The canonical text of a key: `popcnt`, `!erratum_amd_div0`.
fn key_text(key: &Key) -> String {
    format!(
        "{}{}",
        if key.negated { "!" } else { "" },
        key.capability.name()
    )
}

const ARM_FORM: &str = "an arm runs a function where its key holds: \
     `alt::has!(avx2 => sum_avx2(&xs), _ => sum(&xs))`; for any other code write \
     `if alt::has!(avx2) { ... } else { ... }`";

impl Parse for HasInput {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if input.is_empty() {
            return Err(input.error(
                "has! needs a capability: `alt::has!(popcnt)`, `alt::has!(!avx2)`, \
                 `alt::has!(erratum_amd_div0, unlikely)` or \
                 `alt::has!(avx2 => sum_avx2(&xs), _ => sum(&xs))`",
            ));
        }
        let key: Key = input.parse()?;
        if !input.peek(Token![=>]) {
            let mut layout = Layout::Auto;
            if input.peek(Token![,]) {
                input.parse::<Token![,]>()?;
                if !input.is_empty() {
                    let word: Ident = input.parse()?;
                    layout = match word.to_string().as_str() {
                        "likely" => Layout::Likely,
                        "unlikely" => Layout::Unlikely,
                        _ => {
                            return Err(syn::Error::new(
                                word.span(),
                                "expected `likely` (the true arm falls through) or `unlikely` \
                                 (the false arm falls through)",
                            ))
                        }
                    };
                    if input.peek(Token![,]) {
                        input.parse::<Token![,]>()?;
                    }
                }
            }
            if !input.is_empty() {
                return Err(input.error("unexpected tokens after has!(capability[, likely])"));
            }
            let key_text = key_text(&key);
            return Ok(HasInput::Test {
                key,
                key_text,
                layout,
            });
        }
        let mut arms = Vec::new();
        let mut key = Some(key);
        loop {
            let k = match key.take() {
                Some(k) => k,
                None => input.parse()?,
            };
            input.parse::<Token![=>]>()?;
            let body: Expr = input.parse()?;
            let (call, path) = match &body {
                Expr::Call(c) => match &*c.func {
                    Expr::Path(p) if p.qself.is_none() => (c.clone(), p.clone()),
                    other => return Err(syn::Error::new(other.span(), ARM_FORM)),
                },
                other => return Err(syn::Error::new(other.span(), ARM_FORM)),
            };
            let key_text = key_text(&k);
            arms.push(Arm {
                key: k,
                key_text,
                call,
                path,
            });
            if input.is_empty() || (input.peek(Token![,]) && input.peek2(syn::parse::End)) {
                return Err(syn::Error::new(
                    body.span(),
                    "has! with arms needs a last arm for when no key holds: `_ => expr` after \
                     this one",
                ));
            }
            input.parse::<Token![,]>()?;
            if input.peek(Token![_]) {
                input.parse::<Token![_]>()?;
                input.parse::<Token![=>]>()?;
                let otherwise: Expr = input.parse()?;
                if input.peek(Token![,]) {
                    input.parse::<Token![,]>()?;
                }
                if !input.is_empty() {
                    return Err(input.error("`_ => expr` must be the last arm"));
                }
                return Ok(HasInput::Arms { arms, otherwise });
            }
        }
    }
}

/// Expands `has!`.
pub fn expand(input: HasInput) -> syn::Result<TokenStream2> {
    match input {
        HasInput::Test {
            key,
            key_text,
            layout,
        } => Ok(test(&key, &key_text, layout)),
        HasInput::Arms { arms, otherwise } => {
            let mut out = quote!({ #otherwise });
            for arm in arms.iter().rev() {
                let cond = test(&arm.key, &arm.key_text, Layout::Auto);
                let run = run_arm(arm);
                out = quote!(if #cond { #run } else #out);
            }
            Ok(quote!({ #out }))
        }
    }
}

/// `has!(key)`: the bool, a site or (where the build guarantees the key) a constant.
fn test(key: &Key, key_text: &str, layout: Layout) -> TokenStream2 {
    let answer = format_ident!("__alt_has", span = Span::mixed_site());
    let site = site(key, key_text, layout);
    match guaranteed_by(key) {
        None => quote!({
            let #answer: bool = #site;
            #answer
        }),
        Some(features) => {
            let cfg = predicate(features);
            quote!({
                #[cfg(#cfg)]
                let #answer: bool = true;
                #[cfg(not(#cfg))]
                let #answer: bool = #site;
                #answer
            })
        }
    }
}

/// How one `has!` site is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    /// The expression's answer before patching.
    unpatched: bool,
    /// The answer that falls through (the code right after the site).
    falls_through: bool,
    /// The default is the `jmp` (the entry writes NOPs); otherwise a NOP (the entry writes the
    /// `jmp`).
    default_jumps: bool,
    /// The entry is keyed `!cap` (an erratum: it holds where the erratum is absent).
    entry_negated: bool,
}

impl Shape {
    fn of(erratum: bool, negated: bool, layout: Layout) -> Shape {
        // Unpatched, a feature is absent and an erratum present; `!` inverts the expression.
        let unpatched = erratum != negated;
        let falls_through = match layout {
            // The answer patching makes common falls through.
            Layout::Auto => !unpatched,
            Layout::Likely => true,
            Layout::Unlikely => false,
        };
        Shape {
            unpatched,
            falls_through,
            default_jumps: unpatched != falls_through,
            // The entry holds where the capability's answer differs from its unpatched one: a
            // feature present, an erratum absent.
            entry_negated: erratum,
        }
    }
}

/// The site: a labelled block whose `asm!` falls through to one answer or jumps to the other.
fn site(key: &Key, key_text: &str, layout: Layout) -> TokenStream2 {
    let erratum = matches!(key.capability.kind(), CapabilityKind::Erratum(_));
    let shape = Shape::of(erratum, key.negated, layout);
    let jump = vec![
        ".byte 0xe9".to_string(),
        ".long {alt_jump} - . - 4".to_string(),
    ];
    let nop5 = vec![".byte 0x0f, 0x1f, 0x44, 0x00, 0x00".to_string()];
    let (default, replacement) = if shape.default_jumps {
        (jump, Vec::new())
    } else {
        (nop5, jump)
    };
    let entry_key = Key {
        negated: shape.entry_negated,
        capability: key.capability,
    };
    let lines = crate::site::template(&SiteSpec {
        default: DefaultCode::Inline(default),
        entries: vec![EntrySpec {
            key: entry_key.encode(false),
            target: EntryTarget::Inline(replacement),
            name_operand: Some("alt_v0".into()),
        }],
        name_operand: Some("alt_sname".into()),
        effects: Declared {
            gprs: 0,
            effects: 0,
            probes: Vec::new(),
            jump_targets: vec!["{alt_jump}".into()],
        },
    });
    let label = syn::Lifetime::new("'__alt_has", Span::mixed_site());
    let falls_through = shape.falls_through;
    let other = !falls_through;
    let variant = (!shape.unpatched).to_string();
    let site_name = format!(":has!({key_text})");
    quote!(#label: {
        static __ALT_SITE_NAME: &str = concat!(module_path!(), ":", line!(), #site_name);
        static __ALT_VARIANT_0: &str = #variant;
        // SAFETY: the site is a 5-byte `jmp` to the label below or a 5-byte NOP; either leaves
        // every register, the flags, memory and the stack as they were, and the runtime only
        // ever writes the other of the two.
        #[allow(unused_unsafe)]
        unsafe {
            ::core::arch::asm!(
                #(#lines,)*
                alt_jump = label { break #label #other },
                alt_v0 = sym __ALT_VARIANT_0,
                alt_sname = sym __ALT_SITE_NAME,
                options(nomem, nostack, preserves_flags)
            )
        };
        #falls_through
    })
}

/// The branch of an arm: the checked call.
fn run_arm(arm: &Arm) -> TokenStream2 {
    let span = arm.path.span();
    let f = Ident::new("__alt_f", Span::mixed_site().located_at(span));
    let mut path = arm.path.path.clone();
    let generics = match path.segments.last_mut() {
        Some(last) => std::mem::replace(&mut last.arguments, syn::PathArguments::None),
        None => syn::PathArguments::None,
    };
    let args: Vec<&Expr> = arm.call.args.iter().collect();
    let bound: Vec<Ident> = (0..args.len())
        .map(|i| Ident::new(&format!("__alt_a{i}"), Span::mixed_site()))
        .collect();
    let holes = args.iter().map(|_| quote!(_));
    let features: &[&str] = if arm.key.negated {
        &[]
    } else {
        target_features(arm.key.capability)
    };
    let target_feature = if features.is_empty() {
        quote!()
    } else {
        let list = features.join(",");
        quote!(#[target_feature(enable = #list)])
    };
    let result = Ident::new("__alt_r", Span::mixed_site());
    let pointer = quote_spanned!(span=> fn(#(#holes),*) -> _);
    quote!({
        // An item, never a local variable: the check below and the call name the same function.
        use #path as #f;
        // Compiles only if the function is safe and its target features are among those the
        // key guarantees: such a function coerces to a safe `fn` pointer only in a function
        // compiled with its features.
        #[allow(dead_code, clippy::let_underscore_untyped)]
        #target_feature
        fn __alt_check() {
            let _: #pointer = #f #generics;
        }
        match (#(#args,)*) {
            (#(#bound,)*) => {
                // SAFETY: this branch runs only where the key holds (the site is patched to
                // it, or the build's target features guarantee it), and the check above proved
                // the function safe to call wherever the key's target features are present.
                #[allow(unused_unsafe)]
                let #result = unsafe { #f #generics(#(#bound),*) };
                #result
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_answer_false_for_a_feature_and_true_for_an_erratum_until_patched() {
        // (erratum, negated, layout) -> (unpatched, falls through, default jumps, entry !cap)
        let table = [
            ((false, false, Layout::Auto), (false, true, true, false)),
            ((true, false, Layout::Auto), (true, false, true, true)),
            ((false, true, Layout::Auto), (true, false, true, false)),
            ((true, true, Layout::Auto), (false, true, true, true)),
            (
                (false, false, Layout::Unlikely),
                (false, false, false, false),
            ),
            ((true, false, Layout::Likely), (true, true, false, true)),
            ((false, false, Layout::Likely), (false, true, true, false)),
            ((true, false, Layout::Unlikely), (true, false, true, true)),
        ];
        for ((erratum, negated, layout), (u, f, j, n)) in table {
            assert_eq!(
                Shape::of(erratum, negated, layout),
                Shape {
                    unpatched: u,
                    falls_through: f,
                    default_jumps: j,
                    entry_negated: n
                },
                "erratum {erratum}, negated {negated}"
            );
        }
    }
}
