//! `#[alternative]`: a function whose every call is a patchable site.
//!
//! The function becomes an `#[inline(always)]` wrapper around one `asm!` block (the site) that
//! calls the original body, compiled as an `extern "C"` function, through a register-saving
//! thunk, with one table entry per replacement. Where the build's target features guarantee an
//! entry ([`crate::certain`]), the wrapper is emitted once per class of builds under `cfg`:
//!
//! - the first entry guaranteed: no site, no entry, nothing to patch; the variant itself, an
//!   ordinary `asm!` block with the site's operands (still behind the user's `unsafe`) or an
//!   ordinary call of the function;
//! - a later entry guaranteed: the site keeps the entries up to it and drops those after it,
//!   which could never win;
//! - none: the whole site.
//!
//! Every class compiles the default and every direct-call shim, so that each build checks the
//! same signatures and uses the same functions.

use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::ItemFn;

use alt_runtime::table::Effects;

use crate::args::{self, AttrArgs, Body, Key};
use crate::certain;
use crate::features;
use crate::sig::{self, gpr_bit, Checked, CLOBBERABLE, C_ABI_GPRS};
use crate::site::{self, Declared, DefaultCode, EntrySpec, EntryTarget, SiteSpec};
use crate::template;
use crate::thunk::{thunk_lines, VectorState};
use crate::{facade, register_operands, thunk_items_with, RegisterOperands};

/// One replacement, ready to emit.
struct Variant<'a> {
    key: &'a Key,
    /// Its name for reports: the template text or the function's path.
    name: String,
    code: Code<'a>,
}

enum Code<'a> {
    /// Template lines with the registers written in, and the user's `unsafe` token.
    Inline { text: Vec<String>, unsafety: Span },
    /// A direct call of `path`, checked by (and, at a site, reached through) `shim`.
    Call {
        path: &'a syn::Path,
        shim: syn::Ident,
    },
}

/// What every class of builds shares.
struct Function<'a> {
    checked: Checked,
    args: &'a AttrArgs,
    variants: Vec<Variant<'a>>,
    save_vectors: bool,
    name: &'a syn::Ident,
}

/// Expands `#[alternative(...)]` on `func`.
pub fn expand(args: AttrArgs, func: ItemFn) -> syn::Result<TokenStream2> {
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
    if let (Some(span), Some(_)) = (args.preserve_vectors, args.clobber_abi) {
        return Err(syn::Error::new(
            span,
            "`preserve_vectors` and `clobber_abi` contradict each other: clobber_abi declares \
             every vector register clobbered",
        ));
    }
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

    // The default, as an extern "C" function with the original body, and the direct-call
    // shims: in every build, whether it calls them or not.
    let mut common = vec![quote! {
        #[allow(clippy::missing_safety_doc, clippy::too_many_arguments, unused_unsafe, dead_code)]
        #unsafety extern "C" fn __alt_default(#inputs) #output #block
    }];
    let mut variants = Vec::new();
    for (i, r) in args.replacements.iter().enumerate() {
        let (name, code) = match &r.body {
            Body::Inline { lines, unsafety } => {
                let mut text = Vec::new();
                for l in lines {
                    text.push(template::substitute(&l.value(), l.span(), &checked)?);
                }
                let name = lines
                    .iter()
                    .map(|l| l.value().trim().to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                (
                    name,
                    Code::Inline {
                        text,
                        unsafety: *unsafety,
                    },
                )
            }
            Body::Function(path) => {
                let shim = format_ident!("__alt_shim_{}", i);
                common.push(direct_call_shim(
                    &shim,
                    path,
                    &r.key,
                    unsafety.is_some(),
                    &shim_args,
                    &arg_types,
                    output,
                ));
                (
                    quote!(#path).to_string().replace(' ', ""),
                    Code::Call { path, shim },
                )
            }
        };
        variants.push(Variant {
            key: &r.key,
            name,
            code,
        });
    }
    let f = Function {
        checked,
        args: &args,
        variants,
        save_vectors: args.preserve_vectors.is_some(),
        name,
    };

    let keys: Vec<&Key> = args.replacements.iter().map(|r| &r.key).collect();
    let arms = certain::arms(&keys);
    let mut out = TokenStream2::new();
    for arm in &arms {
        let body = match arm.first {
            Some(0) => direct(&f, 0),
            Some(i) => site_body(&f, i + 1),
            None => site_body(&f, f.variants.len()),
        };
        let cfg = if arms.len() > 1 {
            let c = &arm.cfg;
            quote!(#[cfg(#c)])
        } else {
            quote!()
        };
        out.extend(quote! {
            #cfg
            #(#attrs)*
            #[inline(always)]
            #vis #unsafety fn #name(#inputs) #output {
                #(#common)*
                #body
            }
        });
    }
    Ok(out)
}

/// The `unsafe` of the first inline template among `variants`.
fn first_inline(variants: &[Variant<'_>]) -> Option<Span> {
    variants.iter().find_map(|v| match v.code {
        Code::Inline { unsafety, .. } => Some(unsafety),
        Code::Call { .. } => None,
    })
}

/// An empty `unsafe {}` with the span of the user's `unsafe inline`, for code that leaves out
/// every template: the `unsafe_code` lint (and `#![forbid(unsafe_code)]`) sees the
/// acknowledgement in every build, whichever entries the build compiles.
fn acknowledgement(all: &[Variant<'_>], used: &[Variant<'_>]) -> TokenStream2 {
    match (first_inline(all), first_inline(used)) {
        (Some(span), None) => quote_spanned!(span=> #[allow(unused_unsafe)] unsafe {}),
        _ => quote!(),
    }
}

/// How an `asm!` block declares the registers a call or a template may change beyond its
/// operands.
enum Clobbers {
    /// `clobber_abi("C")`: everything a C call changes.
    Abi,
    /// Nothing more: thunks save the vector registers (`preserve_vectors`).
    Nothing,
    /// The vector registers (and, with AVX-512F, `zmm16`-`zmm31` and the opmask registers).
    Vectors,
}

/// One `asm!` statement, inside an `unsafe` block spanned at the user's `unsafe` token when the
/// block holds their template.
fn asm_statement(
    lines: &[String],
    operands: &[TokenStream2],
    regs: &RegisterOperands,
    unsafety: Option<Span>,
    clobbers: Clobbers,
) -> TokenStream2 {
    let RegisterOperands { regs, ret_out, .. } = regs;
    let block = |extra: TokenStream2| {
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
        match unsafety {
            Some(span) => quote_spanned!(span=> #[allow(unused_unsafe)] unsafe { #asm }),
            None => quote!(#[allow(unused_unsafe)] unsafe { #asm }),
        }
    };
    match clobbers {
        Clobbers::Abi => block(quote!(clobber_abi("C"),)),
        Clobbers::Nothing => block(quote!()),
        Clobbers::Vectors => {
            // asm! operands cannot carry `cfg`, so the AVX-512 variant (which adds zmm16-31
            // and the opmask registers) is a second copy.
            let xmm: Vec<String> = (0..16).map(|i| format!("xmm{i}")).collect();
            let base = quote!(#(out(#xmm) _,)*);
            let zmm: Vec<String> = (16..32).map(|i| format!("zmm{i}")).collect();
            let k: Vec<String> = (1..8).map(|i| format!("k{i}")).collect();
            let plain = block(base.clone());
            let avx512 = block(quote!(#base #(out(#zmm) _,)* #(out(#k) _,)*));
            quote! {
                #[cfg(not(target_feature = "avx512f"))]
                #plain
                #[cfg(target_feature = "avx512f")]
                #avx512
            }
        }
    }
}

/// The body of a build that guarantees entry `i`, the first: the variant, with no site.
fn direct(f: &Function<'_>, i: usize) -> TokenStream2 {
    let v = &f.variants[i];
    let clobbered: Vec<String> = f.args.clobbers.iter().map(|c| c.to_string()).collect();
    let ack = acknowledgement(&f.variants, &f.variants[i..=i]);
    match &v.code {
        Code::Inline { text, unsafety } => {
            // The template as an ordinary asm! block: the same register operands and the
            // same promises as the site, so the template may rely on what it could there.
            let regs = register_operands(&f.checked, &clobbered);
            let clobbers = if f.args.clobber_abi.is_some() {
                Clobbers::Abi
            } else if f.save_vectors {
                Clobbers::Nothing
            } else {
                Clobbers::Vectors
            };
            let asm = asm_statement(text, &[], &regs, Some(*unsafety), clobbers);
            let (decl, value) = (&regs.ret_decl, &regs.ret_value);
            quote! {
                #decl
                #asm
                #value
            }
        }
        Code::Call { path, .. } => {
            let args = f.checked.args.iter().map(|a| &a.name);
            let result = syn::Ident::new("__alt_r", Span::mixed_site());
            quote! {
                #ack
                // SAFETY: the shim above compiles only if the variant is a safe function whose
                // target features the capability guarantees (or, in an `unsafe fn`, shares its
                // contract), and this build enables those features everywhere.
                #[allow(unused_unsafe)]
                let #result = unsafe { #path(#(#args),*) };
                #result
            }
        }
    }
}

/// The body of a build that guarantees none of the first `n - 1` entries: a site with the
/// first `n` entries (the last of which the build may guarantee: those after it never win).
fn site_body(f: &Function<'_>, n: usize) -> TokenStream2 {
    let used = &f.variants[..n];
    let inline_unsafety = first_inline(used);
    let thunks = inline_unsafety.is_some() && f.args.clobber_abi.is_none();
    let mut items = Vec::new();
    let mut entries = Vec::new();
    let mut operands = Vec::new();
    let mut call_targets: Vec<(syn::Ident, syn::Ident)> = Vec::new(); // (thunk, implementation)
    for (i, v) in used.iter().enumerate() {
        let variant_static = format_ident!("__ALT_VARIANT_{}", i);
        let variant_op = format!("alt_v{i}");
        let name = &v.name;
        items.push(quote! {
            static #variant_static: &str = #name;
        });
        let vop = format_ident!("{}", variant_op);
        operands.push(quote!(#vop = sym #variant_static));
        match &v.code {
            Code::Inline { text, .. } => entries.push(EntrySpec {
                key: v.key.encode(false),
                target: EntryTarget::Inline(text.clone()),
                name_operand: Some(variant_op),
            }),
            Code::Call { shim, .. } => {
                let op = format!("alt_t{i}");
                let target = if thunks {
                    let t = format_ident!("__alt_thunk_{}", i);
                    call_targets.push((t.clone(), shim.clone()));
                    t
                } else {
                    shim.clone()
                };
                let opi = format_ident!("{}", op);
                operands.push(quote!(#opi = sym #target));
                entries.push(EntrySpec {
                    key: v.key.encode(true),
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
    let name = f.name;
    items.push(quote! {
        static __ALT_FN_NAME: &str = concat!(module_path!(), "::", stringify!(#name));
    });
    operands.push(quote!(alt_fname = sym __ALT_FN_NAME));

    for (thunk_name, target) in &call_targets {
        items.push(if f.save_vectors {
            thunk_items(thunk_name, target)
        } else {
            gpr_thunk_item(thunk_name, target)
        });
    }

    // What the site tells the compiler, recorded for `alt-tablegen verify`: the result
    // register, the clobbers (everything a C call changes without thunks), the flags, memory,
    // the stack, and the vector registers unless the thunks save them.
    let clobbered: Vec<String> = f.args.clobbers.iter().map(|c| c.to_string()).collect();
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
    if !thunks || !f.save_vectors {
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
            jump_targets: Vec::new(),
        },
    });

    let regs = register_operands(&f.checked, &clobbered);
    let clobbers = if !thunks {
        Clobbers::Abi
    } else if f.save_vectors {
        Clobbers::Nothing
    } else {
        Clobbers::Vectors
    };
    let asm = asm_statement(&lines, &operands, &regs, inline_unsafety, clobbers);
    let ack = acknowledgement(&f.variants, used);
    let (decl, value) = (&regs.ret_decl, &regs.ret_value);
    quote! {
        #(#items)*
        #ack
        #decl
        #asm
        #value
    }
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
        #[allow(clippy::missing_safety_doc, clippy::too_many_arguments, unused_unsafe, dead_code)]
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

/// A naked thunk saving the caller-saved registers around a call of `target`, in one variant
/// per vector-state configuration.
fn thunk_items(name: &syn::Ident, target: &syn::Ident) -> TokenStream2 {
    let target: syn::Path = target.clone().into();
    thunk_items_with(name, &target, false, quote!(), quote!(), quote!())
}
