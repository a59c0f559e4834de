//! `drs`, the drs command line: talk to any drs service from a shell
//! (`call`, `fire`, `stream`, `listen`, `publish`, `ping`), run a server
//! from a TOML file (`serve`), measure one (`bench`).
//!
//! Exit codes: 0 a response, 1 `drs.error`, 2 `drs.exception`, 3 a
//! timeout, 4 a connection failure, 64 a usage error, 130 interrupted.

mod bench;
mod body;
mod commands;
mod exit;
mod serve;
mod server;

use std::{process::ExitCode, time::Duration};

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::exit::Failure;

const EXAMPLES: &str = "\
Examples:
  drs call tcp://127.0.0.1:12000 add '{\"a\": 1, \"b\": 2}'
  echo '\"hi\"' | drs call ws://127.0.0.1:12001/socket echo
  drs call tcp://127.0.0.1:12000 echo @body.json --raw
  drs stream tcp://127.0.0.1:12000 count '{\"n\": 5, \"ms\": 100}'
  drs listen tcp://127.0.0.1:12000 --topic 'sensors.>'
  drs publish tcp://127.0.0.1:12000 sensors.t1 21.5
  drs reply tcp://127.0.0.1:12000 upper --command 'tr a-z A-Z'
  drs serve --demo --listen tcp://127.0.0.1:12000 --listen ws://127.0.0.1:12001
  drs bench tcp://127.0.0.1:12000 --calls 100000 --concurrency 64

URLs: tcp://HOST:PORT (or just HOST:PORT), ws://HOST:PORT/PATH, wss://…,
tls://HOST:PORT (?ca=FILE), ipc:///PATH, nats://HOST:PORT/SERVICE,
redis://HOST:PORT/DB/SERVICE; ?protocol=msgpack for MessagePack.

The server: the first argument, or -s/--server URL, or DRS_URL, or the
selected context (drs context add local 127.0.0.1:12000 --select), so
that `drs call add '{\"a\": 1, \"b\": 2}'` needs no URL.

A BODY is JSON: an argument, @FILE, or - for stdin (with no BODY, stdin
is read when it is not a terminal).

Exit codes: 0 response, 1 drs.error, 2 drs.exception, 3 timeout,
4 connection failure, 64 usage error, 130 interrupted.";

/// Talk to drs services from a shell, run one, measure one.
#[derive(Debug, Parser)]
#[command(name = "drs", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What every subcommand that talks to a server takes.
#[derive(Debug, Clone, Args)]
struct Conn {
    /// The server: HOST:PORT or tcp://HOST:PORT, ws://HOST:PORT/PATH, ipc:///PATH, … (?protocol=msgpack);
    /// or -s/--server URL, DRS_URL, the selected context
    url: String,
    /// Seconds to wait for the connection and for each reply (fractions allowed)
    #[arg(long, short = 't', value_name = "SECONDS", default_value = "5", value_parser = seconds)]
    timeout: Duration,
    /// Authenticate with this token (drs.auth) before anything else
    #[arg(long, env = "DRS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Identify as NAME (drs.identify) before anything else
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Print JSON on one line, even to a terminal
    #[arg(long)]
    raw: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Call ACTION and print the reply's body
    #[command(after_help = "\
Examples:
  drs call tcp://127.0.0.1:12000 add '{\"a\": 1, \"b\": 2}'     # prints 3
  drs call tcp://127.0.0.1:12000 echo @request.json
  jq .order order.json | drs call tcp://127.0.0.1:12000 orders.place
  drs call tcp://127.0.0.1:12000 sleep '{\"ms\": 2000}' --timeout 0.5   # exit 3
  drs call tcp://127.0.0.1:12000 report.send @report.json --delay 60   # runs in a minute

Prints only the reply's body on stdout (pretty on a terminal, one line
with --raw or into a pipe). drs.error exits 1, drs.exception 2, a
timeout 3, a connection failure 4; their message goes to stderr.")]
    Call {
        #[command(flatten)]
        conn: Conn,
        /// The action
        action: String,
        /// The body: JSON, @FILE, or - for stdin
        body: Option<String>,
        /// Have the server run it this many seconds from now (its reply comes then)
        #[arg(long, value_name = "SECONDS", value_parser = seconds)]
        delay: Option<Duration>,
    },
    /// Send ACTION without waiting for a reply (a fire)
    #[command(after_help = "\
Examples:
  drs fire tcp://127.0.0.1:12000 shout '\"hello everyone\"'
  drs fire ws://127.0.0.1:12001/socket audit.log @event.json

Exits 0 once the command is written to the server; nothing confirms it
ran (use call for that).")]
    Fire {
        #[command(flatten)]
        conn: Conn,
        /// The action
        action: String,
        /// The body: JSON, @FILE, or - for stdin
        body: Option<String>,
        /// Have the server run it this many seconds from now
        #[arg(long, value_name = "SECONDS", value_parser = seconds)]
        delay: Option<Duration>,
    },
    /// Call ACTION for a streamed reply: one JSON value per line as items arrive
    #[command(after_help = "\
Examples:
  drs stream tcp://127.0.0.1:12000 count '{\"n\": 5, \"ms\": 100}'
  drs stream tcp://127.0.0.1:12000 logs.tail '{\"service\": \"api\"}' --window 1

Prints each item on a line of its own as it arrives, then the handler's
final value if it returned one: on a terminal as a last line; into a pipe
as a line {\"final\": VALUE}, so that it is not read as one more item
(--final chooses: line, json, stderr or none). --timeout bounds the wait
for each item. Ctrl-C cancels the call (drs.cancel stops the handler) and
exits 130.")]
    Stream {
        #[command(flatten)]
        conn: Conn,
        /// The action
        action: String,
        /// The body: JSON, @FILE, or - for stdin
        body: Option<String>,
        /// Items the server may send ahead of the ones printed (credit)
        #[arg(long, default_value = "64", value_parser = clap::value_parser!(u32).range(1..))]
        window: u32,
        /// Where the final value goes [default: line on a terminal, json into a pipe]
        #[arg(long = "final", value_enum, value_name = "WHERE")]
        final_value: Option<commands::Final>,
    },
    /// Print what the server sends: broadcasts and topic deliveries, one JSON command per line
    #[command(after_help = "\
Examples:
  drs listen tcp://127.0.0.1:12000                        # broadcasts
  drs listen tcp://127.0.0.1:12000 --topic 'sensors.>' --topic alerts
  drs listen tcp://127.0.0.1:12000 --name audit --topic 'orders.>' --retroactive
  drs listen tcp://127.0.0.1:12000 --topic jobs --count 1   # wait for one

Each line is {\"action\": …, \"body\": …} (with \"key\" when the server
asked for a reply; drs listen answers null). With --name and
--retroactive the server keeps what is published while you are away and
delivers it when you come back. Runs until Ctrl-C, --count commands, or
the connection ends (exit 4).")]
    Listen {
        #[command(flatten)]
        conn: Conn,
        /// Subscribe to this topic pattern (`*` one segment, `>` the rest); repeatable
        #[arg(long, value_name = "PATTERN")]
        topic: Vec<String>,
        /// Subscribe retroactively (needs --name)
        #[arg(long, requires = "name")]
        retroactive: bool,
        /// Exit 0 after this many commands
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Serve ACTION from the shell: each call's body on a command's stdin, its stdout the reply
    #[command(after_help = "\
Examples:
  drs reply tcp://127.0.0.1:12000 upper --command 'tr a-z A-Z'
  drs reply tcp://127.0.0.1:12000 sum --command 'jq \"add\"'
  drs reply tcp://127.0.0.1:12000 ping.me --echo --count 1

Each call of ACTION runs COMMAND with `sh -c` (calls run side by side),
its body as one line of JSON on stdin; COMMAND's stdout is the reply: as
JSON when it is JSON, otherwise as a string (one trailing newline
dropped). A COMMAND that exits non-zero answers drs.error with its
stderr. --echo answers each call with its own body.

The action is exposed (drs.expose), so on a server with a broker every
client's calls of ACTION come here; on one without, the server itself
(its handlers, Server::call_named with --name) can still call it. Runs
until Ctrl-C, --count calls, or the connection ends (exit 4).")]
    Reply {
        #[command(flatten)]
        conn: Conn,
        /// The action to serve
        action: String,
        /// The shell command that answers each call
        #[arg(
            long,
            value_name = "COMMAND",
            required_unless_present = "echo",
            conflicts_with = "echo"
        )]
        command: Option<String>,
        /// Answer each call with its own body
        #[arg(long)]
        echo: bool,
        /// Exit 0 after answering this many calls of ACTION
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Publish BODY on TOPIC and print how many subscribers it reached
    #[command(after_help = "\
Examples:
  drs publish tcp://127.0.0.1:12000 sensors.t1 21.5
  drs publish tcp://127.0.0.1:12000 orders.new @order.json --no-confirm

Prints the number of subscribers the message reached or was stored for
(once a durable broker has written it); --no-confirm publishes as a fire
and prints nothing.")]
    Publish {
        #[command(flatten)]
        conn: Conn,
        /// The topic (dot-separated, no wildcards)
        topic: String,
        /// The body: JSON, @FILE, or - for stdin
        body: Option<String>,
        /// Publish without waiting for the broker's count
        #[arg(long)]
        no_confirm: bool,
    },
    /// Measure the round trip of drs.ping
    #[command(after_help = "\
Examples:
  drs ping tcp://127.0.0.1:12000
  drs ping ws://127.0.0.1:12001/socket --count 5 --interval 0.2

Prints one line per ping with its round-trip time; the server answers
drs.ping even before authentication.")]
    Ping {
        #[command(flatten)]
        conn: Conn,
        /// How many pings
        #[arg(long, short = 'c', default_value = "1", value_parser = clap::value_parser!(u64).range(1..))]
        count: u64,
        /// Seconds between pings
        #[arg(long, default_value = "1", value_parser = seconds)]
        interval: Duration,
    },
    /// Run a drs server from a TOML file, or the demo actions with --demo
    #[command(after_help = serve::HELP)]
    Serve(serve::ServeArgs),
    /// Calls per second and latency percentiles of one action on any drs server
    #[command(after_help = "\
Examples:
  drs bench tcp://127.0.0.1:12000
  drs bench tcp://127.0.0.1:12000 add '{\"a\": 1, \"b\": 2}' --connections 4 --concurrency 32
  drs bench ws://127.0.0.1:12001/socket --duration 10 --raw

Calls ACTION (default echo) from CONNECTIONS connections with
CONCURRENCY calls in flight on each, for --calls calls or --duration
seconds, with a progress bar on a terminal; then a table (one JSON line
with --raw) of calls/s, errors and latency percentiles. Exits 1 if any
call failed.")]
    Bench(bench::BenchArgs),
    /// Name servers and pick the one commands use when they name none
    #[command(after_help = "\
Examples:
  drs context add local 127.0.0.1:12000 --select
  drs context add prod wss://drs.example:443/socket
  drs context select prod
  drs context ls
  drs call add '{\"a\": 1, \"b\": 2}'      # on the selected context's server

Contexts live in $DRS_CONTEXTS, or $XDG_CONFIG_HOME/drs/contexts.json
(~/.config/drs/contexts.json). -s/--server and DRS_URL come first.")]
    Context {
        #[command(subcommand)]
        command: server::ContextCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(after_help = "\
Examples:
  drs completions bash > ~/.local/share/bash-completion/completions/drs
  drs completions zsh > ~/.zfunc/_drs
  drs completions fish > ~/.config/fish/completions/drs.fish")]
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

/// A duration in seconds, fractions allowed.
fn seconds(v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{v}` is not a number of seconds"))
}

fn main() -> ExitCode {
    let args = match server::with_server(std::env::args().collect()) {
        Ok(args) => args,
        Err(failure) => {
            eprintln!("drs: {}", failure.message);
            return ExitCode::from(failure.code);
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(exit::USAGE),
            };
        }
    };
    if let Command::Context { command } = cli.command {
        return match server::context(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(failure) => {
                eprintln!("drs: {}", failure.message);
                ExitCode::from(failure.code)
            }
        };
    }
    if let Command::Completions { shell } = cli.command {
        let mut command = Cli::command();
        clap_complete::generate(shell, &mut command, "drs", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drs: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.message.is_empty() {
                eprintln!("drs: {}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Call {
            conn,
            action,
            body,
            delay,
        } => commands::call(&conn, &action, body, delay).await,
        Command::Fire {
            conn,
            action,
            body,
            delay,
        } => commands::fire(&conn, &action, body, delay).await,
        Command::Stream {
            conn,
            action,
            body,
            window,
            final_value,
        } => {
            use std::io::IsTerminal;
            let final_value = final_value.unwrap_or(if std::io::stdout().is_terminal() {
                commands::Final::Line
            } else {
                commands::Final::Json
            });
            commands::stream(&conn, &action, body, window, final_value).await
        }
        Command::Listen {
            conn,
            topic,
            retroactive,
            count,
        } => commands::listen(&conn, &topic, retroactive, count).await,
        Command::Publish {
            conn,
            topic,
            body,
            no_confirm,
        } => commands::publish(&conn, &topic, body, !no_confirm).await,
        Command::Reply {
            conn,
            action,
            command,
            echo: _,
            count,
        } => commands::reply(&conn, &action, command, count).await,
        Command::Ping {
            conn,
            count,
            interval,
        } => commands::ping(&conn, count, interval).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Completions { .. } | Command::Context { .. } => Ok(()),
    }
}
