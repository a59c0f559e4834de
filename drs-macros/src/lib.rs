//! `#[debug_handler]`: put it on an `async fn` meant as a drs handler,
//! and a function that does not fit is reported at the argument or the
//! return type at fault, instead of as "the trait `Handler<_>` is not
//! implemented" at the `on(…)` call. It changes nothing else: the function
//! is emitted as written, with checks beside it that compile to nothing.
//!
//! ```text
//! #[drs::debug_handler]
//! async fn add(args: Add) -> drs::HandlerResult<f64> {
//!     Ok(args.a + args.b)
//! }
//! ```
//!
//! It checks that the function is `async`, takes at most three arguments,
//! each a handler argument (`FromMsg`: a typed body, `Msg`, `Conn`,
//! `Body`, `ItemSink`), returns what a handler may return
//! (`IntoOutcome`), and that its future is `Send` (the compiler then names
//! the value held across an `.await` that is not). The paths are the
//! facade's (`drs::…`); `#[debug_handler(crate = drs_core)]` names
//! another crate that re-exports them.

use proc_macro::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::{parse::Parser, spanned::Spanned, FnArg, ItemFn, Path, ReturnType};

/// The most arguments a handler takes.
const MAX_ARGS: usize = 3;

/// Checks a handler where it is defined; see the crate's docs.
#[proc_macro_attribute]
pub fn debug_handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

fn expand(
    attr: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    let krate = crate_path(attr)?;
    let function: ItemFn = syn::parse2(item)?;
    let sig = &function.sig;
    let name = &sig.ident;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            "a drs handler is an `async fn`: drs awaits the future it returns",
        ));
    }
    let mut checks = Vec::new();
    let mut types = Vec::new();
    for (i, input) in sig.inputs.iter().enumerate() {
        let ty = match input {
            FnArg::Receiver(receiver) => {
                return Err(syn::Error::new(
                    receiver.span(),
                    "a drs handler is a free function, not a method: `#[debug_handler]` goes on an `async fn` outside `impl` blocks",
                ))
            }
            FnArg::Typed(typed) => &typed.ty,
        };
        if i == MAX_ARGS {
            return Err(syn::Error::new(
                input.span(),
                format!(
                    "a drs handler takes at most {MAX_ARGS} arguments; put what else it needs in a body type, or read it from `Msg`"
                ),
            ));
        }
        let check = format_ident!("__drs_argument_{}", i + 1);
        let bound = respan(quote! { #krate::FromMsg }, ty.span());
        checks.push(quote_spanned! {ty.span()=>
            #[allow(warnings, clippy::all)]
            fn #check() where #ty: #bound + ::core::marker::Send + 'static {}
        });
        types.push(ty);
    }
    let output = match &sig.output {
        ReturnType::Default => quote! { () },
        ReturnType::Type(_, ty) => quote! { #ty },
    };
    let output_span = match &sig.output {
        ReturnType::Default => sig.ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };
    let output = respan(output, output_span);
    let bound = respan(quote! { #krate::IntoOutcome }, output_span);
    checks.push(quote_spanned! {output_span=>
        #[allow(warnings, clippy::all)]
        fn __drs_returns() where #output: #bound {}
    });
    // A generic handler is checked where it is instantiated.
    if sig.generics.params.is_empty() {
        let args: Vec<_> = (0..types.len())
            .map(|i| format_ident!("__drs_arg{i}"))
            .collect();
        checks.push(quote_spanned! {sig.ident.span()=>
            #[allow(warnings, clippy::all)]
            fn __drs_future_is_send(#(#args: #types),*) {
                fn __drs_send<F: ::core::future::Future + ::core::marker::Send>(_: F) {}
                __drs_send(#name(#(#args),*));
            }
        });
    }
    Ok(quote! {
        #function
        #[allow(non_upper_case_globals)]
        const _: () = {
            #(#checks)*
        };
    })
}

/// `tokens` with every span set to `span`, so that an error about a bound
/// points at the code the bound is about (a bound whose tokens come from
/// two places is reported at the attribute).
fn respan(tokens: proc_macro2::TokenStream, span: proc_macro2::Span) -> proc_macro2::TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let proc_macro2::TokenTree::Group(group) = &tree {
                let mut inner =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                tree = proc_macro2::TokenTree::Group(inner);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}

/// `crate = PATH`, or the facade.
fn crate_path(attr: proc_macro2::TokenStream) -> syn::Result<Path> {
    if attr.is_empty() {
        return Ok(syn::parse_quote!(::drs));
    }
    let mut path = None;
    syn::meta::parser(|meta| {
        if meta.path.is_ident("crate") {
            path = Some(meta.value()?.parse::<Path>()?);
            Ok(())
        } else {
            Err(meta.error("expected `crate = PATH`"))
        }
    })
    .parse2(attr)?;
    Ok(path.unwrap_or_else(|| syn::parse_quote!(::drs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expanded(attr: &str, item: &str) -> String {
        match expand(attr.parse().unwrap(), item.parse().unwrap()) {
            Ok(tokens) => tokens.to_string(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn a_handler_gets_one_check_per_argument_and_its_result() {
        let out = expanded(
            "",
            "async fn add(a: Add, conn: Conn) -> Result<f64, String> { todo!() }",
        );
        assert!(
            out.contains("fn __drs_argument_1 () where Add : :: drs :: FromMsg"),
            "{out}"
        );
        assert!(
            out.contains("fn __drs_argument_2 () where Conn : :: drs :: FromMsg"),
            "{out}"
        );
        assert!(
            out.contains(
                "fn __drs_returns () where Result < f64 , String > : :: drs :: IntoOutcome"
            ),
            "{out}"
        );
        assert!(
            out.contains("__drs_send (add (__drs_arg0 , __drs_arg1))"),
            "{out}"
        );
        assert!(
            out.starts_with("async fn add"),
            "the function as written first: {out}"
        );
    }

    #[test]
    fn another_crate_path_and_no_return_type() {
        let out = expanded("crate = drs_core", "async fn ping() {}");
        assert!(
            out.contains("fn __drs_returns () where () : drs_core :: IntoOutcome"),
            "{out}"
        );
        assert!(!out.contains("__drs_argument"), "{out}");
    }

    #[test]
    fn what_cannot_be_a_handler_is_said_at_once() {
        assert_eq!(
            expanded("", "fn add(a: Add) -> f64 { 0.0 }"),
            "error: a drs handler is an `async fn`: drs awaits the future it returns"
        );
        assert!(expanded("", "async fn f(&self) {}")
            .starts_with("error: a drs handler is a free function"));
        assert_eq!(
            expanded("", "async fn f(a: A, b: B, c: C, d: D) {}"),
            "error: a drs handler takes at most 3 arguments; put what else it needs in a body type, or read it from `Msg`"
        );
        assert_eq!(
            expanded("krate = x", "async fn f() {}"),
            "error: expected `crate = PATH`"
        );
    }

    #[test]
    fn a_generic_handler_is_not_instantiated_here() {
        let out = expanded("", "async fn f<T: Send>(t: T) {}");
        assert!(!out.contains("__drs_future_is_send"), "{out}");
    }
}
