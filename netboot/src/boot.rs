//! What a machine boots: the kernel command line, the per-node iPXE script and the
//! Raspberry Pi `cmdline.txt`, all rendered from the inventory decision and the
//! profile's `netboot.json`.

use anyhow::Result;

use labimg_builder::artifact::Cmdline;

use crate::Shared;
use crate::images::NetbootInfo;
use crate::inventory::{Decision, Mac};

/// Everything needed to boot one machine.
#[derive(Debug, Clone)]
pub struct BootTarget {
    /// Host name (known nodes only).
    pub hostname: Option<String>,
    /// Profile to boot.
    pub profile: String,
    /// The profile's netboot description.
    pub info: NetbootInfo,
    /// Inventory kernel arguments, appended last.
    pub kernel_args: String,
    /// Identifier used in the config URL: the MAC, or the Pi serial when the node is
    /// known only by serial.
    pub config_id: Option<String>,
    /// The node's config token.
    pub token: Option<String>,
}

/// Resolves a decision to a boot target; `None` for ignored machines.
pub fn target(
    shared: &Shared,
    decision: &Decision,
    mac: Option<&Mac>,
) -> Result<Option<BootTarget>> {
    match decision {
        Decision::Ignore => Ok(None),
        Decision::DefaultBoot {
            profile,
            kernel_args,
        } => Ok(Some(BootTarget {
            hostname: None,
            profile: profile.clone(),
            info: shared.cfg.images.info(profile)?,
            kernel_args: kernel_args.clone(),
            config_id: None,
            token: None,
        })),
        Decision::Known(n) => {
            let config_id = mac
                .copied()
                .or(n.mac)
                .map(|m| m.to_string())
                .or_else(|| n.serial.clone());
            Ok(Some(BootTarget {
                hostname: Some(n.hostname.clone()),
                profile: n.profile.clone(),
                info: shared.cfg.images.info(&n.profile)?,
                kernel_args: n.kernel_args.clone(),
                config_id,
                token: Some(shared.tokens.token_for(&n.hostname, n.token.as_deref())?),
            }))
        }
    }
}

/// The node's full kernel command line: labimg parameters, then the profile's
/// cmdline, then the inventory's kernel args (an inventory `console=` replaces the
/// profile's: [`Cmdline::extend_with`]).
pub fn kernel_cmdline(shared: &Shared, t: &BootTarget) -> String {
    let base = shared.http_base();
    let mut args = Cmdline::new();
    args.set(
        "labimg.root.url",
        format!("{base}/images/{}/{}", t.profile, t.info.root),
    );
    args.set("labimg.root.sha256", &t.info.root_sha256);
    args.set("labimg.root.size", t.info.root_size);
    if let (Some(id), Some(token)) = (&t.config_id, &t.token) {
        args.set("labimg.config", format!("{base}/v1/nodes/{id}/config"));
        args.set("labimg.token", token);
    }
    args.set("labimg.events", format!("{base}/v1/events"));
    args.extend_with(&Cmdline::parse(&t.info.cmdline));
    args.extend_with(&Cmdline::parse(&t.kernel_args));
    args.to_string()
}

pub fn ipxe_script(shared: &Shared, mac: &Mac) -> Result<String> {
    let decision = shared.inventory().decide(Some(mac), None);
    let Some(t) = target(shared, &decision, Some(mac))? else {
        return Ok(format!(
            "#!ipxe\necho labimg: {mac} is not in the inventory, leaving it alone\nexit\n"
        ));
    };
    let base = shared.http_base();
    let who = t
        .hostname
        .clone()
        .unwrap_or_else(|| format!("unknown machine {mac}"));
    Ok(format!(
        "#!ipxe\necho labimg: booting {who} with profile {p}\nkernel {base}/images/{p}/{k} initrd={i} {cmd}\ninitrd {base}/images/{p}/{i}\nboot\n",
        p = t.profile,
        k = t.info.kernel,
        i = t.info.initrd,
        cmd = kernel_cmdline(shared, &t),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The profile's line, then the inventory's, as the boot script renders them.
    fn profile_then_node(profile: &str, node: &str) -> String {
        let mut line = Cmdline::parse(profile);
        line.extend_with(&Cmdline::parse(node));
        line.to_string()
    }

    #[test]
    fn inventory_console_replaces_the_profiles() {
        let profile = "console=ttyAMA10,115200 panic=10";
        assert_eq!(
            profile_then_node(profile, " console=ttyAMA0 labimg.debug=1 "),
            "panic=10 console=ttyAMA0 labimg.debug=1"
        );
        assert_eq!(
            profile_then_node(profile, "labimg.debug=1"),
            format!("{profile} labimg.debug=1")
        );
        assert_eq!(profile_then_node(profile, ""), profile);
        assert!(profile_then_node("", "").is_empty());
    }
}
