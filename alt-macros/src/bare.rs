//! `alternative!`: bare instruction swaps.

use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::{LitStr, Token};

use crate::args::Key;
use crate::site::{DefaultCode, EntrySpec, EntryTarget, SiteSpec};

/// `"default", key => "replacement", ..., asm operands and options`.
pub struct BareInput {
    default: LitStr,
    replacements: Vec<(Key, LitStr)>,
    /// Operands, in the order written.
    operands: Vec<TokenStream2>,
    /// `options(...)` and `clobber_abi(...)`, which `asm!` wants last.
    trailing: Vec<TokenStream2>,
}

impl Parse for BareInput {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let default: LitStr = input.parse()?;
        let mut replacements = Vec::new();
        let mut operands = Vec::new();
        let mut trailing = Vec::new();
        while !input.is_empty() {
            input.parse::<Token![,]>()?;
            if input.is_empty() {
                break;
            }
            let is_key =
                input.peek(Token![!]) || (input.peek(syn::Ident) && input.peek2(Token![=>]));
            if is_key && operands.is_empty() && trailing.is_empty() {
                let key: Key = input.parse()?;
                input.parse::<Token![=>]>()?;
                let text: LitStr = input.parse()?;
                replacements.push((key, text));
                continue;
            }
            // One asm! argument: tokens up to the next top-level comma.
            let mut item = TokenStream2::new();
            while !input.is_empty() && !input.peek(Token![,]) {
                let tt: proc_macro2::TokenTree = input.parse()?;
                item.extend(std::iter::once(tt));
            }
            let first = item.clone().into_iter().next().map(|t| t.to_string());
            match first.as_deref() {
                Some("options") | Some("clobber_abi") => trailing.push(item),
                _ => operands.push(item),
            }
        }
        if replacements.is_empty() {
            return Err(syn::Error::new(
                default.span(),
                "alternative! needs at least one replacement after the default: \
                 alternative!(\"\", lfence_serializing => \"lfence\")",
            ));
        }
        Ok(BareInput {
            default,
            replacements,
            operands,
            trailing,
        })
    }
}

fn lines(s: &LitStr) -> Vec<String> {
    s.value()
        .split(['\n', ';'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Expands to an `asm!` invocation (to be used inside `unsafe`).
pub fn expand(input: BareInput) -> syn::Result<TokenStream2> {
    let mut statics = Vec::new();
    let mut named = Vec::new();
    let mut entries = Vec::new();
    for (i, (key, text)) in input.replacements.iter().enumerate() {
        let st = format_ident!("__ALT_VARIANT_{}", i);
        let op = format_ident!("alt_v{}", i);
        let name = text.value().trim().to_string();
        let name = if name.is_empty() {
            String::from("(nothing)")
        } else {
            name
        };
        statics.push(quote!(static #st: &str = #name;));
        named.push(quote!(#op = sym #st));
        entries.push(EntrySpec {
            key: key.encode(false),
            target: EntryTarget::Inline(lines(text)),
            name_operand: Some(op.to_string()),
        });
    }
    named.push(quote!(alt_sname = sym __ALT_SITE_NAME));
    let lines = crate::site::template(&SiteSpec {
        default: DefaultCode::Inline(lines(&input.default)),
        entries,
        name_operand: Some("alt_sname".into()),
    });
    let operands = &input.operands;
    let trailing = &input.trailing;
    Ok(quote! {{
        static __ALT_SITE_NAME: &str = concat!(module_path!(), ":", line!());
        #(#statics)*
        ::core::arch::asm!(
            #(#lines,)*
            #(#operands,)*
            #(#named,)*
            #(#trailing,)*
        )
    }})
}
