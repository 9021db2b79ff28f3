//! The Kubernetes manifest in deploy/ is consistent: the grace period covers
//! the drain, the CPU request is wired through the Downward API, and
//! `cpuguard-run` run with the manifest's own args drains on SIGTERM (what
//! the kubelet sends) into a playable file and a COMPLETE result.

use nix::sys::signal::Signal;
use serde_yaml_ng::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::run::{BIN, HANG, Stream, assert_no_panic, spawn_command};
/// What cpuguard-run allows itself after giving a drain up (README, Drain timeout).
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The final webhook's one attempt when a hook spent the finish budget
/// (README, Timing budget).
const LAST_CHANCE: Duration = Duration::from_secs(2);

fn manifest() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/recorder.yaml"))
            .expect("deploy/recorder.yaml readable");
    serde_yaml_ng::from_str(&text).expect("deploy/recorder.yaml is valid YAML")
}

fn pod_spec(doc: &Value) -> &Value {
    &doc["spec"]["template"]["spec"]
}

fn container(doc: &Value) -> &Value {
    let containers = pod_spec(doc)["containers"]
        .as_sequence()
        .expect("containers");
    containers
        .iter()
        .find(|c| c["command"][0].as_str() == Some("cpuguard-run"))
        .expect("a container running cpuguard-run")
}

fn args(doc: &Value) -> Vec<String> {
    container(doc)["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect()
}

fn option<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{name}=")))
}

fn env<'a>(doc: &'a Value, name: &str) -> (usize, &'a Value) {
    container(doc)["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .enumerate()
        .find(|(_, e)| e["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no env {name}"))
}

/// A Kubernetes CPU quantity ("500m", "2", "0.5") in millicores.
fn millicores(quantity: &str) -> u64 {
    match quantity.strip_suffix('m') {
        Some(m) => m.parse().expect("millicores"),
        None => (quantity.parse::<f64>().expect("CPUs") * 1000.0).round() as u64,
    }
}

fn duration_option(args: &[String], name: &str) -> Duration {
    let text = option(args, name).unwrap_or_else(|| panic!("{name} set in args"));
    humantime::parse_duration(text).expect("a duration")
}

#[test]
fn grace_period_covers_drain_and_finish() {
    let doc = manifest();
    let args = args(&doc);
    let drain = duration_option(&args, "--drain-timeout");
    let finish = duration_option(&args, "--finish-timeout");
    let grace = pod_spec(&doc)["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    // drain timeout + finish timeout + margin <= terminationGracePeriodSeconds,
    // the margin covering what cpuguard-run may add to either budget.
    let margin = STOP_GRACE + LAST_CHANCE;
    let needed = drain + finish + margin;
    assert!(
        needed <= Duration::from_secs(grace),
        "terminationGracePeriodSeconds {grace} must cover drain timeout {drain:?} + \
         finish timeout {finish:?} + margin {margin:?}"
    );
    assert!(
        option(&args, "--on-end").is_some(),
        "the manifest shows an upload hook"
    );
    assert!(
        container(&doc)["lifecycle"]["preStop"].is_null(),
        "no preStop: SIGTERM itself drains"
    );
}

#[test]
fn cpu_request_reaches_cpuguard_through_the_downward_api() {
    let doc = manifest();
    let name = container(&doc)["name"].as_str().expect("container name");
    let (raw_at, raw) = env(&doc, "CPU_REQUEST_MILLICORES");
    let field = &raw["valueFrom"]["resourceFieldRef"];
    assert_eq!(field["resource"].as_str(), Some("requests.cpu"));
    assert_eq!(field["divisor"].as_str(), Some("1m"));
    assert_eq!(field["containerName"].as_str(), Some(name));
    let (cpuguard_at, cpuguard) = env(&doc, "CPUGUARD_CPU_REQUEST");
    assert_eq!(
        cpuguard["value"].as_str(),
        Some("$(CPU_REQUEST_MILLICORES)m")
    );
    // Kubernetes expands $(VAR) only from entries defined earlier.
    assert!(raw_at < cpuguard_at);
    let request = container(&doc)["resources"]["requests"]["cpu"]
        .as_str()
        .expect("a CPU request");
    assert!(millicores(request) > 0);
}

/// A stand-in for `aws s3 cp [--only-show-errors] SRC s3://BUCKET/KEY`:
/// copies SRC to `bucket_root/BUCKET/KEY`, so the hook's upload is checked
/// for real (the file arrives) without any network.
fn fake_aws(bin: &Path, bucket_root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let script = format!(
        "#!/bin/sh\nset -e\n[ \"$1 $2\" = \"s3 cp\" ] || exit 64\nshift 2\n\
         [ \"$1\" = --only-show-errors ] && shift\n\
         key=${{2#s3://}}\nmkdir -p \"{root}/$(dirname \"$key\")\"\ncp \"$1\" \"{root}/$key\"\n",
        root = bucket_root.display()
    );
    let path = bin.join("aws");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn volume_mount(doc: &Value, name: &str) -> String {
    container(doc)["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"].as_str() == Some(name))
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("a {name} mount"))
        .to_owned()
}

#[test]
fn cpuguard_run_with_the_manifest_args_drains_on_sigterm_and_uploads() {
    use std::os::unix::fs::PermissionsExt;
    let doc = manifest();
    let dir = tempfile::tempdir().unwrap();
    let recordings = dir.path().join("recordings");
    let secrets = dir.path().join("secrets");
    let bin = dir.path().join("bin");
    let bucket_root = dir.path().join("s3");
    for d in [&recordings, &secrets, &bin] {
        std::fs::create_dir(d).unwrap();
    }
    fake_aws(&bin, &bucket_root);
    // The mounts become temporary directories; nothing else changes.
    let recordings_mount = volume_mount(&doc, "recordings");
    let secret_mount = volume_mount(&doc, "webhook-secret");
    let secret_name = pod_spec(&doc)["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some("webhook-secret"))
        .and_then(|v| v["secret"]["items"][0]["path"].as_str())
        .expect("the secret's file name")
        .to_owned();
    let secret_file = secrets.join(&secret_name);
    std::fs::write(&secret_file, "k8s-secret\n").unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o400)).unwrap();
    let mut args: Vec<String> = args(&doc)
        .iter()
        .map(|a| {
            a.replace(&recordings_mount, &recordings.to_string_lossy())
                .replace(&secret_mount, &secrets.to_string_lossy())
        })
        .collect();
    // A busy test host could drain on load first; the SIGTERM is what is
    // tested here, so measure only (options go before the pipeline).
    args.insert(args.len() - 1, "--dry-run".to_owned());
    let request = container(&doc)["resources"]["requests"]["cpu"]
        .as_str()
        .unwrap();
    let (_, bucket) = env(&doc, "RECORDINGS_BUCKET");
    let bucket = bucket["value"].as_str().expect("a bucket name");
    let (url, hits) = common::receiver::listen("/recorder");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(BIN);
    cmd.args(&args)
        .env("CPUGUARD_CPU_REQUEST", format!("{}m", millicores(request)))
        .env("CPUGUARD_WEBHOOK", &url)
        .env("RECORDINGS_BUCKET", bucket)
        .env("HOSTNAME", "recorder-test")
        .env("PATH", path)
        // The samples, logged: the SIGTERM goes once the recording has run
        // for an interval, not after a guessed sleep.
        .env("GST_DEBUG", "cpuguard:5")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut run = spawn_command(cmd);
    run.wait_active();
    run.wait_line(Stream::Stderr, HANG, |l| {
        l.contains("cpuguard-run: sample: load")
    });
    run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
    let report = option(&args, "--report").expect("--report in args");
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).expect("report written"))
            .expect("JSON report");
    assert_eq!(result["status"], "COMPLETE", "{result}");
    assert_eq!(result["reason"], "stop-requested", "{result}");
    let rec = recordings.join("rec.mp4");
    let streams = common::mp4_streams(&rec).expect("a finalized MP4");
    assert_eq!(streams.len(), 2, "{streams:?}");
    // The hook uploaded the finalized file, byte for byte.
    assert_eq!(
        result["on_end"]["exit_code"], 0,
        "{result}\n{}",
        ended.stderr
    );
    let uploaded = bucket_root
        .join(bucket)
        .join("recorder-test")
        .join("rec.mp4");
    assert_eq!(
        std::fs::read(&uploaded).expect("uploaded"),
        std::fs::read(&rec).unwrap()
    );
    // The service heard every state, signed with the mounted secret.
    let mut states = Vec::new();
    while let Ok(hit) = hits.recv_timeout(Duration::ZERO) {
        assert!(hit.signed_with(b"k8s-secret"));
        states.push(hit.json()["state"].as_str().unwrap().to_owned());
    }
    assert_eq!(states, ["ACTIVE", "ENDING", "COMPLETE"]);
    assert_eq!(result["webhooks"]["delivered"], 3, "{result}");
}
