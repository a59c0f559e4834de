//! Which server a command talks to, NATS-style: the URL as the first
//! argument (as before), or `-s/--server URL`, or `DRS_URL`, or the
//! selected context (`drs context add NAME URL --select`), in that order.
//! The URL is put in place before the arguments are parsed, so every
//! subcommand that takes one gets it the same way.

use std::{collections::BTreeMap, path::PathBuf};

use clap::CommandFactory;
use serde::{Deserialize, Serialize};

use crate::exit::Failure;

/// The environment variable naming the server.
pub(crate) const DRS_URL: &str = "DRS_URL";
/// The environment variable naming the contexts file (default:
/// `$XDG_CONFIG_HOME/drs/contexts.json`, or `~/.config/drs/contexts.json`).
pub(crate) const DRS_CONTEXTS: &str = "DRS_CONTEXTS";

/// Named servers, and the one selected.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Contexts {
    #[serde(default)]
    selected: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, String>,
}

impl Contexts {
    fn path() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os(DRS_CONTEXTS).filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(path));
        }
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(config.join("drs").join("contexts.json"))
    }

    /// The contexts on disk (none when there is no file yet).
    pub(crate) fn load() -> Result<Contexts, Failure> {
        let Some(path) = Self::path() else {
            return Ok(Contexts::default());
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                Failure::usage(format!(
                    "{} is not a drs contexts file ({e}): fix it, or remove it to start again",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Contexts::default()),
            Err(e) => Err(Failure::usage(format!("{}: {e}", path.display()))),
        }
    }

    fn save(&self) -> Result<(), Failure> {
        let path = Self::path()
            .ok_or_else(|| Failure::usage("no place for contexts: set DRS_CONTEXTS or HOME"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Failure::usage(format!("{}: {e}", dir.display())))?;
        }
        // Written beside it, then renamed over it: an interrupted save
        // leaves the old file whole.
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        let fresh = path.with_extension(format!("json.{}.tmp", std::process::id()));
        std::fs::write(&fresh, text + "\n")
            .and_then(|()| std::fs::rename(&fresh, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&fresh);
                Failure::usage(format!("{}: {e}", path.display()))
            })
    }

    /// The selected context's URL.
    fn selected_url(&self) -> Option<&str> {
        self.contexts
            .get(self.selected.as_deref()?)
            .map(String::as_str)
    }
}

/// `drs context …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ContextCommand {
    /// Name a server (and select it with --select)
    Add {
        /// The context's name
        name: String,
        /// The server: HOST:PORT or a drs URL
        url: String,
        /// Select it too
        #[arg(long)]
        select: bool,
    },
    /// Use this context when a command names no server
    Select {
        /// The context's name
        name: String,
    },
    /// Forget a context
    Rm {
        /// The context's name
        name: String,
    },
    /// List the contexts (the selected one marked *)
    Ls,
}

/// Runs `drs context …`, printing what it lists.
pub(crate) fn context(command: ContextCommand) -> Result<(), Failure> {
    let mut contexts = Contexts::load()?;
    match command {
        ContextCommand::Add { name, url, select } => {
            drs::Url::parse(&url).map_err(|e| Failure::usage(e.to_string()))?;
            contexts.contexts.insert(name.clone(), url);
            if select || contexts.selected.is_none() {
                contexts.selected = Some(name);
            }
            contexts.save()
        }
        ContextCommand::Select { name } => {
            if !contexts.contexts.contains_key(&name) {
                return Err(Failure::usage(format!(
                    "no context named `{name}` (drs context ls)"
                )));
            }
            contexts.selected = Some(name);
            contexts.save()
        }
        ContextCommand::Rm { name } => {
            if contexts.contexts.remove(&name).is_none() {
                return Err(Failure::usage(format!("no context named `{name}`")));
            }
            if contexts.selected.as_deref() == Some(name.as_str()) {
                contexts.selected = None;
            }
            contexts.save()
        }
        ContextCommand::Ls => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for (name, url) in &contexts.contexts {
                let mark = if contexts.selected.as_deref() == Some(name.as_str()) {
                    "*"
                } else {
                    " "
                };
                let _ = writeln!(out, "{mark} {name}\t{url}");
            }
            Ok(())
        }
    }
}

/// Whether `arg` names a server: a drs URL or HOST:PORT.
fn is_server(arg: &str) -> bool {
    drs::Url::parse(arg).is_ok()
}

/// `args` (the program's, program name first) with the server in place:
/// for a subcommand that takes a URL whose first positional argument is
/// not one, the server from `-s/--server`, `DRS_URL` or the selected
/// context is put first. `-s/--server` is taken out either way.
pub(crate) fn with_server(args: Vec<String>) -> Result<Vec<String>, Failure> {
    if args
        .iter()
        .skip(1)
        .any(|a| a == "-h" || a == "--help" || a == "-V" || a == "--version")
    {
        return Ok(args);
    }
    let command = crate::Cli::command();
    let Some(sub_at) = args
        .iter()
        .skip(1)
        .position(|a| !a.starts_with('-'))
        .map(|i| i + 1)
    else {
        return Ok(args);
    };
    let Some(sub) = command.find_subcommand(&args[sub_at]) else {
        return Ok(args);
    };
    if !sub.get_arguments().any(|a| a.get_id() == "url") {
        return Ok(args);
    }
    // Flags of this subcommand that take a value (their value is not a
    // positional argument).
    let mut valued = std::collections::HashSet::new();
    for arg in sub.get_arguments().filter(|a| !a.is_positional()) {
        if arg.get_action().takes_values() {
            if let Some(long) = arg.get_long() {
                valued.insert(format!("--{long}"));
            }
            if let Some(short) = arg.get_short() {
                valued.insert(format!("-{short}"));
            }
        }
    }
    let mut out: Vec<String> = args[..=sub_at].to_vec();
    let mut server = None;
    let mut first = None;
    let mut rest = args[sub_at + 1..].iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            first.get_or_insert(out.len() + 1);
            out.push(arg.clone());
            out.extend(rest.cloned());
            break;
        }
        if arg == "-s" || arg == "--server" {
            let url = rest
                .next()
                .ok_or_else(|| Failure::usage(format!("{arg} needs a URL")))?;
            server = Some(url.clone());
            continue;
        }
        if let Some(url) = arg.strip_prefix("--server=") {
            server = Some(url.to_string());
            continue;
        }
        if valued.contains(arg.as_str()) {
            out.push(arg.clone());
            if let Some(value) = rest.next() {
                out.push(value.clone());
            }
            continue;
        }
        if (!arg.starts_with('-') || arg == "-") && first.is_none() {
            first = Some(out.len());
        }
        out.push(arg.clone());
    }
    let given = first.is_some_and(|i| out.get(i).is_some_and(|a| is_server(a)));
    let server = match (server, given) {
        (Some(_), true) => {
            return Err(Failure::usage(
                "the server is given twice: as -s/--server and as the first argument",
            ))
        }
        (Some(url), false) => Some(url),
        (None, true) => None,
        (None, false) => {
            let configured = match std::env::var(DRS_URL).ok().filter(|u| !u.is_empty()) {
                Some(url) => Some(url),
                None => Contexts::load()?.selected_url().map(str::to_string),
            };
            if configured.is_none() {
                let what = first.and_then(|i| out.get(i)).map_or_else(
                    || "no server".to_string(),
                    |a| format!("`{a}` is not a server"),
                );
                return Err(Failure::usage(format!(
                    "{what}: give HOST:PORT or a drs URL first, or -s URL, or set DRS_URL, \
                     or select a context (drs context add NAME URL --select)"
                )));
            }
            configured
        }
    };
    if let Some(url) = server {
        out.insert(first.unwrap_or(out.len()), url);
    }
    Ok(out)
}
