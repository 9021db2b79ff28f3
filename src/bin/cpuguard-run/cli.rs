//! The command line: options that override cpuguard's settings, then the
//! pipeline description. The settings' options, help texts, defaults, ranges
//! and checks come from the settings table (`gstcpuguard::settings`), which
//! the element's properties are also made from.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgAction, CommandFactory, FromArgMatches, Parser};
use gstcpuguard::load::LoadSourceKind;
use gstcpuguard::settings::{CliOption, Given, Kind, SETTINGS, Setting, Value, parse_millis};

const ABOUT: &str = "Run a GStreamer pipeline and turn signals into the right ending";

const LONG_ABOUT: &str = "\
Runs a GStreamer pipeline (described as for gst-launch-1.0) and turns signals into \
the right ending:

  SIGTERM, SIGHUP  drain: EOS through cpuguard's drain action (reason stop-requested), \
wait for the pipeline's EOS so every file is finalized, exit 0. A repeated SIGTERM \
does not cut the drain short.
  SIGUSR1          drain with reason cpu-limit (\"CPU limit reached\"), as cpuguard does on \
high load; for an outside controller that chose this run.
  SIGINT           stop at once: pipeline to NULL, no drain, exit 130.

A drain started by cpuguard itself (reason cpu-limit) ends the same way. A drain that \
has not finished within the drain timeout is abandoned (status FAILED, reason \
drain-timeout). The options override the settings of every cpuguard element in the \
pipeline. One JSON result is printed on stdout; progress goes to stderr.

Multi-pipeline mode (--pipeline DESC, repeated, and/or --jobs FILE): each pipeline \
runs in its own worker process (its own process group), its cpuguard elements \
judging the load for real (a worker adds one to a description without). The \
workers coordinate through --coordination-dir (default: a directory private to the \
run): when --soft-threshold holds for --hold samples, or at once at \
--hard-threshold, only the heaviest worker drains (reason cpu-limit), one drain at \
a time; the next only after a fresh hold once that drain has finished. A drain not \
done within --drain-timeout is escalated by the parent: the worker's process group \
is killed (FAILED, drain-timeout), whatever the load is by then. SIGTERM/SIGHUP \
drain every worker (stop-requested), SIGINT stops them all at once (exit 130); a \
crashing worker fails alone. One JSON line per worker (with its worker id and pid), \
then a summary line, go to stdout.";

const EXAMPLE: &str = "\
Example:
  cpuguard-run --soft-threshold 0.8 videotestsrc is-live=true ! x264enc ! h264parse \\
      ! cpuguard ! mp4mux ! filesink location=rec.mp4
  cpuguard-run --soft-threshold 0.8 --release 5 \\
      --pipeline 'videotestsrc is-live=true ! x264enc ! mp4mux ! filesink location=a.mp4' \\
      --pipeline 'videotestsrc is-live=true ! x264enc ! mp4mux ! filesink location=b.mp4'";

#[derive(Debug, Parser)]
#[command(
    name = "cpuguard-run",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    arg_required_else_help = true
)]
pub struct Cli {
    /// The cpuguard settings given, one option each, made from the settings
    /// table (see [`setting_arg`]).
    #[arg(skip)]
    pub settings: Given,

    /// Run DESC in its own worker process (repeat for more): multi-pipeline mode
    #[arg(long = "pipeline", value_name = "DESC", conflicts_with = "pipeline")]
    pub pipelines: Vec<String>,

    /// Run the pipelines in FILE, one description a line (blank lines and lines
    /// starting with # are skipped): multi-pipeline mode
    #[arg(long, value_name = "FILE", conflicts_with = "pipeline")]
    pub jobs: Option<PathBuf>,

    /// Multi-pipeline mode: start waiting jobs only while the load is below
    /// LOAD (0-1; LiveKit Egress uses 0.8), at most one per interval; without
    /// it every job starts at once
    #[arg(long, value_name = "LOAD", value_parser = utilization)]
    pub max_utilization: Option<f64>,

    /// Internal: run as worker ID of a multi-pipeline parent
    #[arg(long, value_name = "ID", hide = true, conflicts_with_all = ["pipelines", "jobs"])]
    pub worker: Option<u32>,

    /// Also write the JSON result to FILE (checked before the pipeline starts)
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics while running (port 0
    /// picks a free port; the address is printed on stderr)
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Write an SVG plot of the load over time, with the thresholds and the
    /// drain moments, to FILE when the run ends
    #[arg(long, value_name = "FILE")]
    pub timeline: Option<PathBuf>,

    /// POST a JSON event to URL at each state change (ACTIVE, ENDING, then
    /// COMPLETE or FAILED with the whole result); repeat for more URLs (the
    /// variable takes them comma-separated). A failed delivery never changes
    /// the status
    #[arg(
        long = "webhook",
        value_name = "URL",
        env = "CPUGUARD_WEBHOOK",
        value_delimiter = ','
    )]
    pub webhooks: Vec<String>,

    /// Sign each webhook body with HMAC-SHA256 under the secret in FILE
    /// (header X-Cpuguard-Signature: sha256=HEX); one trailing newline is
    /// ignored; the file must not be writable by group or others
    #[arg(long, value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,

    /// Run `sh -c CMD` once the pipeline has ended and its files are closed:
    /// the result as JSON on stdin, CPUGUARD_STATUS, CPUGUARD_REASON and
    /// CPUGUARD_FILES (newline-separated) in its environment; killed with its
    /// process group when the finish budget is spent or on SIGINT
    #[arg(long, value_name = "CMD")]
    pub on_end: Option<String>,

    /// The budget after the pipeline has ended for --on-end and the final
    /// webhook delivery [default: the rest of a 30 s window that starts at
    /// the drain request, at least 5 s]
    #[arg(long, value_name = "DURATION", value_parser = finish_timeout)]
    pub finish_timeout: Option<Duration>,

    /// Configure the pipeline's MP4/MOV muxers (also inside splitmuxsink) so
    /// that a kill at any moment leaves a playable file (the default)
    #[arg(long, overrides_with = "no_crash_safe")]
    pub crash_safe: bool,

    /// Leave every muxer as the pipeline describes it: a killed MP4 does not play
    #[arg(
        long,
        env = "CPUGUARD_NO_CRASH_SAFE",
        overrides_with = "crash_safe",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub no_crash_safe: bool,

    /// How much a killed file may lose at most (MP4 fragments are a quarter of it)
    #[arg(
        long,
        value_name = "DURATION",
        env = "CPUGUARD_CRASH_SAFE_INTERVAL",
        value_parser = crash_safe_interval,
        default_value = "1s"
    )]
    pub crash_safe_interval: u32,

    /// Accepted for gst-launch-1.0 compatibility: draining is always on
    #[arg(short = 'e', long = "eos-on-shutdown", hide = true)]
    pub eos_on_shutdown: bool,

    /// gst-launch-1.0's -m, accepted: see [`Cli::gst_launch_notes`]
    #[arg(short = 'm', long = "messages", hide = true)]
    pub messages: bool,

    /// gst-launch-1.0's -t, accepted
    #[arg(short = 't', long = "tags", hide = true)]
    pub tags: bool,

    /// gst-launch-1.0's -v, accepted
    #[arg(short = 'v', long = "verbose", hide = true)]
    pub verbose: bool,

    /// gst-launch-1.0's -q, accepted
    #[arg(short = 'q', long = "quiet", hide = true)]
    pub quiet: bool,

    /// The pipeline, as for gst-launch-1.0; its arguments are joined (options come first)
    #[arg(
        value_name = "PIPELINE",
        required_unless_present_any = ["pipelines", "jobs"],
        trailing_var_arg = true
    )]
    pub pipeline: Vec<String>,
}

impl Cli {
    /// The crash-safety bound in ms, `None` when crash safety is off.
    pub fn crash_safe(&self) -> Option<u32> {
        (!self.no_crash_safe).then_some(self.crash_safe_interval)
    }

    /// What gst-launch-1.0 habits given on the command line do here: they are
    /// accepted, and each says where cpuguard-run puts what it asked for.
    pub fn gst_launch_notes(&self) -> Vec<&'static str> {
        [
            (
                self.messages,
                "-m (gst-launch-1.0's messages): cpuguard-run reports the drain, the end \
                 reason and the states in its JSON result; every sample and decision is in \
                 GST_DEBUG=cpuguard:5",
            ),
            (
                self.tags,
                "-t (gst-launch-1.0's tags): the end reason is the result's `reason`; the \
                 cpuguard-end-reason tag is also pushed into the files",
            ),
            (
                self.verbose,
                "-v (gst-launch-1.0's property changes): not printed; GST_DEBUG shows them",
            ),
            (
                self.quiet,
                "-q: cpuguard-run prints only its progress on stderr and the result on stdout",
            ),
        ]
        .into_iter()
        .filter_map(|(given, note)| given.then_some(note))
        .collect()
    }

    /// True for multi-pipeline mode (`--pipeline` or `--jobs`).
    pub fn is_multi(&self) -> bool {
        !self.pipelines.is_empty() || self.jobs.is_some()
    }
}

/// Parses `args` (program name first). Help, version and usage errors come
/// back as `clap::Error`, which prints itself and knows its exit code.
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut command = command();
    let matches = command.try_get_matches_from_mut(args)?;
    let mut cli = Cli::from_arg_matches(&matches).map_err(|err| err.format(&mut command))?;
    for setting in SETTINGS.iter().filter(|s| s.option.is_some()) {
        let value = match setting.kind {
            Kind::Flag { .. } => matches.get_flag(setting.name).then_some(Value::Flag(true)),
            _ => matches.get_one::<Value>(setting.name).cloned(),
        };
        if let Some(value) = value {
            cli.settings
                .set(setting.name, value)
                .map_err(|err| command.error(clap::error::ErrorKind::InvalidValue, err))?;
        }
    }
    // An option after the pipeline would be read as part of it, and the
    // parser's complaint ("missing elements: report") says nothing useful.
    let options: Vec<String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_long().map(|l| format!("--{l}")))
        .collect();
    if let Some(late) = cli.pipeline.iter().find(|word| {
        let name = word.split('=').next().unwrap_or(word);
        options.iter().any(|o| o == name)
    }) {
        return Err(command.error(
            clap::error::ErrorKind::ArgumentConflict,
            format!(
                "the option {late} comes after the pipeline: options go first \
                 (cpuguard-run [OPTIONS] PIPELINE...)"
            ),
        ));
    }
    if cli.max_utilization.is_some() && !cli.is_multi() {
        return Err(command.error(
            clap::error::ErrorKind::MissingRequiredArgument,
            "--max-utilization applies to multi-pipeline mode: give --pipeline or --jobs",
        ));
    }
    Ok(cli)
}

/// The clap command: the options of this file, and one per setting of the
/// settings table, with its help, range, default and check.
pub fn command() -> clap::Command {
    Cli::command()
        .after_help(format!("{}\n\n{EXAMPLE}", crate::exit::HELP))
        .args(
            SETTINGS
                .iter()
                .filter_map(|s| s.option.map(|option| setting_arg(s, option))),
        )
}

/// `--NAME`, for a setting cpuguard-run sets on every element.
fn setting_arg(setting: &'static Setting, option: CliOption) -> Arg {
    let arg = Arg::new(setting.name).long(setting.name);
    let arg = match option.env {
        Some(env) => arg.env(env),
        None => arg,
    };
    let default = match (setting.kind, setting.default_value()) {
        (Kind::Cpus, _) => "none (the cgroup's, if any)".to_owned(),
        (_, Value::LoadSource(kind)) => kind.as_str().to_owned(),
        (_, value) => value.to_string(),
    };
    let mut help = option.help.to_owned();
    if let Kind::LoadSource = setting.kind {
        let names: Vec<&str> = LoadSourceKind::ALL.iter().map(|k| k.as_str()).collect();
        help.push_str(&format!(": {}", names.join(", ")));
    }
    if let Some(range) = setting.range_text() {
        help.push_str(&format!(" {range}"));
    }
    match setting.kind {
        Kind::Flag { .. } => arg.action(ArgAction::SetTrue).help(help),
        _ => arg
            .value_name(option.value_name)
            // "-1" must reach the check, which says what is wrong with it.
            .allow_hyphen_values(true)
            .value_parser(move |text: &str| setting.parse(text))
            .help(format!("{help} [element default: {default}]")),
    }
}

/// `--max-utilization`: a share of capacity, 0-1.
fn utilization(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| (0.0..=1.0).contains(v))
        .ok_or_else(|| format!("max-utilization must be between 0 and 1, got {text:?}"))
}

/// `--crash-safe-interval`: milliseconds or a duration, within the range the
/// crash-safety rules accept.
fn crash_safe_interval(text: &str) -> Result<u32, String> {
    use gstcpuguard::crashsafe::{MAX_INTERVAL_MS, MIN_INTERVAL_MS};
    parse_millis(
        "crash-safe-interval",
        text,
        MIN_INTERVAL_MS,
        MAX_INTERVAL_MS,
    )
}

/// A duration ("30s", "1m 30s"; a bare number is seconds), 0 to 1 hour.
fn finish_timeout(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text).map_err(|err| {
            format!("finish-timeout must be a duration such as 30s or 2m, got {text:?}: {err}")
        })?,
    };
    if duration > Duration::from_secs(3600) {
        return Err(format!("finish-timeout {text} is out of range: at most 1h"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Result<Cli, clap::Error> {
        parse(std::iter::once("cpuguard-run").chain(args.iter().copied()))
    }

    #[test]
    fn options_then_pipeline_with_anything_after_the_first_element() {
        let cli = parse_args(&[
            "--hold",
            "2",
            "--drain-timeout",
            "45s",
            "--interval",
            "250ms",
            "--load-source",
            "psi",
            "videotestsrc",
            "!",
            "fakesink",
            "-x",
        ])
        .unwrap();
        assert_eq!(cli.settings.uint("hold"), Some(2));
        assert_eq!(cli.settings.uint("drain-timeout"), Some(45_000));
        assert_eq!(cli.settings.uint("interval"), Some(250));
        assert_eq!(
            cli.settings.load_source(),
            gstcpuguard::load::LoadSourceKind::Psi
        );
        assert_eq!(cli.pipeline, ["videotestsrc", "!", "fakesink", "-x"]);
        assert_eq!(
            cli.settings.get("soft-threshold"),
            None,
            "not given: the element keeps its own"
        );
    }

    #[test]
    fn out_of_range_values_name_the_setting() {
        for (args, needle) in [
            (
                &["--soft-threshold", "1.5"][..],
                "soft-threshold must be between 0 and 1, got 1.5",
            ),
            (
                &["--hard-threshold", "NaN"],
                "hard-threshold must be between 0 and 1",
            ),
            (&["--hold", "0"], "hold must be between 1 and 100000, got 0"),
            (&["--interval", "5"], "interval must be between 10 ms"),
            (
                &["--drain-timeout", "soon"],
                "drain-timeout must be milliseconds",
            ),
            (&["--load-source", "gpu"], "gpu"),
        ] {
            let mut args = args.to_vec();
            args.extend(["fakesrc", "!", "fakesink"]);
            let err = parse_args(&args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert!(err.to_string().contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn cpu_request_takes_kubernetes_quantities_and_refuses_the_rest() {
        let cli = parse_args(&["--cpu-request", "500m", "fakesrc", "!", "fakesink"]).unwrap();
        assert_eq!(
            cli.settings
                .cpu_request()
                .map(gstcpuguard::load::CpuRequest::cpus),
            Some(0.5)
        );
        for bad in ["0", "-1", "-500m", "lots", "0m"] {
            let err = parse_args(&["--cpu-request", bad, "fakesrc", "!", "fakesink"]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
            assert!(
                err.to_string().contains("invalid CPU request"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn crash_safety_is_on_by_default_and_can_be_turned_off() {
        let on = parse_args(&["fakesrc", "!", "fakesink"]).unwrap();
        assert_eq!(on.crash_safe(), Some(1000));
        let off = parse_args(&["--no-crash-safe", "fakesrc", "!", "fakesink"]).unwrap();
        assert_eq!(off.crash_safe(), None);
        let last_wins = parse_args(&[
            "--no-crash-safe",
            "--crash-safe",
            "fakesrc",
            "!",
            "fakesink",
        ])
        .unwrap();
        assert_eq!(last_wins.crash_safe(), Some(1000));
        let short = parse_args(&["--crash-safe-interval", "500ms", "fakesrc"]).unwrap();
        assert_eq!(short.crash_safe(), Some(500));
        let err = parse_args(&["--crash-safe-interval", "10ms", "fakesrc"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string()
                .contains("crash-safe-interval must be between 200 ms"),
            "{err}"
        );
    }

    #[test]
    fn no_arguments_is_a_usage_error() {
        let err = parse_args(&[]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = parse_args(&["--hold", "2"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("PIPELINE"), "{err}");
    }
}
