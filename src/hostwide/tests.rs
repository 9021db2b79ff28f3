//! Fixture tests of the pure cross-process rules.

use super::*;

fn entry() -> Entry {
    Entry {
        pid: 4242,
        uid: 1000,
        cpu: 1.25,
        wants: true,
        interval_ms: 500,
        seq: 7,
        at_ms: 1_700_000_000_000,
    }
}

#[test]
fn entry_round_trips_at_a_fixed_size() {
    let e = entry();
    let bytes = e.encode();
    assert_eq!(bytes.len(), ENTRY_LEN);
    assert_eq!(Entry::parse(&bytes), Ok(e));
    // The fixture as it is on disk, so the format is a reviewed contract.
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        text.starts_with(
            "cpuguard-entry/1 pid=4242 uid=1000 cpu=1.250000 want=1 interval=500 seq=7 \
             at=1700000000000 sum="
        ),
        "{text}"
    );
}

#[test]
fn garbage_torn_and_edited_entries_are_malformed() {
    let good = entry().encode();
    let mut edited = good.clone();
    // cpu=1.25 -> cpu=9.25: the checksum no longer matches.
    let at = String::from_utf8_lossy(&edited).find("cpu=1").unwrap() + 4;
    edited[at] = b'9';
    let torn = &good[..60];
    for bad in [
        &b""[..],
        b"garbage\n",
        &[0xff, 0xfe, 0x00][..],
        torn,
        &edited,
        b"cpuguard-entry/1 pid=1 sum=00000000",
    ] {
        assert_eq!(
            Entry::parse(bad),
            Err(Rejection::Malformed),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn out_of_range_values_are_malformed_even_with_a_good_checksum() {
    for (cpu, pid, interval) in [
        (f64::NAN, 1, 500),
        (-1.0, 1, 500),
        (1.0, 0, 500),
        (1.0, -5, 500),
        (1.0, 1, 0),
    ] {
        let body = format!(
            "cpuguard-entry/1 pid={pid} uid=0 cpu={cpu} want=1 interval={interval} seq=1 at=1"
        );
        let text = format!("{body} sum={:08x}\n", checksum(&body));
        assert_eq!(
            Entry::parse(text.as_bytes()),
            Err(Rejection::Malformed),
            "{text}"
        );
    }
}

#[test]
fn oversized_entries_are_refused_unparsed() {
    let mut big = entry().encode();
    big.resize(MAX_ENTRY_LEN + 1, b' ');
    assert_eq!(Entry::parse(&big), Err(Rejection::Oversized));
}

#[test]
fn check_refuses_other_users_wrong_names_and_outdated_entries() {
    let e = entry();
    let now = e.at_ms + 100;
    assert_eq!(e.check(4242, 1000, 1000, now), Ok(()));
    assert_eq!(e.check(4243, 1000, 1000, now), Err(Rejection::Malformed));
    // Owned by another user, or claiming to be one.
    assert_eq!(e.check(4242, 0, 1000, now), Err(Rejection::OtherUser));
    assert_eq!(e.check(4242, 1000, 0, now), Err(Rejection::OtherUser));
    let late = e.at_ms + freshness_ms(e.interval_ms) + 1;
    assert_eq!(e.check(4242, 1000, 1000, late), Err(Rejection::Outdated));
    // A clock that went backwards does not make an entry outdated.
    assert_eq!(e.check(4242, 1000, 1000, e.at_ms - 5000), Ok(()));
}

#[test]
fn entry_names() {
    assert_eq!(entry_name(17), "17.entry");
    assert_eq!(pid_of_entry_name("17.entry"), Some(17));
    for bad in [
        "0.entry",
        ".entry",
        "-3.entry",
        "17.entry.tmp",
        "x17.entry",
        "99999999999.entry",
        "drain-0.lock",
    ] {
        assert_eq!(pid_of_entry_name(bad), None, "{bad}");
    }
}

#[test]
fn drain_record_round_trips_and_refuses_garbage() {
    let r = DrainRecord {
        epoch: 3,
        pid: 99,
        active: true,
    };
    let bytes = r.encode();
    assert_eq!(bytes.len(), DRAIN_LEN);
    assert_eq!(DrainRecord::parse(&bytes), Some(r));
    assert_eq!(DrainRecord::parse(b""), None);
    assert_eq!(
        DrainRecord::parse(b"cpuguard-drain/1 epoch=x pid=1 active=1"),
        None
    );
    assert_eq!(
        DrainRecord::parse(b"cpuguard-drain/1 epoch=1 pid=1 active=2"),
        None
    );
}

#[test]
fn budget_identity() {
    let id = BudgetId::host("6F1B2C3D-0000-4a5b-9c8d-0123456789ab\n").unwrap();
    assert_eq!(id.dir_name(), "host-6f1b2c3d-0000-4a5b-9c8d-0123456789ab");
    assert_eq!(id.scope(), Scope::Host);
    for bad in [
        "",
        "../../etc",
        "6f1b2c3d-0000-4a5b-9c8d-0123456789a",
        "6f1b2c3d/0000-4a5b-9c8d-0123456789ab",
        "6f1b2c3d-0000-4a5b-9c8d-0123456789az",
    ] {
        assert_eq!(BudgetId::host(bad), None, "{bad}");
    }
    let cg = BudgetId::Cgroup { dev: 35, ino: 4711 };
    assert_eq!(cg.dir_name(), "cgroup-35-4711");
    assert_eq!(cg.scope(), Scope::Cgroup);
    // Same cgroup seen through two namespaces = same device and inode = same budget.
    assert_eq!(cg, BudgetId::Cgroup { dev: 35, ino: 4711 });
    assert_ne!(cg, BudgetId::Root { dev: 35, ino: 4711 });
}

#[test]
fn resolving_the_directory() {
    assert_eq!(
        resolve_dir("auto", 0, Some("/run/user/0"), None).unwrap(),
        Some(PathBuf::from("/run/cpuguard"))
    );
    assert_eq!(
        resolve_dir("auto", 1000, Some("/run/user/1000"), None).unwrap(),
        Some(PathBuf::from("/run/user/1000/cpuguard"))
    );
    assert_eq!(
        resolve_dir("AUTO", 1000, Some("relative"), None).unwrap(),
        Some(PathBuf::from("/tmp/cpuguard-1000"))
    );
    assert_eq!(
        resolve_dir("auto", 1000, None, None).unwrap(),
        Some(PathBuf::from("/tmp/cpuguard-1000"))
    );
    assert_eq!(resolve_dir("none", 0, None, None).unwrap(), None);
    assert_eq!(resolve_dir("", 0, None, None).unwrap(), None);
    assert_eq!(
        resolve_dir("/srv/x", 0, None, None).unwrap(),
        Some(PathBuf::from("/srv/x"))
    );
    let err = resolve_dir("srv/x", 0, None, None).unwrap_err();
    assert!(err.to_string().contains("coordination-dir"), "{err}");
    // The environment speaks for `auto` only; an explicit setting wins.
    assert_eq!(resolve_dir("auto", 0, None, Some("none")).unwrap(), None);
    assert_eq!(
        resolve_dir("auto", 0, None, Some("/srv/c")).unwrap(),
        Some(PathBuf::from("/srv/c"))
    );
    assert_eq!(
        resolve_dir("/srv/x", 0, None, Some("none")).unwrap(),
        Some(PathBuf::from("/srv/x"))
    );
    let err = resolve_dir("auto", 0, None, Some("rel")).unwrap_err();
    assert!(
        err.to_string().contains("CPUGUARD_COORDINATION_DIR"),
        "{err}"
    );
}

fn peer(pid: i32, cpu: f64, wants: bool) -> Peer {
    Peer { pid, cpu, wants }
}

#[test]
fn heaviest_wanting_process_goes_first() {
    let me = peer(10, 0.2, true);
    let heavy = peer(20, 1.5, true);
    assert_eq!(
        choose(&me, &[heavy, peer(30, 0.1, true)], false),
        Choice::Yield { to: heavy }
    );
    assert_eq!(
        choose(&heavy, &[me, peer(30, 0.1, true)], false),
        Choice::Go
    );
    // Alone: go.
    assert_eq!(choose(&me, &[], true), Choice::Go);
}

#[test]
fn a_heavier_process_not_yet_wanting_is_waited_for_one_interval() {
    let me = peer(10, 0.2, true);
    let heavy_calm = peer(20, 1.5, false);
    assert_eq!(
        choose(&me, &[heavy_calm], true),
        Choice::Yield { to: heavy_calm }
    );
    assert_eq!(choose(&me, &[heavy_calm], false), Choice::Go);
    // A lighter one that does not want never holds anyone up.
    assert_eq!(choose(&me, &[peer(30, 0.1, false)], true), Choice::Go);
}

#[test]
fn ties_go_to_the_lowest_pid_and_nan_counts_as_nothing() {
    let a = peer(10, 0.5, true);
    let b = peer(20, 0.5, true);
    assert_eq!(choose(&a, &[b], false), Choice::Go);
    assert_eq!(choose(&b, &[a], false), Choice::Yield { to: a });
    let broken = peer(5, f64::NAN, true);
    assert_eq!(choose(&b, &[broken], false), Choice::Go);
    // Our own pid among the others (our entry as read back) is not a rival.
    assert_eq!(choose(&b, &[peer(20, 9.0, true)], true), Choice::Go);
}

#[test]
fn three_processes_drain_heaviest_first_in_every_process_view() {
    // Each process evaluates the same directory: exactly one says Go.
    let all = [peer(1, 0.3, true), peer(2, 2.0, true), peer(3, 0.9, true)];
    let go: Vec<i32> = all
        .iter()
        .filter(|me| choose(me, &all, true) == Choice::Go)
        .map(|me| me.pid)
        .collect();
    assert_eq!(go, vec![2]);
}
