//! Macros of **alt**: patchable call sites from Rust.
//!
//! Use them through the facade (crate `alternatives`, library `alt`), whose pages are the
//! reference: `alt::alternative` (the attribute), `alt::asm::alternative!` (bare instruction
//! swaps) and `alt::paravirt_ops!` (operations tables). Rust has one namespace for attribute and
//! function-like macros, so the bare form lives in `alt::asm`.
//!
//! The generated code reaches the facade only through its hidden `__private` module (at `::alt`,
//! or the path given with `crate = path` / `#[alt(crate = path)]`), and the table layouts come
//! from `alt-runtime` at expansion time; the three crates are released together.
//!
//! Modules: `args` (parsing the attribute and capability names), `sig` (signatures and
//! registers), `template` (`{x}`/`{ret}` substitution), `site` (the assembly of one site, its
//! table entries, names and effects records), `thunk` (register-saving thunks), `features`
//! (the target features a capability guarantees), `bare` (`alternative!`), `paravirt`
//! (`paravirt_ops!`), `docs` (the generated capability reference).

mod args;
mod bare;
mod docs;
mod features;
mod paravirt;
mod sig;
mod site;
mod template;
mod thunk;

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{parse_macro_input, ItemFn};

use alt_runtime::table::Effects;
use args::{AttrArgs, Body};
use sig::{gpr_bit, ValueKind, ARG_REGS, CLOBBERABLE, C_ABI_GPRS};
use site::{Declared, DefaultCode, EntrySpec, EntryTarget, SiteSpec};
use thunk::{thunk_lines, VectorState};

/// (Defined in the `alt-macros` crate.)
#[proc_macro_attribute]
pub fn alternative(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = parse_macro_input!(attr as AttrArgs);
    let func = parse_macro_input!(item as ItemFn);
    expand_fn(args, func)
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

fn expand_fn(args: AttrArgs, func: ItemFn) -> syn::Result<TokenStream2> {
    let checked = sig::check(&func.sig)?;
    if args.replacements.is_empty() {
        return Err(syn::Error::new(
            Span::call_site(),
            "#[alternative] needs at least one replacement, e.g. \
             #[alternative(popcnt => unsafe inline(\"popcnt {ret}, {x}\"))]",
        ));
    }
    for r in &args.clobbers {
        if !CLOBBERABLE.contains(&r.to_string().as_str()) {
            return Err(syn::Error::new(
                r.span(),
                format!(
                    "`{r}` cannot be clobbered; a site may clobber the caller-saved registers {}",
                    CLOBBERABLE.join(", ")
                ),
            ));
        }
    }
    // The first `unsafe inline` acknowledges the site's assembly: the site's `unsafe` block
    // carries its span, so that the `unsafe_code` lint (and `#![forbid(unsafe_code)]`) sees it.
    let inline_unsafety = args.replacements.iter().find_map(|r| match &r.body {
        Body::Inline { unsafety, .. } => Some(*unsafety),
        Body::Function(_) => None,
    });
    let has_inline = inline_unsafety.is_some();
    let thunks = has_inline && args.clobber_abi.is_none();
    if let (Some(span), Some(_)) = (args.preserve_vectors, args.clobber_abi) {
        return Err(syn::Error::new(
            span,
            "`preserve_vectors` and `clobber_abi` contradict each other: clobber_abi declares \
             every vector register clobbered",
        ));
    }
    let save_vectors = args.preserve_vectors.is_some();
    // Nothing the attribute emits names the facade today (only `core`); `crate = path` is
    // accepted so that code written for a renamed facade keeps working when it does.
    let _ = facade(args.krate.as_ref());

    let ItemFn {
        attrs,
        vis,
        sig: fsig,
        block,
    } = func;
    let name = &fsig.ident;
    let unsafety = &fsig.unsafety;
    let inputs = &fsig.inputs;
    let output = &fsig.output;
    let arg_types: Vec<&syn::Type> = checked.args.iter().map(|a| &a.ty).collect();
    // The shims' own argument names: call-site spans, so that the compiler's help for a
    // variant with another signature never suggests editing the user's signature.
    let shim_args: Vec<syn::Ident> = (0..checked.args.len())
        .map(|i| format_ident!("__alt_a{}", i))
        .collect();
    let attrs: Vec<&syn::Attribute> = attrs
        .iter()
        .filter(|a| !a.path().is_ident("inline"))
        .collect();

    // The default, as an extern "C" function with the original body.
    let mut items = vec![quote! {
        #[allow(clippy::missing_safety_doc, clippy::too_many_arguments, unused_unsafe)]
        #unsafety extern "C" fn __alt_default(#inputs) #output #block
    }];

    // Function replacements: extern "C" shims that call the user's function.
    let mut entries = Vec::new();
    let mut operands = Vec::new();
    let mut call_targets: Vec<(syn::Ident, syn::Ident)> = Vec::new(); // (thunk, implementation)
    for (i, r) in args.replacements.iter().enumerate() {
        let variant_static = format_ident!("__ALT_VARIANT_{}", i);
        let variant_op = format!("alt_v{i}");
        let variant_name = match &r.body {
            Body::Inline { lines, .. } => lines
                .iter()
                .map(|l| l.value().trim().to_string())
                .collect::<Vec<_>>()
                .join("; "),
            Body::Function(path) => quote!(#path).to_string().replace(' ', ""),
        };
        items.push(quote! {
            static #variant_static: &str = #variant_name;
        });
        let vop = format_ident!("{}", variant_op);
        operands.push(quote!(#vop = sym #variant_static));
        match &r.body {
            Body::Inline { lines, .. } => {
                let mut text = Vec::new();
                for l in lines {
                    text.push(template::substitute(&l.value(), l.span(), &checked)?);
                }
                entries.push(EntrySpec {
                    key: r.key.encode(false),
                    target: EntryTarget::Inline(text),
                    name_operand: Some(variant_op),
                });
            }
            Body::Function(path) => {
                let shim = format_ident!("__alt_shim_{}", i);
                items.push(direct_call_shim(
                    &shim,
                    path,
                    &r.key,
                    unsafety.is_some(),
                    &shim_args,
                    &arg_types,
                    output,
                ));
                let op = format!("alt_t{i}");
                let target = if thunks {
                    let t = format_ident!("__alt_thunk_{}", i);
                    call_targets.push((t.clone(), shim.clone()));
                    t
                } else {
                    shim
                };
                let opi = format_ident!("{}", op);
                operands.push(quote!(#opi = sym #target));
                entries.push(EntrySpec {
                    key: r.key.encode(true),
                    target: EntryTarget::Call(op),
                    name_operand: Some(variant_op),
                });
            }
        }
    }
    let default_impl = format_ident!("__alt_default");
    let default_target = if thunks {
        let t = format_ident!("__alt_thunk_default");
        call_targets.push((t.clone(), default_impl));
        t
    } else {
        default_impl
    };
    operands.insert(0, quote!(alt_default = sym #default_target));
    items.push(quote! {
        static __ALT_FN_NAME: &str = concat!(module_path!(), "::", stringify!(#name));
    });
    operands.push(quote!(alt_fname = sym __ALT_FN_NAME));

    for (thunk_name, target) in &call_targets {
        items.push(if save_vectors {
            thunk_items(thunk_name, target)
        } else {
            gpr_thunk_item(thunk_name, target)
        });
    }

    // What the site tells the compiler, recorded for `alt-tablegen verify`: the result
    // register, the clobbers (everything a C call changes without thunks), the flags, memory,
    // the stack, and the vector registers unless the thunks save them.
    let clobbered: Vec<String> = args.clobbers.iter().map(|c| c.to_string()).collect();
    let mut gprs = gpr_bit("rax").unwrap_or(0);
    for c in &clobbered {
        gprs |= gpr_bit(c).unwrap_or(0);
    }
    let mut effects =
        Effects::FLAGS | Effects::MEMORY_READ | Effects::MEMORY_WRITE | Effects::STACK;
    if !thunks {
        for r in C_ABI_GPRS {
            gprs |= gpr_bit(r).unwrap_or(0);
        }
    }
    if !thunks || !save_vectors {
        effects |= Effects::VECTORS;
    }

    let lines = site::template(&SiteSpec {
        default: DefaultCode::Call("alt_default".into()),
        entries,
        name_operand: Some("alt_fname".into()),
        effects: Declared {
            gprs,
            effects: effects.bits(),
            probes: Vec::new(),
        },
    });

    // Register operands.
    let RegisterOperands {
        regs,
        ret_decl,
        ret_out,
        ret_value,
    } = register_operands(&checked, &clobbered);
    let site = |extra: TokenStream2| {
        let asm = quote! {
            ::core::arch::asm!(
                #(#lines,)*
                #(#operands,)*
                #(#regs,)*
                #ret_out,
                #extra
            );
        };
        // An inline template is the user's unsafe code: the block carries their `unsafe`
        // token's span. A site with only function variants is the macro's own: it calls the
        // default through a register-preserving thunk (or declares the C ABI's clobbers), and
        // the runtime only rewrites it with a direct call whose capability holds.
        match inline_unsafety {
            Some(span) => quote_spanned!(span=> #[allow(unused_unsafe)] unsafe { #asm }),
            None => quote!(#[allow(unused_unsafe)] unsafe { #asm }),
        }
    };
    let asm = if !thunks {
        site(quote!(clobber_abi("C"),))
    } else if save_vectors {
        site(quote!())
    } else {
        // The vector registers are declared clobbered; asm! operands cannot carry `cfg`, so
        // the AVX-512 variant (which adds zmm16-31 and the opmask registers) is a second copy.
        let xmm: Vec<String> = (0..16).map(|i| format!("xmm{i}")).collect();
        let base = quote!(#(out(#xmm) _,)*);
        let zmm: Vec<String> = (16..32).map(|i| format!("zmm{i}")).collect();
        let k: Vec<String> = (1..8).map(|i| format!("k{i}")).collect();
        let plain = site(base.clone());
        let avx512 = site(quote!(#base #(out(#zmm) _,)* #(out(#k) _,)*));
        quote! {
            #[cfg(not(target_feature = "avx512f"))]
            #plain
            #[cfg(target_feature = "avx512f")]
            #avx512
        }
    };

    Ok(quote! {
        #(#attrs)*
        #[inline(always)]
        #vis #unsafety fn #name(#inputs) #output {
            #(#items)*
            #ret_decl
            #asm
            #ret_value
        }
    })
}

/// The `extern "C"` shim a direct-call variant is reached through.
///
/// The shim is compiled with the target features the capability guarantees and takes the
/// variant as a function pointer of the function's own signature: a safe `fn` pointer for a
/// safe function, which a safe `#[target_feature]` function coerces to there (Rust allows it
/// where its features are enabled) and an `unsafe fn` refuses to (its contract is not the
/// function's); an `unsafe fn` pointer for an `unsafe fn`, whose callers keep its contract. A
/// variant with another signature is one `expected fn pointer ..., found fn item ...` error at
/// its path.
fn direct_call_shim(
    shim: &syn::Ident,
    path: &syn::Path,
    key: &args::Key,
    unsafe_site: bool,
    args: &[syn::Ident],
    types: &[&syn::Type],
    output: &syn::ReturnType,
) -> TokenStream2 {
    let features: Vec<&str> = if key.negated {
        Vec::new()
    } else {
        features::target_features(key.capability).to_vec()
    };
    let target_feature = if features.is_empty() {
        quote!()
    } else {
        let list = features.join(",");
        quote!(#[target_feature(enable = #list)])
    };
    let span = path.span();
    let ret = match output {
        syn::ReturnType::Default => quote!(),
        syn::ReturnType::Type(_, ty) => {
            let ty = respan(quote!(#ty), span);
            quote_spanned!(span=> -> #ty)
        }
    };
    let types_at_path: Vec<TokenStream2> = types.iter().map(|t| respan(quote!(#t), span)).collect();
    let (unsafety, pointer, call) = if unsafe_site {
        (
            quote!(unsafe),
            quote_spanned!(span=> unsafe fn(#(#types_at_path),*) #ret),
            quote!(unsafe { __alt_variant(#(#args),*) }),
        )
    } else {
        (
            quote!(),
            quote_spanned!(span=> fn(#(#types_at_path),*) #ret),
            quote!(__alt_variant(#(#args),*)),
        )
    };
    quote! {
        #[allow(clippy::missing_safety_doc, clippy::too_many_arguments, unused_unsafe)]
        #target_feature
        #unsafety extern "C" fn #shim(#(#args: #types),*) #output {
            let __alt_variant: #pointer = #path;
            #call
        }
    }
}

/// The tokens with every span set to `span` (so that an error about them points there).
fn respan(tokens: TokenStream2, span: Span) -> TokenStream2 {
    tokens
        .into_iter()
        .map(|mut tt| {
            if let proc_macro2::TokenTree::Group(g) = &tt {
                let mut ng = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                ng.set_span(span);
                tt = proc_macro2::TokenTree::Group(ng);
            } else {
                tt.set_span(span);
            }
            tt
        })
        .collect()
}

/// A naked thunk saving the caller-saved general-purpose registers (but `rax`) around a call of
/// `target`; the site declares the vector registers clobbered.
fn gpr_thunk_item(name: &syn::Ident, target: &syn::Ident) -> TokenStream2 {
    let lines = thunk_lines(VectorState::None);
    quote! {
        #[unsafe(naked)]
        unsafe extern "C" fn #name() {
            ::core::arch::naked_asm!(#(#lines,)* target = sym #target)
        }
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

/// A naked thunk saving the caller-saved registers around a call of `target`, in one variant
/// per vector-state configuration.
fn thunk_items(name: &syn::Ident, target: &syn::Ident) -> TokenStream2 {
    let target: syn::Path = target.clone().into();
    thunk_items_with(name, &target, false, quote!(), quote!(), quote!())
}

/// A naked thunk as [`thunk_items`]; with `indirect`, `target` is a static holding the function
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
