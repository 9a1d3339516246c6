//! What the chat client starts with: [`ChatArgs`] (the command line and the environment) over a
//! [`ChatFile`] (`--config FILE`, a small TOML file), resolved into [`Settings`].
//!
//! ```toml
//! # chat.toml: every key optional
//! addr = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]  # or "127.0.0.1:7878"
//! username = "alice"
//! json = false                 # speak the JSON protocol instead of the binary one
//! # password = "..."           # only if you choose to keep it here (chmod 600 the file)
//! ```
//!
//! The order: a flag wins, then the environment (`SYNCKIT_USER`, `SYNCKIT_PASSWORD`), then the
//! file, then the default (`127.0.0.1:7878`). The client never writes the file, and never puts
//! a password in it: one is there only if the user put it there. With both a username and a
//! password known, the client logs in at start; otherwise it asks.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use crate::client::AddrList;
use crate::protocol::Protocol;

/// `synckit-node chat ...`
#[derive(Args, Debug, Default)]
pub struct ChatArgs {
    /// The node's chat address, or a cluster's members' chat addresses separated by commas
    /// (default 127.0.0.1:7878, or the configuration file's `addr`).
    #[arg(long)]
    pub addr: Option<AddrList>,
    /// A TOML file with `addr` (a list or one string), `username`, `json`, and (only if you put
    /// it there) `password`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Speak the JSON protocol instead of the binary one.
    #[arg(long)]
    pub json: bool,
    /// The username to log in with (the login screen asks otherwise).
    #[arg(long, env = "SYNCKIT_USER")]
    pub user: Option<String>,
    /// The password: only from the environment (never a flag, which `ps` would show).
    #[arg(skip)]
    pub password: Option<String>,
}

/// The configuration file.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChatFile {
    /// The members' chat addresses.
    pub addr: Option<Addrs>,
    /// The username.
    pub username: Option<String>,
    /// The password, if the user chose to keep it here.
    pub password: Option<String>,
    /// Speak JSON.
    pub json: Option<bool>,
}

/// `addr` in the file: a list of addresses, or one string (commas allowed, as `--addr`).
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Addrs {
    /// `["host:port", ...]`.
    List(Vec<String>),
    /// `"host:port,host:port"`.
    One(String),
}

impl ChatFile {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<ChatFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        ChatFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a file's text.
    pub fn parse(text: &str) -> Result<ChatFile, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// What the client runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The members' chat addresses.
    pub members: Vec<String>,
    /// The protocol.
    pub protocol: Protocol,
    /// The username, if known.
    pub username: Option<String>,
    /// The password, if known.
    pub password: Option<String>,
}

impl Settings {
    /// `args` over `file` over the defaults.
    pub fn resolve(args: &ChatArgs, file: ChatFile) -> Result<Settings, String> {
        let members = match (&args.addr, file.addr) {
            (Some(addrs), _) => addrs.to_strings(),
            (None, Some(Addrs::List(list))) => list.join(",").parse::<AddrList>()?.to_strings(),
            (None, Some(Addrs::One(list))) => list.parse::<AddrList>()?.to_strings(),
            (None, None) => vec!["127.0.0.1:7878".to_string()],
        };
        let json = args.json || file.json.unwrap_or(false);
        Ok(Settings {
            members,
            protocol: if json {
                Protocol::Json
            } else {
                Protocol::Binary
            },
            username: args.user.clone().or(file.username),
            password: args.password.clone().or(file.password),
        })
    }

    /// The settings for `args`: the file read if one is named, the password from
    /// `SYNCKIT_PASSWORD`.
    pub fn load(args: &ChatArgs) -> Result<Settings, String> {
        let file = match &args.config {
            Some(path) => ChatFile::read(path)?,
            None => ChatFile::default(),
        };
        let args = ChatArgs {
            password: std::env::var("SYNCKIT_PASSWORD").ok(),
            addr: args.addr.clone(),
            config: None,
            json: args.json,
            user: args.user.clone(),
        };
        Settings::resolve(&args, file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let file = ChatFile::parse(
            "addr = [\"127.0.0.1:7001\", \"127.0.0.1:7002\"]\nusername = \"alice\"\n",
        )
        .unwrap();
        let settings = Settings::resolve(&ChatArgs::default(), file).unwrap();
        assert_eq!(settings.members, ["127.0.0.1:7001", "127.0.0.1:7002"]);
        assert_eq!(settings.username.as_deref(), Some("alice"));
        assert_eq!(settings.password, None);
        assert_eq!(settings.protocol, Protocol::Binary);

        let args = ChatArgs {
            addr: Some("127.0.0.1:9000".parse().unwrap()),
            user: Some("bob".into()),
            password: Some("from the environment".into()),
            json: true,
            ..ChatArgs::default()
        };
        let file = ChatFile::parse("addr = \"127.0.0.1:1,127.0.0.1:2\"\npassword = \"x\"").unwrap();
        let settings = Settings::resolve(&args, file).unwrap();
        assert_eq!(settings.members, ["127.0.0.1:9000"]);
        assert_eq!(settings.username.as_deref(), Some("bob"));
        assert_eq!(settings.password.as_deref(), Some("from the environment"));
        assert_eq!(settings.protocol, Protocol::Json);

        let defaults = Settings::resolve(&ChatArgs::default(), ChatFile::default()).unwrap();
        assert_eq!(defaults.members, ["127.0.0.1:7878"]);
    }

    #[test]
    fn bad_files_are_refused_saying_why() {
        assert!(
            ChatFile::parse("adr = \"127.0.0.1:1\"").is_err(),
            "unknown key"
        );
        let file = ChatFile::parse("addr = \"nowhere\"").unwrap();
        let error = Settings::resolve(&ChatArgs::default(), file).unwrap_err();
        assert!(error.contains("not an address"), "{error}");
    }
}
