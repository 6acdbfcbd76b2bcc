//! The control socket's KSM requests: switch the server's controller and report KSM's
//! figures (system counters, the controller, each guest), and a guest's mergeable setting.

use crate::ksm::{KsmController, KsmMode, KsmSettings, pages};
use crate::registry::{Registry, Served};
use memout_protocol::control::{self as wire, ErrorKind, GuestKsm, KsmKnobs, KsmReport, Response};

fn knobs(s: KsmSettings) -> KsmKnobs {
    KsmKnobs {
        run: s.run,
        pages_to_scan: s.pages_to_scan,
        sleep_millisecs: s.sleep_millisecs,
    }
}

/// `Request::Ksm`: switches the controller if asked, then reports.
pub(super) fn request(
    registry: &Registry,
    ctl: Option<&KsmController>,
    set: Option<wire::KsmMode>,
) -> Result<Response, Response> {
    let Some(ctl) = ctl else {
        return Err(Response::error(
            ErrorKind::NotSupported,
            "this control socket has no KSM controller",
        ));
    };
    if let Some(mode) = set {
        let mode = match mode {
            wire::KsmMode::Off => KsmMode::Off,
            wire::KsmMode::On => KsmMode::On,
            wire::KsmMode::Auto => KsmMode::Auto,
        };
        ctl.set_mode(mode)
            .map_err(|e| Response::error(ErrorKind::Failed, e.to_string()))?;
    }
    Ok(Response::Ksm(Box::new(report(registry, ctl))))
}

/// What KSM and the controller look like now.
pub(crate) fn report(registry: &Registry, ctl: &KsmController) -> KsmReport {
    let st = ctl.status();
    let mode = match st.mode {
        KsmMode::Off => wire::KsmMode::Off,
        KsmMode::On => wire::KsmMode::On,
        KsmMode::Auto => wire::KsmMode::Auto,
    };
    let mut r = KsmReport {
        mode,
        unavailable: None,
        knobs: KsmKnobs {
            run: 0,
            pages_to_scan: 0,
            sleep_millisecs: 0,
        },
        saved: st.saved.map(knobs),
        pages_shared: 0,
        pages_sharing: 0,
        pages_unshared: 0,
        pages_volatile: 0,
        full_scans: 0,
        general_profit: None,
        process_merging_pages: pages::process_ksm().ok().and_then(|p| p.merging_pages),
        last_error: st.error,
        guests: registry
            .served()
            .iter()
            .map(|g| match g {
                Served::Memout(g) => GuestKsm {
                    name: g.name().to_string(),
                    mergeable: g.mergeable(),
                    merged_pages: g.ksm_pages().ok(),
                },
                Served::External(g) => GuestKsm {
                    name: g.name().to_string(),
                    mergeable: false,
                    merged_pages: None,
                },
            })
            .collect(),
    };
    match ctl
        .sysfs()
        .settings()
        .and_then(|s| Ok((s, ctl.sysfs().counters()?)))
    {
        Ok((s, c)) => {
            r.knobs = knobs(s);
            r.pages_shared = c.pages_shared;
            r.pages_sharing = c.pages_sharing;
            r.pages_unshared = c.pages_unshared;
            r.pages_volatile = c.pages_volatile;
            r.full_scans = c.full_scans;
            r.general_profit = c.general_profit;
        }
        Err(e) => r.unavailable = Some(e.to_string()),
    }
    r
}

/// `Request::SetMergeable`.
pub(super) fn set_mergeable(g: &Served, on: bool) -> Result<Response, Response> {
    match g {
        Served::Memout(g) => g
            .set_mergeable(on)
            .map(|()| Response::Done)
            .map_err(|e| Response::error(ErrorKind::Failed, e.to_string())),
        Served::External(g) => Err(Response::error(
            ErrorKind::NotSupported,
            format!(
                "guest {:?} runs in an external VMM whose RAM is a shared file mapping: KSM \
                 cannot merge shared memory",
                g.name()
            ),
        )),
    }
}
