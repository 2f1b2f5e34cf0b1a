//! The pipeline graph as the engine reads it: the SDK's wire types (one
//! definition for both ends, in `rbuild_sdk::wire`), and what the engine
//! makes of their parts. Pure data; evaluating it is the solver's job.

pub use rbuild_sdk::wire::{
    CompressionDef, ContainerDef, ContainerOp, DirectoryDef, DirectoryOp, DirectorySource, Expect,
    FileDef, ImageFormatDef, MediaTypesDef, ModuleArgDef, ModuleCallDef, PortForwardDef,
    ReturnedDef, SecretDef, ServiceDef, ServiceSource, Sharing,
};
use rbuild_snapshotter::export::{Compression, ImageFormat, MediaTypes};

/// How the snapshotter writes an image the pipeline described.
pub fn image_format(def: &ImageFormatDef) -> ImageFormat {
    ImageFormat {
        compression: match def.compression {
            CompressionDef::Gzip => Compression::Gzip,
            CompressionDef::Zstd => Compression::Zstd,
            CompressionDef::Uncompressed => Compression::Uncompressed,
        },
        media_types: match def.media_types {
            MediaTypesDef::Oci => MediaTypes::Oci,
            MediaTypesDef::Docker => MediaTypes::Docker,
        },
        real_timestamps: def.real_timestamps,
    }
}

/// Quotes argv for display the way a shell would accept it back.
pub fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_ops_are_rejected() {
        let r: Result<ContainerDef, _> =
            serde_json::from_value(serde_json::json!({"ops": [{"op": "teleport"}]}));
        assert!(r.is_err());
    }

    #[test]
    fn expectations() {
        assert!(Expect::Success.accepts(0) && !Expect::Success.accepts(1));
        assert!(Expect::Failure.accepts(2) && !Expect::Failure.accepts(0));
        assert!(Expect::Any.accepts(0) && Expect::Any.accepts(9));
    }

    #[test]
    fn shell_words_quotes_what_needs_it() {
        let args: Vec<String> = ["sh", "-c", "echo 'hi' $X", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(shell_words(&args), r#"sh -c 'echo '\''hi'\'' $X' ''"#);
    }
}
