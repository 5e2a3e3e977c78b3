use super::*;

fn temp_path(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("plex-region-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn created_0600_and_shared_between_mappings() {
    let p = temp_path("share");
    let a = Region::create_or_attach(&p, "c1", 42, 7).unwrap();
    let b = Region::create_or_attach(&p, "c1", 42, 9).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    a.members()[3].pid.store(1234, Ordering::Release);
    assert_eq!(b.members()[3].pid.load(Ordering::Acquire), 1234);
    assert_eq!(b.header().created_ns.load(Ordering::Relaxed), 7, "the second stack attached, not re-created");
    assert_eq!(b.cluster_name(), "c1");
    let ro = Region::attach(&p, false).unwrap();
    assert!(!ro.writable());
    assert_eq!(ro.members()[3].pid.load(Ordering::Acquire), 1234);
    drop((a, b, ro));
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn racing_creators_end_on_one_region() {
    let p = temp_path("race");
    #[allow(clippy::disallowed_methods)]
    let hs: Vec<_> = (0..4u64)
        .map(|i| {
            let p = p.clone();
            std::thread::spawn(move || {
                let r = Region::create_or_attach(&p, "c", 1, i).unwrap();
                r.header().join_seq.fetch_add(1, Ordering::AcqRel);
                r.header().created_ns.load(Ordering::Relaxed)
            })
        })
        .collect();
    let created: Vec<u64> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(created.iter().all(|c| *c == created[0]), "{created:?}");
    let r = Region::attach(&p, false).unwrap();
    assert_eq!(r.header().join_seq.load(Ordering::Relaxed), 4);
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn refuses_missing_truncated_foreign_other_version_and_other_config() {
    let p = temp_path("bad");
    assert_eq!(Region::attach(&p, false).unwrap_err(), RegionError::NotFound(p.clone()));

    std::fs::write(&p, vec![0u8; 100]).unwrap();
    assert!(matches!(Region::attach(&p, false).unwrap_err(), RegionError::Truncated { len: 100, .. }));

    std::fs::write(&p, vec![0x55u8; 8192]).unwrap();
    assert_eq!(Region::attach(&p, false).unwrap_err(), RegionError::Foreign(p.clone()));
    std::fs::remove_file(&p).unwrap();

    let r = Region::create_or_attach(&p, "c", 5, 0).unwrap();
    let err = Region::create_or_attach(&p, "c", 6, 0).unwrap_err();
    assert!(matches!(err, RegionError::ConfigMismatch { region: 5, ours: 6, .. }));
    assert!(err.to_string().contains("another cluster config"), "{err}");
    r.header().major.store(MAJOR + 1, Ordering::Relaxed);
    let err = Region::attach(&p, false).unwrap_err();
    assert!(matches!(err, RegionError::Version { .. }));
    assert!(err.to_string().contains(&format!("version {}.{MINOR}", MAJOR + 1)), "{err}");
    r.header().major.store(MAJOR, Ordering::Relaxed);

    // A section pointing past the end of the file is a truncation, not a crash.
    r.header().sections[1].offset.store(1 << 40, Ordering::Relaxed);
    assert!(matches!(Region::attach(&p, false).unwrap_err(), RegionError::Truncated { .. }));
    r.header().sections[1].offset.store(0, Ordering::Relaxed);
    assert!(matches!(Region::attach(&p, false).unwrap_err(), RegionError::BadSection { .. }));
    drop(r);

    // A file cut short after creation.
    std::fs::remove_file(&p).unwrap();
    drop(Region::create_or_attach(&p, "c", 5, 0).unwrap());
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(64 * 1024).unwrap();
    assert!(matches!(Region::attach(&p, false).unwrap_err(), RegionError::Truncated { .. }));
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn anonymous_region_has_every_section() {
    let r = Region::anonymous("t", 0);
    assert_eq!(r.members().len(), MAX_STACKS);
    assert_eq!(r.dvipas().len(), MAX_DVIPAS);
    assert_eq!(r.range_dvipas().len(), MAX_RANGE_DVIPAS);
    assert!(r.ring(MAX_STACKS - 1, MAX_STACKS - 1).is_some());
    assert!(r.ring(MAX_STACKS, 0).is_none());
}

/// Truncating the file under a live mapping used to kill the process with SIGBUS on the next
/// access: now the access reads zeros and `health` reports the fault.
#[test]
fn truncated_under_a_live_mapping_reads_zeros_and_is_reported() {
    let p = temp_path("trunc-live");
    let r = Region::create_or_attach(&p, "c", 5, 0).unwrap();
    assert_eq!(r.health(), Ok(()));
    r.members()[15].pid.store(77, Ordering::Release);
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(0).unwrap();
    assert!(matches!(r.health(), Err(RegionFault::Truncated { len: 0, .. })), "{:?}", r.health());
    // Past the end of the file: without the guard this is SIGBUS.
    assert_eq!(r.members()[15].pid.load(Ordering::Acquire), 0);
    r.members()[15].pid.store(78, Ordering::Release);
    assert_eq!(r.health(), Err(RegionFault::Faulted));
    drop(r);
    // The next stack replaces the stale file.
    let (r, why) = Region::create_or_attach_logged(&p, "c", 5, 1).unwrap();
    assert!(matches!(why, Some(RegionError::Truncated { len: 0, .. })), "{why:?}");
    assert_eq!(r.health(), Ok(()));
    assert_eq!(r.header().created_ns.load(Ordering::Relaxed), 1);
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn zeroed_overwritten_removed_and_replaced_regions_are_reported() {
    use std::io::{Seek, SeekFrom, Write};
    let p = temp_path("faults");
    let r = Region::create_or_attach(&p, "c", 5, 0).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all(&[0u8; 8]).unwrap();
    assert_eq!(r.health(), Err(RegionFault::BadMagic(0)));
    r.header().magic.store(MAGIC, Ordering::Release);
    assert_eq!(r.health(), Ok(()));
    r.header().config_hash.store(6, Ordering::Relaxed);
    assert_eq!(r.health(), Err(RegionFault::BadHeader("config hash")));
    r.header().config_hash.store(5, Ordering::Relaxed);
    f.seek(SeekFrom::Start(88)).unwrap();
    f.write_all(&[0xa5; 24]).unwrap();
    assert_eq!(r.health(), Err(RegionFault::BadHeader("section table")));
    // A stale (foreign) file is replaced by the next starter; the old mapping sees it.
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&[0xa5; 8]).unwrap();
    let (r2, why) = Region::create_or_attach_logged(&p, "c", 5, 3).unwrap();
    assert!(matches!(why, Some(RegionError::Foreign(_))), "{why:?}");
    assert_eq!(r.health(), Err(RegionFault::Replaced));
    assert_eq!(r2.health(), Ok(()));
    std::fs::remove_file(&p).unwrap();
    assert_eq!(r2.health(), Err(RegionFault::Removed));
    let _ = std::fs::remove_file(p.with_extension("lock"));
}

/// A region owned by another uid, or open to others, is refused with its owner named.
#[test]
fn refuses_a_region_of_another_owner_or_mode() {
    use std::os::unix::fs::PermissionsExt;
    let p = temp_path("owner");
    drop(Region::create_or_attach(&p, "c", 5, 0).unwrap());
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Region::create_or_attach(&p, "c", 5, 0).unwrap_err();
    assert!(matches!(e, RegionError::Mode { mode: 0o644, .. }), "{e}");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        let e = Region::create_or_attach(&p, "c", 5, 0).unwrap_err();
        assert!(matches!(e, RegionError::Owner { owner: 65534, ours: 0, .. }), "{e}");
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    }
    std::fs::remove_file(&p).unwrap();
}
