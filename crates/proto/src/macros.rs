/// Declares a newtype over a wire byte with named constants. Unknown values survive
/// decoding; `Debug` prints the constant's name or `Name(0x..)`, `Display` the RFC phrase.
macro_rules! codepoint {
    (
        $(#[$meta:meta])*
        pub struct $name:ident;
        $( $(#[$cmeta:meta])* $konst:ident = $value:literal => $phrase:literal, )*
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u8);

        impl $name {
            $( $(#[$cmeta])* pub const $konst: $name = $name($value); )*

            /// The RFC's name for this value, if it has one.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some(stringify!($konst)), )*
                    _ => None,
                }
            }
        }

        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                match self.name() {
                    Some(name) => f.write_str(name),
                    None => write!(f, concat!(stringify!($name), "({:#04x})"), self.0),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                match self.0 {
                    $( $value => f.write_str($phrase), )*
                    other => write!(f, "unassigned ({:#04x})", other),
                }
            }
        }

        impl From<u8> for $name {
            fn from(v: u8) -> Self {
                $name(v)
            }
        }

        impl From<$name> for u8 {
            fn from(v: $name) -> u8 {
                v.0
            }
        }
    };
}
