//! The KSM controller and guard against a directory of plain files shaped like
//! `/sys/kernel/mm/ksm` (no root needed): settings saved before the first change and restored
//! by `off`, by dropping the controller, or by the guard when the owner ends without saying it
//! restored them; missing files are named.

use memout_server::ksm::guard::run_guard;
use memout_server::ksm::{ControllerConfig, KsmController, KsmMode, KsmSettings, KsmSysfs};
use std::path::PathBuf;

/// A fake KSM directory, removed when dropped.
struct Fake(PathBuf);

impl Fake {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("memout-fakeksm-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for (f, v) in [
            ("run", "0"),
            ("pages_to_scan", "100"),
            ("sleep_millisecs", "20"),
        ] {
            std::fs::write(d.join(f), v).unwrap();
        }
        Self(d)
    }

    fn config(&self) -> ControllerConfig {
        ControllerConfig {
            sysfs: KsmSysfs::at(&self.0),
            saved_path: self.0.join("saved"),
            ..ControllerConfig::system()
        }
    }

    fn settings(&self) -> KsmSettings {
        KsmSysfs::at(&self.0).settings().unwrap()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const FOUND: KsmSettings = KsmSettings {
    run: 0,
    pages_to_scan: 100,
    sleep_millisecs: 20,
};

#[test]
fn on_saves_and_off_or_drop_restores() {
    let f = Fake::new("onoff");
    let c = KsmController::new(f.config(), Box::new(|| 0));
    c.set_mode(KsmMode::Off).unwrap(); // nothing to restore yet
    c.set_mode(KsmMode::On).unwrap();
    assert_eq!(
        f.settings(),
        KsmSettings {
            run: 1,
            pages_to_scan: 1250,
            sleep_millisecs: 20
        }
    );
    assert_eq!(c.status().saved, Some(FOUND));
    assert!(f.0.join("saved").exists());
    // Someone changes a knob meanwhile: off still restores what was found first.
    std::fs::write(f.0.join("pages_to_scan"), "999").unwrap();
    c.set_mode(KsmMode::Off).unwrap();
    assert_eq!(f.settings(), FOUND);
    assert!(!f.0.join("saved").exists());
    assert_eq!(c.status().saved, None);
    c.set_mode(KsmMode::On).unwrap();
    drop(c);
    assert_eq!(f.settings(), FOUND);
}

#[test]
fn the_guard_restores_unless_released() {
    let f = Fake::new("guard");
    let k = KsmSysfs::at(&f.0);
    let saved = f.0.join("saved");
    memout_server::ksm::guard::save(&saved, &FOUND).unwrap();
    std::fs::write(f.0.join("run"), "1").unwrap();
    // The owner let go without a word (it died): restored.
    assert_eq!(run_guard(&b""[..], &k, &saved).unwrap(), Some(FOUND));
    assert_eq!(f.settings(), FOUND);
    // The owner restored them itself and said so: untouched.
    memout_server::ksm::guard::save(&saved, &FOUND).unwrap();
    std::fs::write(f.0.join("run"), "1").unwrap();
    assert_eq!(run_guard(&b"released\n"[..], &k, &saved).unwrap(), None);
    assert_eq!(k.settings().unwrap().run, 1);
}

#[test]
fn missing_ksm_is_named() {
    let c = KsmController::new(
        ControllerConfig {
            sysfs: KsmSysfs::at("/nonexistent/ksm"),
            saved_path: std::env::temp_dir().join("memout-ksm-never"),
            ..ControllerConfig::system()
        },
        Box::new(|| 0),
    );
    let e = c.set_mode(KsmMode::On).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/ksm"), "{e}");
    assert_eq!(c.status().mode, KsmMode::Off);
}
