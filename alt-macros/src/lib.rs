//! Macros of **alt**: patchable call sites from Rust.
//!
//! Use them through the facade (crate `alternatives`, library `alt`), whose pages are the
//! reference: `alt::alternative` (the attribute), `alt::asm::alternative!` (bare instruction
//! swaps), `alt::has!` (a capability as a patched branch) and `alt::paravirt_ops!` (operations
//! tables). Rust has one namespace for attribute and
//! function-like macros, so the bare form lives in `alt::asm`.
//!
//! The generated code reaches the facade only through its hidden `__private` module (at `::alt`,
//! or the path given with `crate = path` / `#[alt(crate = path)]`), and the table layouts come
//! from `alt-runtime` at expansion time; the three crates are released together.
//!
//! Modules: `args` (parsing the attribute and capability names), `sig` (signatures and
//! registers), `template` (`{x}`/`{ret}` substitution), `site` (the assembly of one site, its
//! table entries, names and effects records), `thunk` (register-saving thunks), `features`
//! (the target features a capability guarantees), `certain` (capabilities the build's target
//! features guarantee: the `cfg` arms), `attribute` (`#[alternative]`), `bare`
//! (`alternative!`), `has` (`has!`), `paravirt` (`paravirt_ops!`), `docs` (the generated
//! capability reference).

mod args;
mod attribute;
mod bare;
mod certain;
mod docs;
mod features;
mod has;
mod paravirt;
mod sig;
mod site;
mod template;
mod thunk;

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::{parse_macro_input, ItemFn};

use args::AttrArgs;
use sig::{ValueKind, ARG_REGS};
use thunk::{thunk_lines, VectorState};

/// (Defined in the `alt-macros` crate.)
#[proc_macro_attribute]
pub fn alternative(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = parse_macro_input!(attr as AttrArgs);
    let func = parse_macro_input!(item as ItemFn);
    attribute::expand(args, func)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// (Defined in the `alt-macros` crate.)
#[proc_macro]
pub fn alternative_asm(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as bare::BareInput);
    bare::expand(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// (Defined in the `alt-macros` crate.)
#[proc_macro]
pub fn has(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as has::HasInput);
    has::expand(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// (Defined in the `alt-macros` crate.)
#[proc_macro]
pub fn paravirt_ops(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as paravirt::TableInput);
    paravirt::expand(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// The capability reference, generated from the capability table: a Markdown string for
/// `#[doc = ...]`. For the `alt` crate's documentation.
#[doc(hidden)]
#[proc_macro]
pub fn __capability_reference(input: TokenStream) -> TokenStream {
    let _ = input;
    let text = docs::capability_reference();
    quote!(#text).into()
}

/// The path generated code reaches the facade through: `crate = path`, or `::alt`.
pub(crate) fn facade(krate: Option<&syn::Path>) -> TokenStream2 {
    match krate {
        Some(p) => quote!(#p),
        None => quote!(::alt),
    }
}

/// The `asm!` operands that carry a site's arguments (System V registers) and result (`rax`).
pub(crate) struct RegisterOperands {
    pub regs: Vec<TokenStream2>,
    pub ret_decl: TokenStream2,
    pub ret_out: TokenStream2,
    pub ret_value: TokenStream2,
}

/// Operands for a checked signature; `clobbered` registers are declared changed (arguments in
/// them become `inout(..) => _`).
pub(crate) fn register_operands(checked: &sig::Checked, clobbered: &[String]) -> RegisterOperands {
    let mut regs = Vec::new();
    for (i, a) in checked.args.iter().enumerate() {
        let reg = ARG_REGS[i][0];
        let n = &a.name;
        let value = match a.kind {
            ValueKind::Int { bits, signed } if bits < 32 => {
                if signed {
                    quote!(#n as i32)
                } else {
                    quote!(#n as u32)
                }
            }
            ValueKind::Bool => quote!(#n as u32),
            _ => quote!(#n),
        };
        if clobbered.iter().any(|c| c == reg) {
            regs.push(quote!(inout(#reg) #value => _));
        } else {
            regs.push(quote!(in(#reg) #value));
        }
    }
    for c in clobbered {
        let is_input = ARG_REGS[..checked.args.len()].iter().any(|r| r[0] == c);
        if !is_input && c != "rax" {
            regs.push(quote!(out(#c) _));
        }
    }
    let (ret_decl, ret_out, ret_value) = match &checked.ret {
        None => (quote!(), quote!(lateout("rax") _), quote!()),
        Some((ty, kind)) => match kind {
            ValueKind::Int { bits, .. } if *bits < 32 => (
                quote!(let __alt_ret: u32;),
                quote!(lateout("rax") __alt_ret),
                quote!(__alt_ret as #ty),
            ),
            ValueKind::Bool => (
                quote!(let __alt_ret: u32;),
                quote!(lateout("rax") __alt_ret),
                quote!((__alt_ret as u8) != 0),
            ),
            _ => (
                quote!(let __alt_ret: #ty;),
                quote!(lateout("rax") __alt_ret),
                quote!(__alt_ret),
            ),
        },
    };
    RegisterOperands {
        regs,
        ret_decl,
        ret_out,
        ret_value,
    }
}

/// A naked thunk as `attribute::thunk_items`; with `indirect`, `target` is a static holding the function
/// pointer to call (`call qword ptr [rip + target]`). `params` and `output` give the thunk the
/// signature of the function it stands for (it ignores them: the registers pass through).
pub(crate) fn thunk_items_with(
    name: &syn::Ident,
    target: &syn::Path,
    indirect: bool,
    params: TokenStream2,
    output: TokenStream2,
    vis: TokenStream2,
) -> TokenStream2 {
    let variant = |v: VectorState| {
        let mut lines = thunk_lines(v);
        if indirect {
            for l in &mut lines {
                if l == "call {target}" {
                    *l = "call qword ptr [rip + {target}]".to_string();
                }
            }
        }
        quote! {
            #[unsafe(naked)]
            #vis unsafe extern "C" fn #name(#params) #output {
                ::core::arch::naked_asm!(#(#lines,)* target = sym #target)
            }
        }
    };
    let sse = variant(VectorState::Sse);
    let avx = variant(VectorState::Avx);
    let avx512 = variant(VectorState::Avx512 { bw: false });
    let avx512bw = variant(VectorState::Avx512 { bw: true });
    quote! {
        #[cfg(not(target_feature = "avx"))]
        #sse
        #[cfg(all(target_feature = "avx", not(target_feature = "avx512f")))]
        #avx
        #[cfg(all(target_feature = "avx512f", not(target_feature = "avx512bw")))]
        #avx512
        #[cfg(all(target_feature = "avx512f", target_feature = "avx512bw"))]
        #avx512bw
    }
}
