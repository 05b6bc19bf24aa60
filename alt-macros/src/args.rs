//! Parsing the arguments of `#[alternative(...)]` and the replacement list of `alternative!`.

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Ident, LitStr, Path, Token};

use alt_runtime::capability::CapabilityNames;
use alt_runtime::table::{AltEntry, AltFlags};
use alt_runtime::Capability;

/// A capability key as written: `popcnt`, `!erratum_amd_div0`.
pub struct Key {
    pub negated: bool,
    pub capability: Capability,
}

impl Key {
    /// The `key` field of the table entry.
    pub fn encode(&self, direct_call: bool) -> u16 {
        let mut flags = AltFlags::empty();
        if self.negated {
            flags |= AltFlags::NOT;
        }
        if direct_call {
            flags |= AltFlags::DIRECT_CALL;
        }
        AltEntry::make_key(self.capability.id(), flags)
    }
}

impl Parse for Key {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let negated = input.peek(Token![!]);
        if negated {
            input.parse::<Token![!]>()?;
        }
        let (text, span) = parse_name(input)?;
        let capability = lookup(&text, span)?;
        Ok(Key {
            negated,
            capability,
        })
    }
}

/// A capability name as written: `popcnt`, `sse4_2`, `sse4.2`, `SSE4.2`, `sse4-2` or a string
/// `"sse4.2"`. Returns the text and a span covering it (its first token on stable Rust).
fn parse_name(input: ParseStream) -> syn::Result<(String, Span)> {
    if input.peek(LitStr) {
        let s: LitStr = input.parse()?;
        return Ok((s.value(), s.span()));
    }
    let first: Ident = input.call(syn::ext::IdentExt::parse_any)?;
    let span = first.span();
    let mut text = first.to_string();
    // `sse4.2` lexes as `sse4` `.2`... or `sse4` `.` `2`; `sse4-2` as `sse4` `-` `2`.
    while (input.peek(Token![.]) || input.peek(Token![-])) && !input.peek(Token![=>]) {
        let sep = if input.peek(Token![.]) {
            input.parse::<Token![.]>()?;
            '.'
        } else {
            input.parse::<Token![-]>()?;
            '-'
        };
        let part = if input.peek(syn::LitInt) {
            input.parse::<syn::LitInt>()?.to_string()
        } else if input.peek(syn::LitFloat) {
            input.parse::<syn::LitFloat>()?.to_string()
        } else {
            input
                .call(<Ident as syn::ext::IdentExt>::parse_any)?
                .to_string()
        };
        text.push(sep);
        text.push_str(&part);
    }
    Ok((text, span))
}

/// Looks a capability up by the name written (any spelling [`Capability::from_name`]
/// accepts), or errors at it with "did you mean" and the complete list of names.
pub fn lookup(text: &str, span: Span) -> syn::Result<Capability> {
    Capability::from_name(text).ok_or_else(|| {
        let hint = match Capability::suggest(text) {
            Some(c) => format!("; did you mean `{}`?", c.name()),
            None => String::new(),
        };
        syn::Error::new(
            span,
            format!(
                "unknown capability `{text}`{hint}\n\
                 capabilities (any case; `.`, `_` and `-` are the same, so `sse4.2` may be written \
                 `sse4_2`), {CapabilityNames}"
            ),
        )
    })
}

/// What a replacement is./// What a replacement is.
pub enum Body {
    /// An inline instruction sequence: `unsafe inline("popcnt {ret}, {x}")`; several strings
    /// are lines. The `unsafe` token's span is what the site's `unsafe` block is spanned with, so
    /// that the `unsafe_code` lint sees the user's acknowledgement.
    Inline { lines: Vec<LitStr>, unsafety: Span },
    /// A function with the same signature, reached by a direct call.
    Function(Path),
}

/// One replacement: `key => body`.
pub struct Replacement {
    pub key: Key,
    pub body: Body,
}

/// One argument of the attribute.
pub enum AttrArg {
    Replacement(Replacement),
    /// `clobber(rcx, rdi)`: registers inline replacements may change.
    Clobber(Vec<Ident>),
    /// `clobber_abi`: the site declares every register a C call may change, no thunk.
    ClobberAbi(Span),
    /// `preserve_vectors`: thunks save the vector registers instead of the site declaring them
    /// clobbered.
    PreserveVectors(Span),
    /// `crate = path`: where the facade is, when it is not `::alt`.
    Crate(Path),
}

impl Parse for AttrArg {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if input.peek(Token![crate]) {
            input.parse::<Token![crate]>()?;
            input.parse::<Token![=]>()?;
            return Ok(AttrArg::Crate(input.parse()?));
        }
        if input.peek(Ident) && !input.peek2(Token![=>]) {
            let fork = input.fork();
            let word: Ident = fork.call(syn::ext::IdentExt::parse_any)?;
            if word == "clobber" && fork.peek(syn::token::Paren) {
                input.parse::<Ident>()?;
                let content;
                syn::parenthesized!(content in input);
                let regs = Punctuated::<Ident, Token![,]>::parse_terminated(&content)?;
                return Ok(AttrArg::Clobber(regs.into_iter().collect()));
            }
            if word == "clobber_abi" && (fork.is_empty() || fork.peek(Token![,])) {
                let w: Ident = input.parse()?;
                return Ok(AttrArg::ClobberAbi(w.span()));
            }
            if word == "preserve_vectors" && (fork.is_empty() || fork.peek(Token![,])) {
                let w: Ident = input.parse()?;
                return Ok(AttrArg::PreserveVectors(w.span()));
            }
        }
        let key: Key = input.parse()?;
        input.parse::<Token![=>]>()?;
        let body = parse_body(input)?;
        Ok(AttrArg::Replacement(Replacement { key, body }))
    }
}

/// The message for an inline template written without `unsafe`.
pub const INLINE_NEEDS_UNSAFE: &str = "an inline template is assembly the compiler cannot check: \
     write `unsafe inline(...)`, with a `// SAFETY:` comment that says why every CPU the \
     capability selects runs it correctly and why it changes only the result, the flags and the \
     registers in `clobber(...)`";

/// `unsafe inline("...", ...)` or a function path.
fn parse_body(input: ParseStream) -> syn::Result<Body> {
    let unsafety = if input.peek(Token![unsafe]) {
        Some(input.parse::<Token![unsafe]>()?.span)
    } else {
        None
    };
    let is_inline = input.peek(Ident) && input.peek2(syn::token::Paren) && {
        let fork = input.fork();
        fork.parse::<Ident>().is_ok_and(|w| w == "inline")
    };
    if !is_inline {
        let path: Path = input.parse()?;
        if let Some(span) = unsafety {
            return Err(syn::Error::new(
                span,
                "a direct call needs no `unsafe`: the capability guarantees the target features \
                 of a `#[target_feature]` function; `unsafe` acknowledges inline templates only \
                 (`unsafe inline(\"...\")`)",
            ));
        }
        return Ok(Body::Function(path));
    }
    let word: Ident = input.parse()?;
    let content;
    syn::parenthesized!(content in input);
    let lines = Punctuated::<LitStr, Token![,]>::parse_terminated(&content)?;
    if lines.is_empty() {
        return Err(syn::Error::new(
            word.span(),
            "inline(...) needs at least one instruction string",
        ));
    }
    let Some(unsafety) = unsafety else {
        return Err(syn::Error::new(word.span(), INLINE_NEEDS_UNSAFE));
    };
    Ok(Body::Inline {
        lines: lines.into_iter().collect(),
        unsafety,
    })
}

/// The whole attribute argument list.
pub struct AttrArgs {
    pub replacements: Vec<Replacement>,
    pub clobbers: Vec<Ident>,
    pub clobber_abi: Option<Span>,
    pub preserve_vectors: Option<Span>,
    /// `crate = path`, or `None` for `::alt`.
    pub krate: Option<Path>,
}

impl Parse for AttrArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let list = Punctuated::<AttrArg, Token![,]>::parse_terminated(input)?;
        let mut out = AttrArgs {
            replacements: Vec::new(),
            clobbers: Vec::new(),
            clobber_abi: None,
            preserve_vectors: None,
            krate: None,
        };
        for arg in list {
            match arg {
                AttrArg::Replacement(r) => out.replacements.push(r),
                AttrArg::Clobber(c) => out.clobbers.extend(c),
                AttrArg::ClobberAbi(s) => out.clobber_abi = Some(s),
                AttrArg::PreserveVectors(s) => out.preserve_vectors = Some(s),
                AttrArg::Crate(p) => out.krate = Some(p),
            }
        }
        Ok(out)
    }
}

/// Whether the input starts with a capability key followed by `=>` (`popcnt =>`, `!erms =>`,
/// `sse4.2 =>`, `"sse4.2" =>`).
pub fn peek_key(input: ParseStream) -> bool {
    let fork = input.fork();
    if fork.peek(Token![!]) {
        let _ = fork.parse::<Token![!]>();
    }
    parse_name(&fork).is_ok() && fork.peek(Token![=>])
}
