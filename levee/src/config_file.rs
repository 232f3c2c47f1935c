//! Reading a node's configuration: defaults, then the TOML file, then `LEVEE_<FIELD>`
//! environment variables (the command line's flags come after, in `cli.rs`).
//!
//! Errors are boxed: figment's carries the source and path of the value at fault.

use std::path::Path;

use figment::Figment;
use figment::providers::{Data, Env, Format, Serialized, Toml};
use levee_relay::NodeConfig;

/// Defaults, then `file` if given, then `LEVEE_<FIELD>` environment variables. Not
/// validated: flags may still change it. A file that does not exist is an error (figment
/// alone would quietly use the defaults).
pub fn layered(file: Option<&Path>) -> Result<NodeConfig, Box<figment::Error>> {
    if let Some(path) = file
        && !path.exists()
    {
        let missing = format!("config file {} does not exist", path.display());
        return Err(Box::new(missing.into()));
    }
    extract(file.map(Toml::file), true)
}

/// Defaults, then `text` read as the file would be, without the environment: how tests
/// and the fuzzer drive the file format.
pub fn from_toml(text: &str) -> Result<NodeConfig, Box<figment::Error>> {
    extract(Some(Toml::string(text)), false)
}

fn extract(file: Option<Data<Toml>>, environment: bool) -> Result<NodeConfig, Box<figment::Error>> {
    let mut figment = Figment::from(Serialized::defaults(NodeConfig::default()));
    if let Some(file) = file {
        figment = figment.merge(file);
    }
    if environment {
        // Only variables named after config fields: LEVEE_IDENTITY and friends belong to
        // the client commands and must not trip `deny_unknown_fields`.
        // JSON, not TOML: TOML has no null, so the fields unset by default (cluster_key,
        // admin_token, advertise_address, ...) would be missing from the list and their
        // variables silently ignored.
        let fields: Vec<String> = match serde_json::to_value(NodeConfig::default()) {
            Ok(serde_json::Value::Object(o)) => o.keys().cloned().collect(),
            _ => Vec::new(),
        };
        figment = figment
            .merge(Env::prefixed("LEVEE_").filter(move |k| fields.iter().any(|f| k == f.as_str())));
    }
    figment.extract().map_err(Box::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_overrides_defaults_and_unknown_fields_are_refused() {
        let config = from_toml("shards = 64\nregion = \"eu\"\n").expect("parses");
        assert_eq!(config.shards, 64);
        assert_eq!(config.region, "eu");
        assert_eq!(config.listen, NodeConfig::default().listen);
        let refused = from_toml("shard = 64\n").expect_err("a misspelt field");
        assert!(refused.to_string().contains("shard"), "{refused}");
    }

    #[test]
    fn a_missing_file_is_an_error_not_the_defaults() {
        let missing = Path::new("/nonexistent/levee.toml");
        assert!(layered(Some(missing)).is_err());
    }
}
