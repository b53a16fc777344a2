//! Code generation for xrelay's marshalling, so that nobody marshals by hand:
//!
//! * `#[derive(Encode, Decode)]` for structs and enums: fields in
//!   declaration order; an enum writes its variant's declaration index as a
//!   little-endian `u16` first.
//! * `#[derive(Exception)]` for field-less enums: variant `i` maps to the
//!   wire exception code `-1000 - i` (Genode's numbering).
//! * `#[interface(id = N)]` on a trait: opcodes in declaration order, a
//!   client stub, a server dispatcher and interface metadata.
//!
//! The generated code names `::xrelay_datapath`; use the macros through that
//! crate's re-exports. The encoding itself is specified in docs/wire.md.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{
    parse_macro_input, parse_quote, Data, DeriveInput, Error, Fields, FnArg, GenericArgument,
    Ident, ItemTrait, LitInt, Pat, PathArguments, ReturnType, TraitItem, Type,
};

/// Derives `Encode`: fields in declaration order; enums prefix the variant
/// index as a little-endian `u16`.
#[proc_macro_derive(Encode)]
pub fn derive_encode(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand_encode(&input)
        .unwrap_or_else(Error::into_compile_error)
        .into()
}

/// Derives `Decode`, the inverse of `Encode`, with the reader's nesting
/// limit applied at every struct and enum.
#[proc_macro_derive(Decode)]
pub fn derive_decode(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand_decode(&input)
        .unwrap_or_else(Error::into_compile_error)
        .into()
}

/// Derives `Exception` for a field-less enum: variant `i` is wire code
/// `-1000 - i`.
#[proc_macro_derive(Exception)]
pub fn derive_exception(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand_exception(&input)
        .unwrap_or_else(Error::into_compile_error)
        .into()
}

/// Declares an RPC interface from a trait: `#[interface(id = 0x4b56_0001)]`.
///
/// Every method takes `&self` or `&mut self` and named arguments whose types
/// implement `Encode + Decode`. A return type `Result<T, E>` declares `E`
/// (an `Exception`) as the function's exceptions; any other return type is
/// the plain result. Generated next to the trait `Name`:
///
/// * `NameOpcode`: the opcodes, in declaration order, with the interface id;
/// * `NameClient<C: Caller>`: one method per function, returning
///   `Result<T, RpcError<E>>`;
/// * `NameServer<S: Name>`: a `Dispatch` implementation that decodes the
///   arguments, calls `S` and encodes the result or exception code.
#[proc_macro_attribute]
pub fn interface(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = TokenStream2::from(attr);
    let item = parse_macro_input!(item as ItemTrait);
    expand_interface(attr, item)
        .unwrap_or_else(Error::into_compile_error)
        .into()
}

fn krate() -> TokenStream2 {
    quote!(::xrelay_datapath::marshal)
}

/// Adds `bound` to every type parameter of the item's generics.
fn bounded_generics(input: &DeriveInput, bound: TokenStream2) -> syn::Generics {
    let mut generics = input.generics.clone();
    for param in generics.type_params_mut() {
        param.bounds.push(parse_quote!(#bound));
    }
    generics
}

/// Bindings for a variant's or struct's fields: `(pattern, names)`.
fn field_bindings(fields: &Fields) -> (TokenStream2, Vec<Ident>) {
    match fields {
        Fields::Named(named) => {
            let names: Vec<Ident> = named.named.iter().filter_map(|f| f.ident.clone()).collect();
            (quote!({ #(#names),* }), names)
        }
        Fields::Unnamed(unnamed) => {
            let names: Vec<Ident> = (0..unnamed.unnamed.len())
                .map(|i| format_ident!("field{}", i))
                .collect();
            (quote!(( #(#names),* )), names)
        }
        Fields::Unit => (quote!(), Vec::new()),
    }
}

/// An expression that builds `path` from decoded fields.
fn construct(path: TokenStream2, fields: &Fields) -> TokenStream2 {
    let m = krate();
    match fields {
        Fields::Named(named) => {
            let inits = named.named.iter().map(|f| {
                let name = &f.ident;
                quote!(#name: #m::Decode::decode(reader)?)
            });
            quote!(#path { #(#inits),* })
        }
        Fields::Unnamed(unnamed) => {
            let inits = unnamed
                .unnamed
                .iter()
                .map(|_| quote!(#m::Decode::decode(reader)?));
            quote!(#path ( #(#inits),* ))
        }
        Fields::Unit => path,
    }
}

fn variant_tag(index: usize, span: Span) -> syn::Result<u16> {
    u16::try_from(index).map_err(|_| Error::new(span, "an enum may have at most 65536 variants"))
}

fn expand_encode(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let m = krate();
    let name = &input.ident;
    let generics = bounded_generics(input, quote!(#m::Encode));
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let body = match &input.data {
        Data::Struct(data) => {
            let (pattern, names) = field_bindings(&data.fields);
            quote! {
                let #name #pattern = self;
                #( #m::Encode::encode(#names, out); )*
            }
        }
        Data::Enum(data) => {
            let mut arms = Vec::new();
            for (index, variant) in data.variants.iter().enumerate() {
                let tag = variant_tag(index, variant.span())?;
                let ident = &variant.ident;
                let (pattern, names) = field_bindings(&variant.fields);
                arms.push(quote! {
                    #name::#ident #pattern => {
                        #m::Encode::encode(&#tag, out);
                        #( #m::Encode::encode(#names, out); )*
                    }
                });
            }
            if arms.is_empty() {
                quote!(match *self {})
            } else {
                quote!(match self { #(#arms)* })
            }
        }
        Data::Union(_) => return Err(Error::new(input.span(), "unions cannot be encoded")),
    };
    Ok(quote! {
        impl #impl_generics #m::Encode for #name #ty_generics #where_clause {
            fn encode(&self, out: &mut ::std::vec::Vec<u8>) {
                #body
            }
        }
    })
}

fn expand_decode(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let m = krate();
    let name = &input.ident;
    let generics = bounded_generics(input, quote!(#m::Decode));
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let body = match &input.data {
        Data::Struct(data) => construct(quote!(#name), &data.fields),
        Data::Enum(data) => {
            let mut arms = Vec::new();
            for (index, variant) in data.variants.iter().enumerate() {
                let tag = variant_tag(index, variant.span())?;
                let ident = &variant.ident;
                let value = construct(quote!(#name::#ident), &variant.fields);
                arms.push(quote!(#tag => #value,));
            }
            let type_name = name.to_string();
            quote! {
                match <u16 as #m::Decode>::decode(reader)? {
                    #(#arms)*
                    tag => return ::core::result::Result::Err(#m::DecodeError::InvalidTag {
                        type_name: #type_name,
                        tag: u32::from(tag),
                    }),
                }
            }
        }
        Data::Union(_) => return Err(Error::new(input.span(), "unions cannot be decoded")),
    };
    Ok(quote! {
        impl #impl_generics #m::Decode for #name #ty_generics #where_clause {
            fn decode(reader: &mut #m::Reader<'_>) -> ::core::result::Result<Self, #m::DecodeError> {
                reader.nested(|reader| ::core::result::Result::Ok(#body))
            }
        }
    })
}

fn expand_exception(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let m = krate();
    let name = &input.ident;
    let Data::Enum(data) = &input.data else {
        return Err(Error::new(
            input.span(),
            "Exception is derived for field-less enums",
        ));
    };
    if !input.generics.params.is_empty() {
        return Err(Error::new(
            input.generics.span(),
            "an Exception enum cannot be generic",
        ));
    }
    let mut to_code = Vec::new();
    let mut from_code = Vec::new();
    for (index, variant) in data.variants.iter().enumerate() {
        if !matches!(variant.fields, Fields::Unit) {
            return Err(Error::new(
                variant.span(),
                "Exception variants carry no fields",
            ));
        }
        let code = i32::try_from(index)
            .ok()
            .and_then(|i| (-1000i32).checked_sub(i))
            .ok_or_else(|| Error::new(variant.span(), "too many exception variants"))?;
        let ident = &variant.ident;
        to_code.push(quote!(#name::#ident => #code,));
        from_code.push(quote!(#code => ::core::option::Option::Some(#name::#ident),));
    }
    let to_code_body = if to_code.is_empty() {
        quote!(match *self {})
    } else {
        quote!(match self { #(#to_code)* })
    };
    Ok(quote! {
        impl #m::Exception for #name {
            fn code(&self) -> i32 {
                #to_code_body
            }
            fn from_code(code: i32) -> ::core::option::Option<Self> {
                match code {
                    #(#from_code)*
                    _ => ::core::option::Option::None,
                }
            }
        }
    })
}

/// One function of an interface, as the generators need it.
struct Function {
    name: Ident,
    variant: Ident,
    args: Vec<(Ident, Type)>,
    value: Type,
    exception: TokenStream2,
    fallible: bool,
}

fn camel_case(snake: &Ident) -> Ident {
    let text = snake.to_string();
    let camel: String = text
        .split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_uppercase().chain(chars).collect::<String>())
                .unwrap_or_default()
        })
        .collect();
    Ident::new(&camel, snake.span())
}

/// Splits `Result<T, E>` into `(T, E)`; anything else is not fallible.
fn split_result(ty: &Type) -> Option<(Type, Type)> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty.clone()),
        _ => None,
    });
    let ok = types.next()?;
    let err = types.next()?;
    if types.next().is_some() {
        return None;
    }
    Some((ok, err))
}

fn parse_function(method: &syn::TraitItemFn) -> syn::Result<Function> {
    let m = krate();
    let sig = &method.sig;
    if !sig.generics.params.is_empty() || sig.asyncness.is_some() {
        return Err(Error::new(
            sig.span(),
            "interface functions cannot be generic or async",
        ));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver)) if receiver.reference.is_some() => {}
        _ => {
            return Err(Error::new(
                sig.span(),
                "interface functions take &self or &mut self",
            ))
        }
    }
    let mut args = Vec::new();
    for input in inputs {
        let FnArg::Typed(typed) = input else {
            return Err(Error::new(input.span(), "unexpected receiver"));
        };
        let Pat::Ident(ident) = &*typed.pat else {
            return Err(Error::new(
                typed.pat.span(),
                "interface arguments must be plain names",
            ));
        };
        args.push((ident.ident.clone(), (*typed.ty).clone()));
    }
    let returned: Type = match &sig.output {
        ReturnType::Default => parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    let (value, exception, fallible) = match split_result(&returned) {
        Some((ok, err)) => (ok, quote!(#err), true),
        None => (returned, quote!(#m::NoException), false),
    };
    Ok(Function {
        name: sig.ident.clone(),
        variant: camel_case(&sig.ident),
        args,
        value,
        exception,
        fallible,
    })
}

fn parse_interface_id(attr: TokenStream2) -> syn::Result<u32> {
    let mut id = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("id") {
            let lit: LitInt = meta.value()?.parse()?;
            id = Some(lit.base10_parse::<u32>()?);
            Ok(())
        } else {
            Err(meta.error("expected `id = <u32>`"))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    id.ok_or_else(|| Error::new(Span::call_site(), "#[interface] needs `id = <u32>`"))
}

fn expand_interface(attr: TokenStream2, item: ItemTrait) -> syn::Result<TokenStream2> {
    let m = krate();
    let id = parse_interface_id(attr)?;
    let trait_name = &item.ident;
    let vis = &item.vis;
    let mut functions = Vec::new();
    for trait_item in &item.items {
        match trait_item {
            TraitItem::Fn(method) => functions.push(parse_function(method)?),
            other => {
                return Err(Error::new(
                    other.span(),
                    "an interface trait holds only functions",
                ))
            }
        }
    }
    let opcode_ty = format_ident!("{}Opcode", trait_name);
    let client_ty = format_ident!("{}Client", trait_name);
    let server_ty = format_ident!("{}Server", trait_name);
    let trait_name_str = trait_name.to_string();
    let count = functions.len();

    let variants: Vec<&Ident> = functions.iter().map(|f| &f.variant).collect();
    let names: Vec<String> = functions.iter().map(|f| f.name.to_string()).collect();
    let codes: Vec<u16> = (0..count)
        .map(u16::try_from)
        .collect::<Result<_, _>>()
        .map_err(|_| Error::new(item.span(), "an interface has at most 65536 functions"))?;

    let client_methods = functions.iter().map(|f| {
        let Function { name, variant, value, exception, .. } = f;
        let arg_decls = f.args.iter().map(|(n, t)| quote!(#n: #t));
        let arg_names = f.args.iter().map(|(n, _)| n);
        let doc = format!("Calls `{trait_name_str}::{name}` on the remote server.");
        quote! {
            #[doc = #doc]
            pub fn #name(&mut self, #(#arg_decls),*) -> ::core::result::Result<#value, #m::RpcError<#exception>> {
                let mut args = ::std::vec::Vec::new();
                #( #m::Encode::encode(&#arg_names, &mut args); )*
                let mut reply = ::std::vec::Vec::new();
                let code = #m::Caller::call(
                    &mut self.caller,
                    #opcode_ty::INTERFACE_ID,
                    #opcode_ty::#variant.code(),
                    &args,
                    &mut reply,
                )?;
                #m::decode_reply::<#value, #exception>(code, &reply)
            }
        }
    });

    let dispatch_arms = functions.iter().map(|f| {
        let Function { name, variant, fallible, .. } = f;
        let arg_names: Vec<&Ident> = f.args.iter().map(|(n, _)| n).collect();
        let arg_types = f.args.iter().map(|(_, t)| t);
        let arg_reader = f.args.iter().map(|_| quote!(&mut reader));
        let call = quote!(self.0.#name(#(#arg_names),*));
        let handle = if *fallible {
            quote! {
                match #call {
                    ::core::result::Result::Ok(value) => {
                        #m::Encode::encode(&value, reply);
                        #m::codes::SUCCESS
                    }
                    ::core::result::Result::Err(exception) => #m::Exception::code(&exception),
                }
            }
        } else {
            quote! {
                let value = #call;
                #m::Encode::encode(&value, reply);
                #m::codes::SUCCESS
            }
        };
        quote! {
            ::core::option::Option::Some(#opcode_ty::#variant) => {
                fn decode_args(args: &[u8]) -> ::core::result::Result<(#(#arg_types,)*), #m::DecodeError> {
                    let mut reader = #m::Reader::new(args);
                    let decoded = (#(#m::Decode::decode(#arg_reader)?,)*);
                    reader.finish()?;
                    ::core::result::Result::Ok(decoded)
                }
                let ::core::result::Result::Ok((#(#arg_names,)*)) = decode_args(args) else {
                    return #m::codes::BAD_ARGUMENTS;
                };
                #handle
            }
        }
    });

    let opcode_doc =
        format!("Opcodes of [`{trait_name_str}`]: each function's position in the declaration.");
    let client_doc = format!("Client stub of [`{trait_name_str}`]: marshals each call and sends it through a [`Caller`]({m}::Caller).", m = "xrelay_datapath::marshal");
    let server_doc = format!("Server dispatcher of [`{trait_name_str}`]: decodes calls and runs them on the wrapped implementation.");

    Ok(quote! {
        #item

        #[doc = #opcode_doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #vis enum #opcode_ty {
            #(
                #[doc = concat!("`", #names, "`")]
                #variants,
            )*
        }

        impl #opcode_ty {
            /// The interface id on the wire.
            pub const INTERFACE_ID: u32 = #id;
            /// The interface's name.
            pub const INTERFACE_NAME: &'static str = #trait_name_str;
            /// Every opcode, in declaration order.
            pub const ALL: [#opcode_ty; #count] = [#(#opcode_ty::#variants),*];

            /// The opcode's value on the wire.
            pub const fn code(self) -> u16 {
                match self { #( #opcode_ty::#variants => #codes, )* }
            }

            /// The opcode with wire value `code`, if the interface has one.
            pub const fn from_code(code: u16) -> ::core::option::Option<Self> {
                match code {
                    #( #codes => ::core::option::Option::Some(#opcode_ty::#variants), )*
                    _ => ::core::option::Option::None,
                }
            }

            /// The function's name.
            pub const fn name(self) -> &'static str {
                match self { #( #opcode_ty::#variants => #names, )* }
            }
        }

        #[doc = #client_doc]
        #[derive(Debug)]
        #vis struct #client_ty<C> {
            caller: C,
        }

        impl<C: #m::Caller> #client_ty<C> {
            /// A client that sends its calls through `caller`.
            pub fn new(caller: C) -> Self {
                Self { caller }
            }

            /// The caller, for its own settings and statistics.
            pub fn caller_mut(&mut self) -> &mut C {
                &mut self.caller
            }

            /// Gives the caller back.
            pub fn into_inner(self) -> C {
                self.caller
            }

            #(#client_methods)*
        }

        #[doc = #server_doc]
        #[derive(Debug)]
        #vis struct #server_ty<S>(pub S);

        impl<S: #trait_name> #m::Dispatch for #server_ty<S> {
            fn interface_id(&self) -> u32 {
                #opcode_ty::INTERFACE_ID
            }

            fn dispatch(&mut self, opcode: u16, args: &[u8], reply: &mut ::std::vec::Vec<u8>) -> i32 {
                reply.clear();
                match #opcode_ty::from_code(opcode) {
                    #(#dispatch_arms)*
                    ::core::option::Option::None => #m::codes::INVALID_OPCODE,
                }
            }
        }
    })
}
