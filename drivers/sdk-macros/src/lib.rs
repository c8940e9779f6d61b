//! The `#[driver]` attribute of the Lintel driver SDK.
//!
//! Use it through `lintel_driver_sdk::driver` (or the SDK's prelude): the generated code
//! names items of `lintel_driver_sdk`, which must be a dependency of the driver crate.
//! The SDK's crate documentation describes the attribute in full.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{ToTokens, quote, quote_spanned};
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{
    Attribute, Expr, ExprArray, ExprLit, FnArg, GenericArgument, ImplItem, ImplItemFn, ItemImpl,
    Lit, LitInt, LitStr, Meta, Pat, PathArguments, ReturnType, Type, meta::ParseNestedMeta,
};

/// Turns an inherent `impl` block of a driver type into the driver's metadata and its
/// `exec` dispatcher. See the `lintel_driver_sdk` crate documentation.
#[proc_macro_attribute]
pub fn driver(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.into_compile_error().into(),
    }
}

/// What the `#[driver(...)]` attribute says about the driver.
#[derive(Default)]
struct DriverArgs {
    name: Option<LitStr>,
    module_name: Option<LitStr>,
    description: Option<LitStr>,
    version: Option<Expr>,
    transport: Option<(LitStr, TokenStream2)>,
    framing: Option<(Span, TokenStream2)>,
    secrets: Option<Vec<LitStr>>,
}

const TRANSPORTS: &[(&str, &str)] = &[
    ("none", "None"),
    ("tcp", "Tcp"),
    ("udp", "Udp"),
    ("tls", "Tls"),
    ("http", "Http"),
    ("websocket", "Websocket"),
    ("mqtt", "Mqtt"),
];

impl DriverArgs {
    fn parse_key(&mut self, meta: ParseNestedMeta) -> syn::Result<()> {
        let Some(key) = meta.path.get_ident().map(ToString::to_string) else {
            return Err(meta.error("expected a key such as `name = \"...\"`"));
        };
        fn once<T>(
            slot: &mut Option<T>,
            value: T,
            meta: &ParseNestedMeta,
            key: &str,
        ) -> syn::Result<()> {
            if slot.is_some() {
                return Err(meta.error(format!("`{key}` is given twice")));
            }
            *slot = Some(value);
            Ok(())
        }
        match key.as_str() {
            "name" => {
                let v: LitStr = meta.value()?.parse()?;
                non_empty(&v, "name")?;
                once(&mut self.name, v, &meta, &key)
            }
            "module_name" => {
                let v: LitStr = meta.value()?.parse()?;
                non_empty(&v, "module_name")?;
                if !v
                    .value()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                    || v.value().starts_with(|c: char| c.is_ascii_digit())
                {
                    return Err(syn::Error::new(
                        v.span(),
                        "`module_name` must be an identifier-like name such as \"Display\"",
                    ));
                }
                once(&mut self.module_name, v, &meta, &key)
            }
            "description" => {
                let v: LitStr = meta.value()?.parse()?;
                once(&mut self.description, v, &meta, &key)
            }
            "version" => {
                let v: Expr = meta.value()?.parse()?;
                if let Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }) = &v
                {
                    non_empty(s, "version")?;
                }
                once(&mut self.version, v, &meta, &key)
            }
            "transport" => {
                let v: LitStr = meta.value()?.parse()?;
                let Some((_, variant)) = TRANSPORTS.iter().find(|(n, _)| *n == v.value()) else {
                    let known: Vec<_> = TRANSPORTS.iter().map(|(n, _)| *n).collect();
                    return Err(syn::Error::new(
                        v.span(),
                        format!("unknown transport; expected one of {}", known.join(", ")),
                    ));
                };
                let variant = syn::Ident::new(variant, v.span());
                let tokens = quote!(::lintel_driver_sdk::Transport::#variant);
                once(&mut self.transport, (v, tokens), &meta, &key)
            }
            "delimiter" => {
                let value = meta.value()?;
                let bytes = match value.parse::<Lit>()? {
                    Lit::Str(s) => (s.span(), s.value().into_bytes()),
                    Lit::ByteStr(b) => (b.span(), b.value()),
                    other => {
                        return Err(syn::Error::new_spanned(
                            other,
                            "`delimiter` takes a string or byte string, e.g. \"\\r\\n\"",
                        ));
                    }
                };
                if !(1..=16).contains(&bytes.1.len()) {
                    return Err(syn::Error::new(bytes.0, "a delimiter has 1..=16 bytes"));
                }
                let b = bytes.1;
                let tokens = quote!(::lintel_driver_sdk::Framing::Delimiter(
                    ::std::vec![#(#b),*]
                ));
                self.set_framing(bytes.0, tokens, &meta)
            }
            "fixed_length" => {
                let v: LitInt = meta.value()?.parse()?;
                let n: u32 = v.base10_parse()?;
                if n == 0 {
                    return Err(syn::Error::new(
                        v.span(),
                        "`fixed_length` must be at least 1",
                    ));
                }
                self.set_framing(
                    v.span(),
                    quote!(::lintel_driver_sdk::Framing::FixedLength(#n)),
                    &meta,
                )
            }
            "length_prefix" => {
                let v: LitInt = meta.value()?.parse()?;
                let n: u8 = v.base10_parse()?;
                if ![1, 2, 4].contains(&n) {
                    return Err(syn::Error::new(
                        v.span(),
                        "`length_prefix` is the header's size in bytes: 1, 2 or 4",
                    ));
                }
                self.set_framing(
                    v.span(),
                    quote!(::lintel_driver_sdk::Framing::LengthPrefixed(#n)),
                    &meta,
                )
            }
            "secrets" => {
                let v: ExprArray = meta.value()?.parse()?;
                let mut keys = Vec::new();
                for e in v.elems {
                    match e {
                        Expr::Lit(ExprLit {
                            lit: Lit::Str(s), ..
                        }) => {
                            non_empty(&s, "a secret key")?;
                            keys.push(s)
                        }
                        other => {
                            return Err(syn::Error::new_spanned(
                                other,
                                "`secrets` lists setting keys as strings, e.g. [\"password\"]",
                            ));
                        }
                    }
                }
                once(&mut self.secrets, keys, &meta, &key)
            }
            _ => Err(meta.error(format!(
                "unknown key `{key}`; expected name, module_name, description, version, \
                 transport, delimiter, fixed_length, length_prefix or secrets"
            ))),
        }
    }

    fn set_framing(
        &mut self,
        span: Span,
        tokens: TokenStream2,
        meta: &ParseNestedMeta,
    ) -> syn::Result<()> {
        if self.framing.is_some() {
            return Err(meta.error(
                "give at most one framing: `delimiter`, `fixed_length` or `length_prefix`",
            ));
        }
        self.framing = Some((span, tokens));
        Ok(())
    }
}

fn non_empty(s: &LitStr, what: &str) -> syn::Result<()> {
    if s.value().trim().is_empty() {
        Err(syn::Error::new(
            s.span(),
            format!("{what} must not be empty"),
        ))
    } else {
        Ok(())
    }
}

/// One `#[function]` method.
struct FunctionDef {
    /// The exec name.
    name: String,
    method: syn::Ident,
    description: String,
    takes_call: bool,
    params: Vec<ParamDef>,
    ret: ReturnKind,
    /// Where type errors about the result point.
    ret_span: Span,
}

struct ParamDef {
    name: String,
    ident: syn::Ident,
    ty: Type,
    /// The type whose schema describes the parameter (`T` of an `Option<T>`).
    schema_ty: Type,
    required: bool,
}

enum ReturnKind {
    /// No return type or `()`.
    Unit,
    /// A plain `R`.
    Plain(Type),
    /// `Result<R, E>`.
    Result(Type),
    /// `Answer<R>`.
    Answer(Type),
    /// `Result<Answer<R>, E>`.
    ResultAnswer(Type),
}

fn expand(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let mut args = DriverArgs::default();
    let parser = syn::meta::parser(|meta| args.parse_key(meta));
    parser.parse2(attr)?;
    let mut item: ItemImpl = syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("#[driver] goes on an inherent `impl YourDriver {{ ... }}` block: {e}"),
        )
    })?;
    if let Some((_, path, _)) = &item.trait_ {
        return Err(syn::Error::new_spanned(
            path,
            "#[driver] goes on an inherent `impl YourDriver { ... }` block, not a trait impl",
        ));
    }
    let name = args.name.clone().ok_or_else(|| {
        syn::Error::new(
            Span::call_site(),
            "#[driver] needs `name = \"...\"` (shown to operators)",
        )
    })?;
    let module_name = args.module_name.clone().ok_or_else(|| {
        syn::Error::new(
            Span::call_site(),
            "#[driver] needs `module_name = \"...\"` (e.g. \"Display\" for Display_1)",
        )
    })?;

    let mut functions: Vec<FunctionDef> = Vec::new();
    let mut errors: Option<syn::Error> = None;
    for impl_item in &mut item.items {
        let ImplItem::Fn(method) = impl_item else {
            continue;
        };
        match take_function_attr(method) {
            Ok(None) => {}
            Ok(Some(exported)) => match function_def(method, exported) {
                Ok(f) => {
                    if functions.iter().any(|g| g.name == f.name) {
                        combine(
                            &mut errors,
                            syn::Error::new(
                                method.sig.ident.span(),
                                format!("two functions are named `{}`", f.name),
                            ),
                        );
                    } else {
                        functions.push(f);
                    }
                }
                Err(e) => combine(&mut errors, e),
            },
            Err(e) => combine(&mut errors, e),
        }
    }
    if let Some(e) = errors {
        return Err(e);
    }

    let description = args
        .description
        .as_ref()
        .map(LitStr::value)
        .unwrap_or_default();
    let version = match &args.version {
        Some(v) => v.to_token_stream(),
        None => quote!(::core::env!("CARGO_PKG_VERSION")),
    };
    let transport = args
        .transport
        .as_ref()
        .map(|(_, t)| t.clone())
        .unwrap_or_else(|| quote!(::lintel_driver_sdk::Transport::None));
    let framing = args
        .framing
        .as_ref()
        .map(|(_, t)| t.clone())
        .unwrap_or_else(|| quote!(::lintel_driver_sdk::Framing::Raw));
    let secrets = args.secrets.clone().unwrap_or_default();

    let sdk = quote!(::lintel_driver_sdk);
    let function_meta = functions.iter().map(|f| {
        let fname = &f.name;
        let fdesc = &f.description;
        let params = f.params.iter().map(|p| {
            let pname = &p.name;
            let schema_ty = &p.schema_ty;
            let required = p.required;
            quote_spanned! {schema_ty.span()=>
                #sdk::Parameter {
                    name: ::std::string::String::from(#pname),
                    schema: #sdk::__private::schema::<#schema_ty>(),
                    required: #required,
                }
            }
        });
        let returns = match &f.ret {
            ReturnKind::Unit => quote!(#sdk::__private::schema::<()>()),
            ReturnKind::Plain(t)
            | ReturnKind::Result(t)
            | ReturnKind::Answer(t)
            | ReturnKind::ResultAnswer(t) => {
                quote_spanned!(t.span()=> #sdk::__private::schema::<#t>())
            }
        };
        quote! {
            #sdk::Function {
                name: ::std::string::String::from(#fname),
                description: ::std::string::String::from(#fdesc),
                parameters: ::std::vec![#(#params),*],
                returns: #returns,
            }
        }
    });

    let arms = functions.iter().map(|f| {
        let fname = &f.name;
        let method = &f.method;
        let max = f.params.len();
        let lets = f.params.iter().map(|p| {
            let ident = &p.ident;
            let ty = &p.ty;
            let pname = &p.name;
            let required = p.required;
            quote_spanned! {ty.span()=>
                let #ident: #ty = #sdk::__private::arg(&mut __args, #pname, #required)?;
            }
        });
        let mut call_args = Vec::new();
        if f.takes_call {
            call_args.push(quote!(__call));
        }
        call_args.extend(f.params.iter().map(|p| p.ident.to_token_stream()));
        let finish = match &f.ret {
            ReturnKind::Unit | ReturnKind::Plain(_) => quote!(#sdk::__private::ret_value),
            ReturnKind::Result(_) => quote!(#sdk::__private::ret_result),
            ReturnKind::Answer(_) => quote!(#sdk::__private::ret_answer),
            ReturnKind::ResultAnswer(_) => quote!(#sdk::__private::ret_result_answer),
        };
        let finish_call = quote_spanned! {f.ret_span=>
            #finish(Self::#method(self, #(#call_args),*))
        };
        quote! {
            #fname => {
                #sdk::__private::check_arity(#fname, __args.len(), #max)?;
                let mut __args = ::std::iter::IntoIterator::into_iter(__args);
                #(#lets)*
                #finish_call
            }
        }
    });

    let self_ty = &item.self_ty;
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let secrets = secrets.iter();
    let generated = quote! {
        impl #impl_generics #sdk::__private::Functions for #self_ty #where_clause {
            fn metadata() -> #sdk::Metadata {
                let (default_settings, settings_schema) = #sdk::__private::settings_metadata::<
                    <Self as #sdk::Driver>::Settings,
                >();
                #sdk::Metadata {
                    name: ::std::string::String::from(#name),
                    module_name: ::std::string::String::from(#module_name),
                    description: ::std::string::String::from(#description),
                    version: ::std::string::String::from(#version),
                    transport: #transport,
                    framing: #framing,
                    default_settings,
                    settings_schema,
                    secrets: ::std::vec![#(::std::string::String::from(#secrets)),*],
                    functions: ::std::vec![#(#function_meta),*],
                }
            }

            #[allow(unused_variables, unused_mut, clippy::let_unit_value, clippy::unit_arg)]
            fn dispatch(
                &mut self,
                __call: #sdk::CallId,
                __function: &str,
                __args: ::std::vec::Vec<#sdk::Value>,
            ) -> ::std::result::Result<::std::option::Option<#sdk::Value>, ::std::string::String> {
                match __function {
                    #(#arms)*
                    __other => ::std::result::Result::Err(#sdk::__private::unknown_function(__other)),
                }
            }
        }
    };
    Ok(quote! {
        #item
        #generated
    })
}

fn combine(errors: &mut Option<syn::Error>, e: syn::Error) {
    match errors {
        Some(all) => all.combine(e),
        None => *errors = Some(e),
    }
}

/// Removes a `#[function]` / `#[function(name = "...")]` attribute; `Some(exec name)` when
/// the method had one.
fn take_function_attr(method: &mut ImplItemFn) -> syn::Result<Option<String>> {
    let mut found: Option<String> = None;
    let mut error = None;
    method.attrs.retain(|attr| {
        if !attr.path().is_ident("function") {
            return true;
        }
        if found.is_some() {
            error = Some(syn::Error::new_spanned(
                attr,
                "`#[function]` is given twice",
            ));
            return false;
        }
        let mut name = method.sig.ident.unraw().to_string();
        let result = match &attr.meta {
            Meta::Path(_) => Ok(()),
            Meta::List(_) => attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("name") {
                    let v: LitStr = meta.value()?.parse()?;
                    non_empty(&v, "a function name")?;
                    name = v.value();
                    Ok(())
                } else {
                    Err(meta.error("unknown key; `#[function]` takes only `name = \"...\"`"))
                }
            }),
            Meta::NameValue(nv) => Err(syn::Error::new_spanned(
                nv,
                "write `#[function]` or `#[function(name = \"...\")]`",
            )),
        };
        match result {
            Ok(()) => found = Some(name),
            Err(e) => error = Some(e),
        }
        false
    });
    match error {
        Some(e) => Err(e),
        None => Ok(found),
    }
}

use syn::ext::IdentExt;

fn function_def(method: &ImplItemFn, name: String) -> syn::Result<FunctionDef> {
    let sig = &method.sig;
    if let Some(a) = &sig.asyncness {
        return Err(syn::Error::new(
            a.span(),
            "a driver function cannot be `async`",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "a driver function cannot have generic parameters",
        ));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_some() => {}
        Some(FnArg::Receiver(r)) => {
            return Err(syn::Error::new_spanned(
                r,
                "a driver function takes `&mut self` as its first parameter",
            ));
        }
        _ => {
            return Err(syn::Error::new(
                sig.ident.span(),
                "a driver function takes `&mut self` as its first parameter",
            ));
        }
    }
    let mut takes_call = false;
    let mut params: Vec<ParamDef> = Vec::new();
    for (i, input) in inputs.enumerate() {
        let FnArg::Typed(pt) = input else {
            unreachable!("only the first input is a receiver")
        };
        let ty = (*pt.ty).clone();
        if last_segment_is(&ty, "CallId") {
            if i != 0 {
                return Err(syn::Error::new_spanned(
                    &pt.ty,
                    "a `CallId` parameter must come first, right after `&mut self`",
                ));
            }
            takes_call = true;
            continue;
        }
        let ident = match &*pt.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    "a driver function's parameters must be plain names (`level: u8`)",
                ));
            }
        };
        if let Type::Reference(r) = &ty {
            return Err(syn::Error::new_spanned(
                r,
                "a driver function's parameters are owned values deserialized from JSON \
                 (use `String` rather than `&str`)",
            ));
        }
        if matches!(ty, Type::ImplTrait(_)) {
            return Err(syn::Error::new_spanned(
                &ty,
                "`impl Trait` parameters are not supported",
            ));
        }
        let (required, schema_ty) = match generic_arg(&ty, "Option") {
            Some(inner) => (false, inner),
            None => (true, ty.clone()),
        };
        if required && let Some(prev) = params.iter().find(|p| !p.required) {
            return Err(syn::Error::new_spanned(
                pt,
                format!(
                    "required parameter `{}` follows optional parameter `{}`: `Option` \
                     parameters must come last",
                    ident.unraw(),
                    prev.name
                ),
            ));
        }
        params.push(ParamDef {
            name: ident.unraw().to_string(),
            ident,
            ty,
            schema_ty,
            required,
        });
    }
    let ret = match &sig.output {
        ReturnType::Default => ReturnKind::Unit,
        ReturnType::Type(_, ty) => {
            let ty = (**ty).clone();
            if matches!(&ty, Type::Tuple(t) if t.elems.is_empty()) {
                ReturnKind::Unit
            } else if let Some(ok) = generic_arg(&ty, "Result") {
                match generic_arg(&ok, "Answer") {
                    Some(inner) => ReturnKind::ResultAnswer(inner),
                    None => ReturnKind::Result(ok),
                }
            } else if let Some(inner) = generic_arg(&ty, "Answer") {
                ReturnKind::Answer(inner)
            } else {
                ReturnKind::Plain(ty)
            }
        }
    };
    let ret_span = match &sig.output {
        ReturnType::Default => sig.ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };
    Ok(FunctionDef {
        ret_span,
        name,
        method: sig.ident.clone(),
        description: doc_text(&method.attrs),
        takes_call,
        params,
        ret,
    })
}

/// Whether `ty` is a path whose last segment is `name` (`CallId`, `sdk::CallId`).
fn last_segment_is(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Path(p) if p.qself.is_none() => {
            p.path.segments.last().is_some_and(|s| s.ident == name)
        }
        Type::Group(g) => last_segment_is(&g.elem, name),
        Type::Paren(p) => last_segment_is(&p.elem, name),
        _ => false,
    }
}

/// The first generic type argument of `ty` when its last path segment is `name`
/// (`Option<T>` → `T`).
fn generic_arg(ty: &Type, name: &str) -> Option<Type> {
    match ty {
        Type::Path(p) if p.qself.is_none() => {
            let seg = p.path.segments.last()?;
            if seg.ident != name {
                return None;
            }
            let PathArguments::AngleBracketed(args) = &seg.arguments else {
                return None;
            };
            args.args.iter().find_map(|a| match a {
                GenericArgument::Type(t) => Some(t.clone()),
                _ => None,
            })
        }
        Type::Group(g) => generic_arg(&g.elem, name),
        Type::Paren(p) => generic_arg(&p.elem, name),
        _ => None,
    }
}

/// A method's doc comment as one description: lines trimmed, lines of a paragraph joined
/// with spaces, paragraphs separated by a blank line.
fn doc_text(attrs: &[Attribute]) -> String {
    let mut lines = Vec::new();
    for attr in attrs {
        if !attr.path().is_ident("doc") {
            continue;
        }
        if let Meta::NameValue(nv) = &attr.meta
            && let Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }) = &nv.value
        {
            lines.extend(s.value().split('\n').map(|l| l.trim().to_string()));
        }
    }
    let mut paragraphs: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in lines {
        if line.is_empty() {
            if !current.is_empty() {
                paragraphs.push(std::mem::take(&mut current));
            }
        } else {
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(&line);
        }
    }
    if !current.is_empty() {
        paragraphs.push(current);
    }
    paragraphs.join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(attr: TokenStream2, item: TokenStream2) -> String {
        match expand(attr, item) {
            Ok(tokens) => panic!("expected an error, got {tokens}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn docs_become_one_description() {
        let m: ImplItemFn = syn::parse_quote! {
            /// Switch the display
            ///   on or off.
            ///
            /// Second paragraph.
            fn power(&mut self) {}
        };
        assert_eq!(
            doc_text(&m.attrs),
            "Switch the display on or off.\n\nSecond paragraph."
        );
    }

    #[test]
    fn attribute_errors() {
        let item = quote!(impl D {});
        assert!(
            error_of(
                quote!(name = "D", module_name = "D", colour = "red"),
                item.clone()
            )
            .contains("unknown key `colour`")
        );
        assert!(error_of(quote!(module_name = "D"), item.clone()).contains("needs `name"));
        assert!(error_of(quote!(name = "D"), item.clone()).contains("needs `module_name"));
        assert!(
            error_of(
                quote!(name = "D", module_name = "D", transport = "carrier-pigeon"),
                item.clone()
            )
            .contains("unknown transport")
        );
        assert!(
            error_of(
                quote!(
                    name = "D",
                    module_name = "D",
                    delimiter = "\n",
                    fixed_length = 4
                ),
                item.clone()
            )
            .contains("at most one framing")
        );
        assert!(
            error_of(
                quote!(name = "D", module_name = "D", length_prefix = 3),
                item.clone()
            )
            .contains("1, 2 or 4")
        );
        assert!(
            error_of(
                quote!(name = "D", module_name = "D", name = "E"),
                item.clone()
            )
            .contains("given twice")
        );
        assert!(
            error_of(
                quote!(name = "D", module_name = "D"),
                quote!(impl Driver for D {})
            )
            .contains("not a trait impl")
        );
    }

    #[test]
    fn function_errors() {
        let attr = quote!(name = "D", module_name = "D");
        let cases = [
            (
                quote!(
                    #[function]
                    fn f(&self) {}
                ),
                "`&mut self`",
            ),
            (
                quote!(
                    #[function]
                    fn f(self) {}
                ),
                "`&mut self`",
            ),
            (
                quote!(
                    #[function]
                    fn f(x: u8) {}
                ),
                "`&mut self`",
            ),
            (
                quote!(
                    #[function]
                    fn f(&mut self, a: Option<u8>, b: u8) {}
                ),
                "`Option` parameters must come last",
            ),
            (
                quote!(
                    #[function]
                    fn f(&mut self, a: &str) {}
                ),
                "owned values",
            ),
            (
                quote!(
                    #[function]
                    fn f(&mut self, (a, b): (u8, u8)) {}
                ),
                "plain names",
            ),
            (
                quote!(
                    #[function]
                    fn f(&mut self, a: u8, c: CallId) {}
                ),
                "must come first",
            ),
            (
                quote!(
                    #[function]
                    async fn f(&mut self) {}
                ),
                "`async`",
            ),
            (
                quote!(
                    #[function(label = "x")]
                    fn f(&mut self) {}
                ),
                "only `name",
            ),
            (
                quote!(
                    #[function]
                    fn f(&mut self) {}
                    #[function(name = "f")]
                    fn g(&mut self) {}
                ),
                "two functions are named `f`",
            ),
        ];
        for (methods, expected) in cases {
            let e = error_of(attr.clone(), quote!(impl D { #methods }));
            assert!(e.contains(expected), "{methods}: {e}");
        }
    }

    #[test]
    fn function_attributes_are_removed_and_plain_methods_kept() {
        let out = expand(
            quote!(name = "D", module_name = "D"),
            quote!(impl D {
                #[function]
                fn f(&mut self, call: CallId, a: u8, b: Option<String>) -> Result<Answer<u8>, String> { todo!() }
                fn helper(&self) {}
            }),
        )
        .unwrap()
        .to_string();
        assert!(!out.contains("# [function]"), "{out}");
        assert!(out.contains("fn helper"), "{out}");
        assert!(out.contains("ret_result_answer"), "{out}");
        assert!(out.contains("schema :: < u8 >"), "{out}");
        assert!(out.contains("schema :: < String >"), "{out}");
    }
}
