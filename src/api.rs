//! The API version a pipeline declares it was written for, and which
//! versions this rbuild serves.
//!
//! A pipeline declares it in its manifest, a crate's `Cargo.toml` or a
//! single-file pipeline's ```` ```cargo ```` block, the same table in both:
//!
//! ```toml
//! [package.metadata.rbuild]
//! api = "0.1"
//! ```
//!
//! The engine serves every behaviour a version gates from the declaring
//! pipeline's version ([`CURRENT`] is what `rbuild init`'s starter declares). A
//! pipeline without a declaration was written before declarations existed
//! and gets the first version's behaviour. A version newer than this
//! rbuild, or older than the oldest it still serves, is refused before
//! anything runs.
//!
//! The behaviour each version changed is in the README's table of API
//! versions; a change of behaviour is a new minor version (while rbuild is
//! 0.x), announced by raising [`CURRENT`].

use std::fmt;

use anyhow::{Result, anyhow, bail};

/// An API version: rbuild's `major.minor` when it was introduced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Api {
    pub major: u32,
    pub minor: u32,
}

/// The newest API version this rbuild serves (its own `major.minor`).
pub const CURRENT: Api = Api { major: 0, minor: 3 };

/// The oldest API version this rbuild still serves.
pub const OLDEST: Api = Api { major: 0, minor: 1 };

/// What a pipeline that declares nothing gets: the first version's
/// behaviour (it was written before declarations existed).
pub const UNDECLARED: Api = Api { major: 0, minor: 1 };

/// API 0.2: `with_entrypoint` resets the default args (Docker's and
/// Dagger's rule); before, they were kept.
pub const ENTRYPOINT_RESETS_DEFAULT_ARGS: Api = Api { major: 0, minor: 2 };

/// API 0.2: every `with_exec` runs in a network namespace of its own
/// (outbound traffic through NAT, the host's resolvers); before, a step
/// without service bindings ran on the host's network.
pub const STEP_OWN_NETWORK: Api = Api { major: 0, minor: 2 };

/// API 0.2: functions and their arguments are named in kebab-case
/// (`build-image --source-dir` for `build_image` and `source_dir`), by
/// `rbuild functions`, `rbuild call` and module calls alike, as Dagger
/// names them; before, as declared.
pub const KEBAB_CASE_NAMES: Api = Api { major: 0, minor: 2 };

/// API 0.3: a secret from `env:`, `file:` or `cmd:` drops one trailing
/// newline, whatever its source; before, only `cmd:` did.
pub const SECRETS_DROP_ONE_NEWLINE: Api = Api { major: 0, minor: 3 };

/// API 0.3: a `with_registry_auth` credential that covers nothing a
/// `publish` pushes to is an error naming both; before, it was ignored
/// (with a warning) and other credentials were looked for.
pub const UNMATCHED_REGISTRY_AUTH_FAILS: Api = Api { major: 0, minor: 3 };

/// Every behaviour change a version gates, with the version that made it:
/// the README's table lists each of these (a test checks it).
pub const CHANGES: &[(Api, &str)] = &[
    (
        ENTRYPOINT_RESETS_DEFAULT_ARGS,
        "`with_entrypoint` resets the default args",
    ),
    (
        STEP_OWN_NETWORK,
        "every `with_exec` gets a network namespace of its own",
    ),
    (
        KEBAB_CASE_NAMES,
        "functions and arguments are named in kebab-case",
    ),
    (
        SECRETS_DROP_ONE_NEWLINE,
        "`env:`, `file:` and `cmd:` secrets all drop one trailing newline",
    ),
    (
        UNMATCHED_REGISTRY_AUTH_FAILS,
        "a registry credential that matches nothing pushed is an error",
    ),
];

impl Api {
    /// Parses `"0.1"` (a third part, as in `"0.1.0"`, must be 0: versions
    /// are `major.minor`).
    pub fn parse(text: &str) -> Option<Api> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        match parts.next() {
            None => {}
            Some("0") if parts.next().is_none() => {}
            Some(_) => return None,
        }
        Some(Api { major, minor })
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// How a pipeline stands: the version it declared, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Declared {
    Version(Api),
    Nothing,
}

impl Declared {
    /// The version whose behaviour the pipeline gets.
    pub fn api(self) -> Api {
        match self {
            Declared::Version(v) => v,
            Declared::Nothing => UNDECLARED,
        }
    }
}

/// Reads `[package.metadata.rbuild] api` from a manifest (`where_` names
/// it in errors) and checks this rbuild serves it.
pub fn declared(manifest: &toml::Table, where_: &str) -> Result<Declared> {
    let Some(rbuild) = manifest
        .get("package")
        .and_then(|p| p.get("metadata"))
        .and_then(|m| m.get("rbuild"))
    else {
        return Ok(Declared::Nothing);
    };
    let Some(api) = rbuild.get("api") else {
        bail!(
            "{where_}: [package.metadata.rbuild] has no api; declare the rbuild API version the pipeline was written for, e.g. api = \"{CURRENT}\""
        );
    };
    let text = api.as_str().ok_or_else(|| {
        anyhow!("{where_}: [package.metadata.rbuild] api must be a string such as \"{CURRENT}\", not {api}")
    })?;
    let v = Api::parse(text).ok_or_else(|| {
        anyhow!("{where_}: [package.metadata.rbuild] api = {text:?} is not a version such as \"{CURRENT}\" (major.minor)")
    })?;
    serves(v).map_err(|e| anyhow!("{where_}: {e}"))?;
    Ok(Declared::Version(v))
}

/// Whether this rbuild serves `v`; the error names both versions and what
/// to change.
pub fn serves(v: Api) -> Result<()> {
    let this = env!("CARGO_PKG_VERSION");
    if v > CURRENT {
        bail!(
            "the pipeline declares rbuild API {v}, newer than this rbuild {this} serves (API {OLDEST} to {CURRENT}); upgrade rbuild to {v} or later"
        );
    }
    if v < OLDEST {
        bail!(
            "the pipeline declares rbuild API {v}, older than the oldest this rbuild {this} still serves (API {OLDEST}); update the pipeline to API {OLDEST} or later (the README's API versions table lists what changed), or run it with an older rbuild"
        );
    }
    Ok(())
}

/// The `rbuild-sdk` requirement a manifest pins (a version string, or a
/// table's `version`), unless it takes the SDK from a path or git.
pub fn sdk_requirement(manifest: &toml::Table) -> Option<String> {
    match manifest.get("dependencies")?.get("rbuild-sdk")? {
        toml::Value::String(req) => Some(req.clone()),
        toml::Value::Table(t) if !t.contains_key("path") && !t.contains_key("git") => {
            t.get("version")?.as_str().map(String::from)
        }
        _ => None,
    }
}

/// Checks that the embedded SDK (`sdk_version`) satisfies a pipeline's pin
/// of `rbuild-sdk` (rbuild builds every pipeline with its own SDK).
pub fn check_sdk_pin(req: &str, sdk_version: &str, where_: &str) -> Result<()> {
    let parsed = semver::VersionReq::parse(req).map_err(|e| {
        anyhow!("{where_}: rbuild-sdk = {req:?} is not a version requirement ({e})")
    })?;
    let sdk = semver::Version::parse(sdk_version).expect("the SDK's own version parses");
    if !parsed.matches(&sdk) {
        bail!(
            "{where_}: the pipeline pins rbuild-sdk {req:?}, but this rbuild {} builds pipelines with rbuild-sdk {sdk_version}; change the pin to one that {sdk_version} meets (e.g. \"{}.{}\"), or use an rbuild whose SDK meets it",
            env!("CARGO_PKG_VERSION"),
            sdk.major,
            sdk.minor
        );
    }
    Ok(())
}

/// The once-per-pipeline hint for a pipeline that declares nothing.
pub fn undeclared_hint(pipeline: &str, single_file: bool) -> String {
    let place = if single_file {
        "its ```cargo block (//! lines at the top of the file)"
    } else {
        "its Cargo.toml"
    };
    let mut hint = format!(
        "rbuild: pipeline {pipeline} declares no API version, so it gets API {UNDECLARED}'s behaviour; to keep what it does across rbuild upgrades, add to {place}:\n  [package.metadata.rbuild]\n  api = \"{UNDECLARED}\""
    );
    let newer: Vec<String> = CHANGES
        .iter()
        .filter(|(v, _)| *v > UNDECLARED)
        .map(|(v, what)| format!("\n  {v}: {}", what.replace('`', "")))
        .collect();
    if !newer.is_empty() {
        hint.push_str(&format!(
            "\nor declare a newer one for what changed since (the README's API versions table):{}",
            newer.concat()
        ));
    }
    hint
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn versions_parse_as_major_minor() {
        assert_eq!(Api::parse("0.1"), Some(Api { major: 0, minor: 1 }));
        assert_eq!(Api::parse("0.1.0"), Some(Api { major: 0, minor: 1 }));
        assert_eq!(
            Api::parse(" 1.12 "),
            Some(Api {
                major: 1,
                minor: 12
            })
        );
        for bad in ["", "0", "0.1.2", "x.1", "0.1.0.0", "v0.1"] {
            assert_eq!(Api::parse(bad), None, "{bad:?}");
        }
        assert!(Api::parse("0.2").unwrap() > Api::parse("0.1").unwrap());
        assert!(Api::parse("1.0").unwrap() > Api::parse("0.9").unwrap());
    }

    #[test]
    fn a_declaration_is_read_and_checked() {
        let here = format!("[package.metadata.rbuild]\napi = \"{CURRENT}\"\n");
        assert_eq!(
            declared(&table(&here), "p").unwrap(),
            Declared::Version(CURRENT)
        );
        assert_eq!(
            declared(&table("[package]\nname = \"x\"\n"), "p").unwrap(),
            Declared::Nothing
        );
        assert_eq!(Declared::Nothing.api(), UNDECLARED);

        let too_new = declared(&table("[package.metadata.rbuild]\napi = \"9.0\"\n"), "p.rs")
            .unwrap_err()
            .to_string();
        assert!(
            too_new.starts_with("p.rs: the pipeline declares rbuild API 9.0, newer"),
            "{too_new}"
        );
        assert!(
            too_new.contains(&format!("API {OLDEST} to {CURRENT}")),
            "{too_new}"
        );
        assert!(too_new.contains("upgrade rbuild to 9.0"), "{too_new}");

        for (text, want) in [
            ("[package.metadata.rbuild]\napi = 1\n", "must be a string"),
            (
                "[package.metadata.rbuild]\napi = \"latest\"\n",
                "is not a version",
            ),
            ("[package.metadata.rbuild]\nother = 1\n", "has no api"),
        ] {
            let e = declared(&table(text), "p.rs").unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn the_current_api_is_this_rbuilds_major_minor() {
        assert_eq!(Api::parse(env!("CARGO_PKG_VERSION")), Some(CURRENT));
    }

    #[test]
    fn the_undeclared_hint_keeps_the_old_behaviour_and_names_what_is_newer() {
        let hint = undeclared_hint("ci/pipeline.rs", true);
        assert!(hint.contains("api = \"0.1\""), "{hint}");
        for (v, what) in CHANGES {
            assert!(
                hint.contains(&format!("{v}: {}", what.replace('`', ""))),
                "{hint}"
            );
        }
    }

    #[test]
    fn the_readme_lists_every_gated_change_with_its_version() {
        let readme = include_str!("../README.md");
        for (v, what) in CHANGES {
            assert!(v <= &CURRENT, "{what}: gated by {v}, newer than CURRENT");
            let row = readme
                .lines()
                .find(|l| l.contains(what))
                .unwrap_or_else(|| panic!("README's API table has no row for {what:?}"));
            assert!(
                row.trim_start().starts_with(&format!("| {v} ")),
                "README row for {what:?} names another version: {row}"
            );
        }
        assert!(
            readme.contains(&format!("api = \"{CURRENT}\"")),
            "the README's declaration example is not the current API {CURRENT}"
        );
    }

    #[test]
    fn an_api_older_than_the_floor_is_refused_naming_it() {
        let e = serves(Api { major: 0, minor: 0 }).unwrap_err().to_string();
        assert!(e.contains("older than the oldest"), "{e}");
        assert!(e.contains(&format!("(API {OLDEST})")), "{e}");
    }

    #[test]
    fn an_sdk_pin_the_embedded_sdk_cannot_meet_is_an_error() {
        assert!(check_sdk_pin("0.1", "0.1.0", "p").is_ok());
        assert!(check_sdk_pin("^0.1.0", "0.1.0", "p").is_ok());
        assert!(check_sdk_pin("*", "0.1.0", "p").is_ok());
        let e = check_sdk_pin("0.3", "0.1.0", "p.rs")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pins rbuild-sdk \"0.3\""), "{e}");
        assert!(e.contains("with rbuild-sdk 0.1.0"), "{e}");
        let e = check_sdk_pin("not a version", "0.1.0", "p.rs")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a version requirement"), "{e}");

        let m = table("[dependencies]\nrbuild-sdk = \"0.3\"\n");
        assert_eq!(sdk_requirement(&m).as_deref(), Some("0.3"));
        let m = table("[dependencies]\nrbuild-sdk = { version = \"0.2\", features = [] }\n");
        assert_eq!(sdk_requirement(&m).as_deref(), Some("0.2"));
        let m = table("[dependencies]\nrbuild-sdk = { path = \"../sdk\" }\n");
        assert_eq!(sdk_requirement(&m), None);
    }
}
