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
    assert!(err.to_string().contains(&format!("version {}.0", MAJOR + 1)), "{err}");
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
