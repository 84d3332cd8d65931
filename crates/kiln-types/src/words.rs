//! `word_enum!`: fieldless enums whose values are words in JSON, SQL and on the command line.

/// A fieldless enum whose values are words in JSON, SQL and on the command line: one list
/// of variants gives `ALL`, `as_str`, `parse`, `Display`, the serde names and the OpenAPI
/// schema's values, so the spellings cannot drift apart. The words are taken as `tt`, not
/// `literal`: a `literal` fragment reaches derive macros wrapped in an invisible group,
/// which serde reads and utoipa does not (its schema would name the Rust variants).
macro_rules! word_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$variant_meta:meta])* $variant:ident = $text:tt,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        pub enum $name {
            $($(#[$variant_meta])* #[serde(rename = $text)] $variant,)*
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            pub fn parse(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|value| value.as_str() == text)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
