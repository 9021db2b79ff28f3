//! Exit codes: a public contract, documented in `--help` and in the README
//! ("Exit codes").

/// The run ended with status COMPLETE (natural EOS or a finished drain).
pub const COMPLETE: u8 = 0;
/// The run ended with status FAILED: pipeline error or drain timeout. Also used
/// when GStreamer itself cannot start.
pub const FAILED: u8 = 1;
/// Nothing ran: bad options, no pipeline, a pipeline that does not parse,
/// invalid cpuguard settings, or a report file that cannot be written.
pub const USAGE: u8 = 2;
/// The run was stopped by SIGINT (status FAILED, reason `interrupted`): 128 + 2,
/// as shells report a process killed by SIGINT.
pub const INTERRUPTED: u8 = 130;

/// The `--help` footer.
pub const HELP: &str = "\
Exit codes:
  0    COMPLETE: the pipeline ended with EOS (natural end, SIGTERM/SIGHUP drain, CPU-limit drain)
  1    FAILED: pipeline error, or a drain that did not complete within the drain timeout
  2    usage: bad options, no or invalid pipeline, invalid cpuguard settings (nothing ran)
  130  interrupted: SIGINT stopped the pipeline at once (status FAILED, reason interrupted)";
